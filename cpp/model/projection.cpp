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
// Everything but the row count.
bool gemv_rows_kernel_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto f32_cpu = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu();
  };
  return x.dim() == 2 && w.dim() == 2 && f32_cpu(x) && f32_cpu(w) && w.stride(1) == 1 &&
         x.size(1) == w.size(1) &&
         (!b.defined() || (f32_cpu(b) && b.dim() == 1 && b.size(0) == w.size(0)));
}

bool gemv_rows_applies(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return x.dim() == 2 && x.size(0) <= kGemvRowsMax && gemv_rows_kernel_applies(x, w, b);
}

// The same test for a Linear: its dense weight's, or, for quantized parts, f32 CPU rows of
// the right width (and an f32 CPU bias).
bool gemv_rows_kernel_applies(const at::Tensor& x, const Linear& w, const at::Tensor& b) {
  if (!w.quantized()) return gemv_rows_kernel_applies(x, w.dense(), b);
  const auto f32_cpu = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu();
  };
  return x.dim() == 2 && f32_cpu(x) && x.size(1) == w.in_features() &&
         (!b.defined() || (f32_cpu(b) && b.dim() == 1 && b.size(0) == w.out_features()));
}

// Runs of rows that the gemv kernels take are gathered across sequences, up to 16 rows per
// call; any other sequence gets its own call (project_segments' contract).
// `alone(segment)` projects a sequence that gets its own call.
template <typename W, typename Alone>
at::Tensor segments(const at::Tensor& x, const std::vector<int64_t>& rows, const W& w,
                    const at::Tensor& b, const Alone& alone) {
  if (rows.size() <= 1) return project(x, w, b);
  const bool gemv = gemv_rows_kernel_applies(x, w, b);
  std::vector<at::Tensor> parts;
  int64_t run_begin = 0, run_rows = 0;  // consecutive rows of gemv_rows sequences
  const auto flush = [&] {
    for (int64_t r = 0; r < run_rows; r += kGemvRowsMax) {
      parts.push_back(project(x.narrow(0, run_begin + r, std::min(kGemvRowsMax, run_rows - r)),
                              w, b));
    }
    run_begin += run_rows;
    run_rows = 0;
  };
  int64_t offset = 0;
  for (const int64_t n : rows) {
    if (gemv && n <= kGemvRowsMax) {
      if (run_rows == 0) run_begin = offset;
      run_rows += n;
    } else {
      flush();
      parts.push_back(alone(x.narrow(0, offset, n)));
    }
    offset += n;
  }
  flush();
  return at::cat(parts);
}

// Quantized matrices of up to this many elements are decoded for a many-row product into a
// buffer of the calling thread that is kept between calls (32 MB: every matrix of a
// SmolLM2-sized model but its 113 MB output head); larger ones into a fresh tensor.
constexpr int64_t kScratchFloatsMax = int64_t{8} << 20;

// The dequantized matrix for one BLAS call: the same values as Linear::to_dense(), so the
// product is bit for bit the f32 path's. A prefill or replay multiplies every matrix once
// per pass, and allocating (and the kernel zeroing) ~0.5 GB of fresh pages per pass cost
// as much as decoding them; the buffer is reused by the next matrix, since linear() never
// returns a view of its weight.
at::Tensor dequantized_for_gemm(const Linear& w) {
  const int64_t out = w.out_features(), in = w.in_features();
  if (out * in > kScratchFloatsMax) return w.to_dense();
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < out * in) {
    buffer = at::empty({out * in}, at::TensorOptions().dtype(at::kFloat));
  }
  at::Tensor dense = buffer.narrow(0, 0, out * in).view({out, in});
  w.dequantize_into(dense);
  return dense;
}

// A quantized matrix's product where the gemv kernels do not take it (more rows, or inputs
// they do not handle): one linear() on the dequantized matrix, as the f32 path does.
// `dense`: that matrix, decoded here on first use and kept there for the caller's next call.
at::Tensor project_decoded(const at::Tensor& x, const Linear& w, const at::Tensor& b,
                           at::Tensor& dense) {
  if (!dense.defined()) dense = dequantized_for_gemm(w);
  return b.defined() ? at::linear(x, dense, b) : at::linear(x, dense);
}

// Whether project() sends x through qgemv_rows (else project_decoded).
bool qgemv_takes(const at::Tensor& x, const Linear& w, const at::Tensor& b) {
  return gemv_rows_kernel_applies(x, w, b) && x.size(0) <= kGemvRowsMax;
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

at::Tensor project_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                            const at::Tensor& w, const at::Tensor& b) {
  return segments(x, rows, w, b, [&](const at::Tensor& xs) { return project(xs, w, b); });
}

at::Tensor project(const at::Tensor& x, const Linear& w, const at::Tensor& b) {
  if (!w.quantized()) return project(x, w.dense(), b);
  if (!qgemv_takes(x, w, b)) {
    at::Tensor dense;
    return project_decoded(x, w, b, dense);
  }
  const int64_t rows = x.size(0), out = w.out_features();
  const at::Tensor xr = x.stride(1) == 1 ? x : x.contiguous();
  const at::Tensor bc = b.defined() ? b.contiguous() : b;
  auto y = at::empty({rows, out}, x.options());
  qgemv_rows(xr.data_ptr<float>(), xr.stride(0), rows, w.parts(),
             bc.defined() ? bc.data_ptr<float>() : nullptr, y.data_ptr<float>(), out);
  return y;
}

at::Tensor project_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                            const Linear& w, const at::Tensor& b) {
  if (!w.quantized()) return project_segments(x, rows, w.dense(), b);
  // The sequences projected alone (more rows than the gemv kernels take: a replay, a
  // prefill) share one decoded matrix: decoded once per call, not once per sequence. Each
  // product is the same linear() on the same values as project() would make alone.
  at::Tensor dense;
  return segments(x, rows, w, b, [&](const at::Tensor& xs) {
    return qgemv_takes(xs, w, b) ? project(xs, w, b) : project_decoded(xs, w, b, dense);
  });
}

}  // namespace attnvar
