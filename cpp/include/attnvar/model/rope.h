// Rotary position embedding (RoPE) in Hugging Face's `rotate_half` layout: the first
// and second halves of each head pair up, i.e. dimension i rotates with i + head_dim/2
// by the angle position * inv_freq[i].
//
// Positions are explicit float *logical positions*, one per token, never looked up in
// a table: several tokens may share a position (a parallel set) and positions may be
// fractional (the `fractional` encoding). A token's slot in the KV cache is unrelated.
#pragma once

#include <ATen/core/Tensor.h>

#include "attnvar/model/config.h"

namespace attnvar {

struct RopeParams {
  int64_t head_dim = 64;  // even
  double theta = 10000.0;
  RopeScaling scaling;
};

// Per-token rotation tables. cos, sin: (T, head_dim), f32, duplicated halves as in HF.
struct RopeAngles {
  at::Tensor cos;
  at::Tensor sin;
};

class Rope {
 public:
  // Computes inv_freq on `device` exactly as transformers does (f32 arithmetic,
  // including the llama3 and linear rope scaling rules).
  Rope(const RopeParams& params, c10::Device device);

  const RopeParams& params() const { return params_; }
  // (head_dim / 2,) f32
  const at::Tensor& inv_freq() const { return inv_freq_; }

  // positions: (T,) any floating or integer dtype -> tables for those positions.
  // Throws ConfigError if positions are not 1-D or not finite.
  RopeAngles angles(const at::Tensor& positions) const;

  // x: (..., T, head_dim) -> x rotated per token, same shape and dtype.
  // The angles' T must equal x.size(-2).
  at::Tensor apply(const at::Tensor& x, const RopeAngles& angles) const;

 private:
  RopeParams params_;
  at::Tensor inv_freq_;
};

}  // namespace attnvar
