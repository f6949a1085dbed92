// The gated feed-forward block of Llama-family decoders: down(act(gate(x)) * up(x)), with
// act silu (SwiGLU) or GELU (GeGLU: Gemma's tanh approximation, or exact).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "attnvar/model/config.h"
#include "attnvar/model/hook_edit.h"
#include "attnvar/model/linear.h"

namespace attnvar {

struct FeedForwardWeights {
  Linear gate_proj;  // (intermediate, hidden)
  Linear up_proj;    // (intermediate, hidden)
  Linear down_proj;  // (hidden, intermediate)
  // (2 * intermediate, hidden): gate rows, then up rows; when defined, gate_proj and
  // up_proj are views of it and one projection computes both.
  Linear gate_up_proj;
  Activation activation = Activation::kSilu;
};

// The same weights with gate and up concatenated into gate_up_proj (done at load).
FeedForwardWeights fuse_gate_up(FeedForwardWeights w);

// x: (T, hidden) -> (T, hidden). The activations act(gate(x)) * up(x) that enter down_proj,
// (T, intermediate), pass through `hooks` at blocks.{layer}.mlp.hook_post.
at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w, int64_t layer = -1,
                        const HookContext& hooks = {});

// The rows of several independent sequences (counts `rows`) in one call, each row's
// result bit for bit feed_forward() of its own sequence (projections: project_segments).
// hooks: one context per sequence (or none).
at::Tensor feed_forward_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                                 const FeedForwardWeights& w, int64_t layer = -1,
                                 const std::vector<HookContext>& hooks = {});

}  // namespace attnvar
