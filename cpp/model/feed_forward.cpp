#include "attnvar/model/feed_forward.h"

#include <ATen/ATen.h>

#include "attnvar/model/projection.h"

namespace attnvar {

FeedForwardWeights fuse_gate_up(FeedForwardWeights w) {
  const int64_t inter = w.gate_proj.size(0);
  w.gate_up_proj = at::cat({w.gate_proj, w.up_proj}, 0);
  w.gate_proj = w.gate_up_proj.narrow(0, 0, inter);
  w.up_proj = w.gate_up_proj.narrow(0, inter, inter);
  return w;
}

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w) {
  if (!w.gate_up_proj.defined()) {
    auto gate = at::silu(project(x, w.gate_proj));
    return project(gate.mul_(project(x, w.up_proj)), w.down_proj);
  }
  const int64_t inter = w.gate_proj.size(0);
  auto gate_up = project(x, w.gate_up_proj);  // (T, 2 * intermediate)
  // silu(gate) * up in place in the gate columns, a (T, intermediate) view with row
  // stride 2 * intermediate that the down projection reads directly.
  auto gate = gate_up.narrow(1, 0, inter);
  at::silu_(gate).mul_(gate_up.narrow(1, inter, inter));
  return project(gate, w.down_proj);
}

}  // namespace attnvar
