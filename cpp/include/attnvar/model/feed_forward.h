// The SwiGLU feed-forward block of Llama-family decoders: down(silu(gate(x)) * up(x)).
#pragma once

#include <ATen/core/Tensor.h>

namespace attnvar {

struct FeedForwardWeights {
  at::Tensor gate_proj;  // (intermediate, hidden)
  at::Tensor up_proj;    // (intermediate, hidden)
  at::Tensor down_proj;  // (hidden, intermediate)
};

// x: (T, hidden) -> (T, hidden)
at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w);

}  // namespace attnvar
