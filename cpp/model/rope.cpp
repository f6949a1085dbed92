#include "attnvar/model/rope.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <numbers>

#include "attnvar/error.h"

namespace attnvar {
namespace {

// transformers' default rule: 1 / theta^(arange(0, d, 2) / d), all in f32.
at::Tensor default_inv_freq(const RopeParams& p, c10::Device device) {
  auto exponents = at::arange(0, p.head_dim, 2, at::TensorOptions().dtype(at::kLong).device(device))
                       .to(at::kFloat) /
                   static_cast<double>(p.head_dim);
  return at::pow(p.theta, exponents).reciprocal();
}

// transformers' llama3 rule: long wavelengths divided by `factor`, short ones kept,
// the band between them interpolated smoothly.
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeScaling& s) {
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  auto wavelen = (2 * std::numbers::pi) / inv_freq;
  auto scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  auto is_medium = at::logical_not(wavelen < high_freq_wavelen)
                       .logical_and(at::logical_not(wavelen > low_freq_wavelen));
  return at::where(is_medium, smoothed, scaled);
}

// The tensor form of apply() below for the common case, as one loop: x (A, T, D) f32 with
// unit stride along D, cos and sin (T, D) contiguous f32. Each output is one product, then
// one add or subtract of another product, as in the tensor form (this file is compiled
// without FMA contraction), so the results are bit-identical; a step's few rows take a
// microsecond instead of seven tensor ops.
at::Tensor apply_rows_f32(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t A = x.size(0), T = x.size(1), D = x.size(2), h = D / 2;
  auto out = at::empty({A, T, D}, x.options());  // contiguous
  const float* xp = x.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = xp + a * x.stride(0) + t * x.stride(1);
      const float* c = cp + t * D;
      const float* s = sp + t * D;
      float* o = op + (a * T + t) * D;
      for (int64_t i = 0; i < h; ++i) o[i] = xr[i] * c[i] - xr[i + h] * s[i];
      for (int64_t i = h; i < D; ++i) o[i] = xr[i] * c[i] + xr[i - h] * s[i];
    }
  }
  return out;
}

}  // namespace

Rope::Rope(const RopeParams& params, c10::Device device) : params_(params) {
  if (params.head_dim <= 0 || params.head_dim % 2 != 0) {
    throw ConfigError(fmt::format("rope: head_dim must be positive and even, got {}",
                                  params.head_dim));
  }
  if (!(params.theta > 0)) throw ConfigError("rope: theta must be positive");
  inv_freq_ = default_inv_freq(params, device);
  switch (params.scaling.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      inv_freq_ = inv_freq_ / params.scaling.factor;
      break;
    case RopeScalingType::kLlama3:
      inv_freq_ = llama3_inv_freq(inv_freq_, params.scaling);
      break;
  }
}

RopeAngles Rope::angles(const at::Tensor& positions) const {
  if (positions.dim() != 1) {
    throw ConfigError(fmt::format("rope: positions must be 1-D (one per token), got {} dims",
                                  positions.dim()));
  }
  auto pos = positions.to(inv_freq_.device(), at::kFloat);
  if (pos.numel() > 0 && !at::isfinite(pos).all().item<bool>()) {
    throw ConfigError("rope: positions must be finite");
  }
  // (T, 1) * (1, D/2): one f32 product per entry, as HF's matmul with K = 1 gives.
  auto freqs = pos.unsqueeze(1) * inv_freq_.unsqueeze(0);
  auto emb = at::cat({freqs, freqs}, -1);  // (T, D)
  return {emb.cos(), emb.sin()};
}

at::Tensor Rope::apply(const at::Tensor& x, const RopeAngles& a) const {
  const int64_t d = params_.head_dim;
  if (x.dim() < 2 || x.size(-1) != d || x.size(-2) != a.cos.size(0)) {
    throw ConfigError(fmt::format("rope: x must be (..., T={}, head_dim={}), got {}",
                                  a.cos.size(0), d, c10::str(x.sizes())));
  }
  auto cos = a.cos.to(x.scalar_type());
  auto sin = a.sin.to(x.scalar_type());
  const auto f32_cpu = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.device().is_cpu();
  };
  if (x.dim() == 3 && x.stride(2) == 1 && f32_cpu(x) && f32_cpu(cos) && f32_cpu(sin) &&
      cos.is_contiguous() && sin.is_contiguous()) {
    return apply_rows_f32(x, cos, sin);
  }
  // x*cos + rotate_half(x)*sin, with rotate_half(x) = cat(-x2, x1), written on halves:
  // out1 = x1*cos1 - x2*sin1, out2 = x2*cos2 + x1*sin2 (bit-identical to HF's form).
  const int64_t h = d / 2;
  auto x1 = x.narrow(-1, 0, h);
  auto x2 = x.narrow(-1, h, h);
  auto out = x * cos;
  out.narrow(-1, 0, h).sub_(x2 * sin.narrow(-1, 0, h));
  out.narrow(-1, h, h).add_(x1 * sin.narrow(-1, h, h));
  return out;
}

}  // namespace attnvar
