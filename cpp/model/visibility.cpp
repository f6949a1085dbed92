#include "attnvar/model/visibility.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "attnvar/error.h"

namespace attnvar {

namespace {

void check_counts(const char* what, int64_t num_new, int64_t num_prev) {
  if (num_new < 0 || num_prev < 0) {
    throw ConfigError(fmt::format("{}: slot counts must be ≥ 0, got {} new and {} previous",
                                  what, num_new, num_prev));
  }
}

}  // namespace

at::Tensor causal_visibility(int64_t num_new, int64_t num_prev) {
  check_counts("causal_visibility", num_new, num_prev);
  auto visible = at::ones({num_new, num_prev + num_new}, at::TensorOptions().dtype(at::kBool));
  visible.narrow(1, num_prev, num_new)
      .copy_(at::ones({num_new, num_new}, at::TensorOptions().dtype(at::kBool)).tril());
  return visible;
}

at::Tensor set_visibility(int64_t num_members, int64_t num_prev, SiblingVisibility mode) {
  check_counts("set_visibility", num_members, num_prev);
  auto opts = at::TensorOptions().dtype(at::kBool);
  auto visible = at::ones({num_members, num_prev + num_members}, opts);
  auto siblings = visible.narrow(1, num_prev, num_members);
  switch (mode) {
    case SiblingVisibility::kIsolated:
      siblings.copy_(at::eye(num_members, opts));
      break;
    case SiblingVisibility::kVisible:
      break;
    case SiblingVisibility::kCausal:
      siblings.copy_(at::ones({num_members, num_members}, opts).tril());
      break;
  }
  return visible;
}

SiblingVisibility sibling_visibility_from_string(const std::string& name) {
  if (name == "isolated") return SiblingVisibility::kIsolated;
  if (name == "visible") return SiblingVisibility::kVisible;
  if (name == "causal") return SiblingVisibility::kCausal;
  throw ConfigError("mode '" + name + "' is not one of isolated, visible, causal");
}

}  // namespace attnvar
