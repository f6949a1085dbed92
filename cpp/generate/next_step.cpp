#include "attnvar/generate/next_step.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "attnvar/error.h"
#include "attnvar/model/single_thread.h"

namespace attnvar {

NextStepPolicy next_step_policy_from_string(const std::string& name) {
  if (name == "mixture") return NextStepPolicy::kMixture;
  if (name == "top") return NextStepPolicy::kTop;
  if (name == "last") return NextStepPolicy::kLast;
  if (name == "mean_logits") return NextStepPolicy::kMeanLogits;
  throw ConfigError("policy '" + name + "' is not one of mixture, top, last, mean_logits");
}

std::string to_string(NextStepPolicy p) {
  switch (p) {
    case NextStepPolicy::kMixture: return "mixture";
    case NextStepPolicy::kTop: return "top";
    case NextStepPolicy::kLast: return "last";
    case NextStepPolicy::kMeanLogits: return "mean_logits";
  }
  return "?";
}

double entropy_nats(const at::Tensor& q) {
  at::Tensor terms;  // (V,) f64: p log p
  {
    SingleThreadScope one_thread;  // elementwise over the vocabulary (single_thread.h)
    auto p = q.to(at::kDouble);
    terms = p * at::log(p.clamp_min(1e-300));
  }
  // The sum stays on all threads: ATen splits a 1-D sum between them, which sets its rounding.
  return -terms.sum().item<double>();
}

at::Tensor next_distribution(const at::Tensor& member_logits, const std::vector<double>& weights,
                             NextStepPolicy policy, double temperature) {
  const int64_t k = member_logits.size(0);
  if (k == 0 || static_cast<int64_t>(weights.size()) != k) {
    throw Error(fmt::format("next_distribution: {} member logits, {} weights", k, weights.size()));
  }
  // Elementwise ops, softmax along the vocabulary and a sum over the k members (the
  // vocabulary dimension kept): the same results on one thread, without waking others.
  SingleThreadScope one_thread;
  // Dividing by 1 changes no bit; skip the (k, V) copy it would cost.
  auto logits = temperature == 1.0 ? member_logits.to(at::kFloat)
                                   : member_logits.to(at::kFloat) / temperature;
  switch (policy) {
    case NextStepPolicy::kTop:
      return at::softmax(logits[0], -1);
    case NextStepPolicy::kLast:
      return at::softmax(logits[k - 1], -1);
    case NextStepPolicy::kMeanLogits:
      return at::softmax(logits.mean(0), -1);
    case NextStepPolicy::kMixture: {
      auto w = at::tensor(weights, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
      w = (w / w.sum()).to(logits.device());
      return (at::softmax(logits, -1) * w.unsqueeze(1)).sum(0);
    }
  }
  throw Error("next_distribution: unknown policy");
}

}  // namespace attnvar
