// RMSNorm as transformers computes it: normalised in f32, then scaled by the weight. The
// weight's dtype says where the product is taken: a weight in x's dtype multiplies the
// normalised value cast to it (Llama, Qwen, Phi-3); an f32 weight multiplies in f32 and the
// product is cast (Gemma, OLMo 2). For f32 x the two are the same.
#pragma once

#include <ATen/core/Tensor.h>

namespace attnvar {

// x: (..., D), weight: (D,) -> (..., D) in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace attnvar
