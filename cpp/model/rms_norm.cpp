#include "attnvar/model/rms_norm.h"

#include <ATen/ATen.h>

#include <cmath>

namespace attnvar {
namespace {

// f32 rows on the CPU in one pass per row: a pass runs 2·layers + 1 norms over a few rows,
// and the generic form below is six ATen ops (and as many allocations) each. Same formula;
// the sum of squares is accumulated in f64 (the ATen mean sums in f32, so results may
// differ in the last bit).
at::Tensor rms_norm_rows_f32(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    float* orow = op + r * d;
    double sum_sq = 0;
    for (int64_t i = 0; i < d; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(sum_sq / static_cast<double>(d));
    const float inv = 1.0f / std::sqrt(variance + static_cast<float>(eps));
    for (int64_t i = 0; i < d; ++i) orow[i] = wp[i] * (xr[i] * inv);
  }
  return out;
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // Every f32 CPU input takes the row kernel, strided ones through a contiguous copy: the
  // result must not depend on the memory layout (an edited q is contiguous, the unedited
  // one a strided view of the fused projection; both must round alike).
  if (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.is_cpu() &&
      weight.is_cpu() && x.dim() >= 1 && x.size(-1) > 0 && weight.dim() == 1 &&
      weight.size(0) == x.size(-1)) {
    return rms_norm_rows_f32(x.contiguous(), weight.contiguous(), eps);
  }
  auto xf = x.to(at::kFloat);
  auto variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  auto normalised = xf * at::rsqrt(variance + eps);
  if (weight.scalar_type() == at::kFloat && x.scalar_type() != at::kFloat) {
    return (weight * normalised).to(x.scalar_type());  // the product in f32 (Gemma, OLMo 2)
  }
  return weight * normalised.to(x.scalar_type());  // cast, then the product (Llama)
}

}  // namespace attnvar
