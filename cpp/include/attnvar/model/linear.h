// A projection's weight matrix (out_features, in_features): a dense tensor (any dtype and
// device), or, for f32 models on the CPU loaded from GGUF, one or more quantized parts
// stacked along the output rows (QuantizedMatrix; a fused weight such as q/k/v keeps one
// part per source matrix, each in its own ggml type, e.g. q and k in Q4_K with v in Q6_K).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "attnvar/model/quantized_matrix.h"

namespace attnvar {

class Linear {
 public:
  Linear() = default;
  explicit Linear(at::Tensor dense) : dense_(std::move(dense)) {}
  explicit Linear(QuantizedMatrix part) : parts_{std::move(part)} {}

  bool defined() const { return dense_.defined() || !parts_.empty(); }
  bool quantized() const { return !parts_.empty(); }
  int64_t out_features() const;
  int64_t in_features() const;
  // The dense weight; undefined when quantized.
  const at::Tensor& dense() const { return dense_; }
  const std::vector<QuantizedMatrix>& parts() const { return parts_; }
  // The dense weight, or the parts dequantized and stacked: (out, in) f32.
  at::Tensor to_dense() const;
  // The parts dequantized and stacked into `out`, a contiguous (out, in) f32 CPU tensor
  // (quantized weights only).
  void dequantize_into(at::Tensor& out) const;
  // Output rows [begin, begin + n): a view (narrowed tensor, or narrowed parts).
  Linear narrow_rows(int64_t begin, int64_t n) const;
  // Rows `ids` (1-D int64) as (n, in) in the dense weight's dtype (f32 when quantized): the
  // embedding lookup, decoding only the rows it reads.
  at::Tensor gather_rows(const at::Tensor& ids) const;
  // Bytes the weight holds.
  int64_t nbytes() const;

  // The matrices stacked along their rows: dense ones concatenated; quantized ones as a
  // list of their parts (no copy); a mix of dense and quantized becomes dense.
  static Linear cat_rows(const std::vector<Linear>& pieces);

 private:
  at::Tensor dense_;
  std::vector<QuantizedMatrix> parts_;
};

}  // namespace attnvar
