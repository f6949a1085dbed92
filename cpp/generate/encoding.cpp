#include "attnvar/generate/encoding.h"

#include <ATen/ATen.h>

#include "attnvar/error.h"

namespace attnvar {

Encoding encoding_from_string(const std::string& name) {
  if (name == "shared_isolated") return Encoding::kSharedIsolated;
  if (name == "shared_visible") return Encoding::kSharedVisible;
  if (name == "shared_causal") return Encoding::kSharedCausal;
  if (name == "serial") return Encoding::kSerial;
  if (name == "fractional") return Encoding::kFractional;
  if (name == "top_only") return Encoding::kTopOnly;
  throw ConfigError("encoding '" + name +
                    "' is not one of shared_isolated, shared_visible, shared_causal, serial, "
                    "fractional, top_only");
}

std::string to_string(Encoding e) {
  switch (e) {
    case Encoding::kSharedIsolated: return "shared_isolated";
    case Encoding::kSharedVisible: return "shared_visible";
    case Encoding::kSharedCausal: return "shared_causal";
    case Encoding::kSerial: return "serial";
    case Encoding::kFractional: return "fractional";
    case Encoding::kTopOnly: return "top_only";
  }
  return "?";
}

Encoding encoding_for_mode(SiblingVisibility mode) {
  switch (mode) {
    case SiblingVisibility::kIsolated: return Encoding::kSharedIsolated;
    case SiblingVisibility::kVisible: return Encoding::kSharedVisible;
    case SiblingVisibility::kCausal: return Encoding::kSharedCausal;
  }
  return Encoding::kSharedIsolated;
}

at::Tensor Layout::positions() const {
  std::vector<double> p;
  for (const auto& s : slots) p.push_back(s.position);
  return at::tensor(p, at::TensorOptions().dtype(at::kDouble));
}

at::Tensor Layout::token_ids() const {
  std::vector<int64_t> ids;
  for (const auto& s : slots) ids.push_back(s.token_id);
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong));
}

Layout encode(const Tree& tree, Encoding encoding) {
  if (tree.prompt.empty()) throw ConfigError("encode: the tree's prompt is empty");
  Layout layout;
  layout.encoding = encoding;
  const int64_t P = tree.prompt_length();
  for (int64_t i = 0; i < P; ++i) {
    layout.slots.push_back(SlotRecord{tree.prompt[i], static_cast<double>(i), -1, -1});
  }
  // Sibling visibility per encoding; serial and top_only are plain causal sequences.
  const bool causal_everywhere = encoding == Encoding::kSerial || encoding == Encoding::kTopOnly;
  std::vector<std::pair<int64_t, int64_t>> sibling_blocks;  // [begin, end) of each step
  int64_t serial_extra = 0;                                 // Σ_{u<t}(k_u − 1)
  for (int64_t t = 0; t < tree.num_steps(); ++t) {
    layout.step_begin.push_back(layout.size());
    std::vector<int64_t> fed;
    for (size_t m = 0; m < tree.steps[t].members.size(); ++m) {
      const Member& member = tree.steps[t].members[m];
      if (member.is_eos) continue;
      if (encoding == Encoding::kTopOnly && member.rank != 0) continue;
      fed.push_back(static_cast<int64_t>(m));
    }
    const int64_t k = static_cast<int64_t>(fed.size());
    for (int64_t r = 0; r < k; ++r) {
      double pos = static_cast<double>(P + t);
      if (encoding == Encoding::kSerial) pos = static_cast<double>(P + t + r + serial_extra);
      if (encoding == Encoding::kFractional) pos = P + t + static_cast<double>(r) / k;
      layout.slots.push_back(SlotRecord{tree.steps[t].members[fed[r]].token_id, pos, t, fed[r]});
    }
    if (k > 0) serial_extra += k - 1;
    sibling_blocks.emplace_back(layout.step_begin.back(), layout.size());
  }
  layout.step_begin.push_back(layout.size());

  const int64_t N = layout.size();
  auto visible = at::ones({N, N}, at::TensorOptions().dtype(at::kBool)).tril();
  if (!causal_everywhere) {
    for (auto [b, e] : sibling_blocks) {
      const int64_t k = e - b;
      if (k < 2) continue;
      auto block = visible.narrow(0, b, k).narrow(1, b, k);
      switch (encoding) {
        case Encoding::kSharedIsolated:
        case Encoding::kFractional:
          block.copy_(at::eye(k, at::TensorOptions().dtype(at::kBool)));
          break;
        case Encoding::kSharedVisible:
          block.fill_(true);
          break;
        default:
          break;  // shared_causal: lower ranks, as tril already says
      }
    }
  }
  layout.visibility = visible;
  return layout;
}

}  // namespace attnvar
