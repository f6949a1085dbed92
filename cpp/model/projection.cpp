#include "attnvar/model/projection.h"

#include <ATen/ATen.h>

#include "attnvar/model/gemv_rows.h"

namespace attnvar {
namespace {

// Up to this many rows (a parallel set's members, a decode step) the projection is bound
// by streaming the weight, and gemv_rows reads it once for all rows. More rows (prefill,
// replay) are compute-bound: BLAS gemm.
constexpr int64_t kGemvRowsMax = 16;

// gemv_rows handles f32 CPU tensors whose rows are unit-stride; anything else takes linear().
bool gemv_rows_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto f32_cpu = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu();
  };
  return x.dim() == 2 && w.dim() == 2 && x.size(0) <= kGemvRowsMax && f32_cpu(x) && f32_cpu(w) &&
         w.stride(1) == 1 && x.size(1) == w.size(1) &&
         (!b.defined() || (f32_cpu(b) && b.dim() == 1 && b.size(0) == w.size(0)));
}

}  // namespace

at::Tensor project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!gemv_rows_applies(x, w, b)) {
    return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
  }
  const int64_t rows = x.size(0), out = w.size(0), in = w.size(1);
  const at::Tensor xr = x.stride(1) == 1 ? x : x.contiguous();  // rows may be strided
  const at::Tensor bc = b.defined() ? b.contiguous() : b;
  auto y = at::empty({rows, out}, x.options());
  gemv_rows(xr.data_ptr<float>(), xr.stride(0), rows, w.data_ptr<float>(), w.stride(0), out, in,
            bc.defined() ? bc.data_ptr<float>() : nullptr, y.data_ptr<float>(), out);
  return y;
}

}  // namespace attnvar
