#include "attnvar/model/feed_forward.h"

#include <ATen/ATen.h>

#include "attnvar/model/projection.h"

namespace attnvar {

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w) {
  auto gate = at::silu(project(x, w.gate_proj));
  return project(gate.mul_(project(x, w.up_proj)), w.down_proj);
}

}  // namespace attnvar
