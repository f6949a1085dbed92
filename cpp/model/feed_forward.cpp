#include "attnvar/model/feed_forward.h"

#include <ATen/ATen.h>

#include "attnvar/model/projection.h"

namespace attnvar {
namespace {

// act(g) in place.
void activate_(at::Tensor& g, Activation a) {
  switch (a) {
    case Activation::kSilu:
      at::silu_(g);
      return;
    case Activation::kGeluTanh:
      at::gelu_(g, "tanh");
      return;
    case Activation::kGelu:
      at::gelu_(g);
      return;
  }
}

}  // namespace

FeedForwardWeights fuse_gate_up(FeedForwardWeights w) {
  const int64_t inter = w.gate_proj.out_features();
  w.gate_up_proj = Linear::cat_rows({w.gate_proj, w.up_proj});
  w.gate_proj = w.gate_up_proj.narrow_rows(0, inter);
  w.up_proj = w.gate_up_proj.narrow_rows(inter, inter);
  return w;
}

at::Tensor feed_forward_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                                 const FeedForwardWeights& w, int64_t layer,
                                 const std::vector<HookContext>& hooks) {
  // One row's values never mix with another's between the projections (the activation
  // and the product are elementwise). The elementwise ops still run per sequence, on the shapes
  // its own pass has: a vectorised kernel split across threads at another place could
  // send an element through its scalar tail instead, and round it differently.
  if (!w.gate_up_proj.defined()) {
    auto gate = project_segments(x, rows, w.gate_proj);
    auto up = project_segments(x, rows, w.up_proj);
    int64_t offset = 0;
    for (const int64_t n : rows) {
      auto g = gate.narrow(0, offset, n);
      activate_(g, w.activation);
      g.mul_(up.narrow(0, offset, n));
      offset += n;
    }
    return project_segments(at_point_rows(hooks, rows, layer, HookPoint::kMlpPost, gate), rows, w.down_proj);
  }
  const int64_t inter = w.gate_proj.out_features();
  auto gate_up = project_segments(x, rows, w.gate_up_proj);  // (T, 2 * intermediate)
  // act(gate) * up in place in the gate columns, a (T, intermediate) view with row
  // stride 2 * intermediate that the down projection reads directly.
  auto gate = gate_up.narrow(1, 0, inter);
  int64_t offset = 0;
  for (const int64_t n : rows) {
    auto g = gate.narrow(0, offset, n);
    activate_(g, w.activation);
    g.mul_(gate_up.narrow(0, offset, n).narrow(1, inter, inter));
    offset += n;
  }
  return project_segments(at_point_rows(hooks, rows, layer, HookPoint::kMlpPost, gate), rows, w.down_proj);
}

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w, int64_t layer,
                        const HookContext& hooks) {
  return feed_forward_segments(x, {x.size(0)}, w, layer, {hooks});
}

}  // namespace attnvar
