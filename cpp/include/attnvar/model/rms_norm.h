// RMSNorm as transformers computes it: in f32, then scaled by the weight in the input dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace attnvar {

// x: (..., D), weight: (D,) -> (..., D) in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace attnvar
