// The SwiGLU feed-forward block of Llama-family decoders: down(silu(gate(x)) * up(x)).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace attnvar {

struct FeedForwardWeights {
  at::Tensor gate_proj;  // (intermediate, hidden)
  at::Tensor up_proj;    // (intermediate, hidden)
  at::Tensor down_proj;  // (hidden, intermediate)
  // (2 * intermediate, hidden): gate rows, then up rows; when defined, gate_proj and
  // up_proj are views of it and one projection computes both.
  at::Tensor gate_up_proj;
};

// The same weights with gate and up concatenated into gate_up_proj (done at load).
FeedForwardWeights fuse_gate_up(FeedForwardWeights w);

// x: (T, hidden) -> (T, hidden). With `post`, also sets *post to a copy of the activations
// silu(gate(x)) * up(x) that enter down_proj, (T, intermediate) (the mlp.hook_post point).
at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w,
                        at::Tensor* post = nullptr);

// The rows of several independent sequences (counts `rows`) in one call, each row's
// result bit for bit feed_forward() of its own sequence (projections: project_segments).
at::Tensor feed_forward_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                                 const FeedForwardWeights& w, at::Tensor* post = nullptr);

}  // namespace attnvar
