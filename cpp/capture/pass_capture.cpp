#include "attnvar/capture/pass_capture.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <limits>

#include "attnvar/error.h"

namespace attnvar {

at::Tensor assemble_dense(const std::vector<PassCapture>& passes, int64_t num_slots,
                          CaptureField field) {
  if (passes.empty() || passes.front().layers.empty()) {
    throw Error("assemble_dense: the run has no capture (capture was off)");
  }
  auto pick = [&](const LayerCapture& c) -> const at::Tensor& {
    return field == CaptureField::kProbabilities ? c.probabilities : c.scores;
  };
  const auto& first = pick(passes.front().layers.front());
  if (!first.defined()) {
    throw Error(field == CaptureField::kScores ? "assemble_dense: scores were not captured"
                                               : "assemble_dense: probabilities were not captured");
  }
  const int64_t L = static_cast<int64_t>(passes.front().layers.size()), H = first.size(0);
  const float fill = field == CaptureField::kScores ? -std::numeric_limits<float>::infinity() : 0.f;
  auto dense = at::full({L, H, num_slots, num_slots}, fill,
                        at::TensorOptions().dtype(at::kFloat).device(first.device()));
  for (const auto& pass : passes) {
    for (int64_t l = 0; l < L; ++l) {
      const auto& t = pick(pass.layers[l]);  // (H, T, S)
      const int64_t T = t.size(1), S = t.size(2);
      if (pass.first_slot + T > num_slots || S > num_slots) {
        throw Error(fmt::format("assemble_dense: pass at slot {} exceeds {} slots",
                                pass.first_slot, num_slots));
      }
      dense[l].narrow(1, pass.first_slot, T).narrow(2, 0, S).copy_(t);
    }
  }
  return dense;
}

at::Tensor assemble_value_norms(const std::vector<PassCapture>& passes, int64_t num_slots) {
  const PassCapture* widest = nullptr;
  for (const auto& p : passes) {
    if (p.layers.empty() || !p.layers.front().value_norms.defined()) continue;
    if (!widest || p.layers.front().value_norms.size(1) > widest->layers.front().value_norms.size(1)) {
      widest = &p;
    }
  }
  if (!widest) throw Error("assemble_value_norms: value norms were not captured");
  std::vector<at::Tensor> per_layer;
  for (const auto& c : widest->layers) per_layer.push_back(c.value_norms.to(at::kFloat));
  auto norms = at::stack(per_layer);  // (L', H', S)
  if (norms.size(2) != num_slots) {
    throw Error(fmt::format("assemble_value_norms: widest pass saw {} of {} slots",
                            norms.size(2), num_slots));
  }
  return norms;
}

}  // namespace attnvar
