#include "attnvar/model/feed_forward.h"

#include <ATen/ATen.h>

namespace attnvar {

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w) {
  auto gate = at::silu(at::linear(x, w.gate_proj));
  return at::linear(gate.mul_(at::linear(x, w.up_proj)), w.down_proj);
}

}  // namespace attnvar
