#include "attnvar/model/linear.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace attnvar {

int64_t Linear::out_features() const {
  if (dense_.defined()) return dense_.size(0);
  int64_t n = 0;
  for (const auto& p : parts_) n += p.rows();
  return n;
}

int64_t Linear::in_features() const {
  if (dense_.defined()) return dense_.size(1);
  return parts_.empty() ? 0 : parts_.front().cols;
}

at::Tensor Linear::to_dense() const {
  if (dense_.defined() || parts_.empty()) return dense_;
  auto out = at::empty({out_features(), in_features()}, at::kFloat);
  dequantize_into(out);
  return out;
}

void Linear::dequantize_into(at::Tensor& out) const {
  TORCH_CHECK(quantized() && out.is_contiguous() && out.scalar_type() == at::kFloat &&
                  out.dim() == 2 && out.size(0) == out_features() &&
                  out.size(1) == in_features(),
              "Linear::dequantize_into: a contiguous (out, in) f32 tensor is required");
  float* dst = out.data_ptr<float>();
  for (const auto& p : parts_) {  // the parts' rows one after another, as cat_rows stacks them
    attnvar::dequantize_into(p, dst);
    dst += p.rows() * p.cols;
  }
}

Linear Linear::narrow_rows(int64_t begin, int64_t n) const {
  if (dense_.defined()) return Linear(dense_.narrow(0, begin, n));
  Linear out;
  int64_t at_row = 0;
  for (const auto& p : parts_) {
    const int64_t lo = std::max(begin, at_row), hi = std::min(begin + n, at_row + p.rows());
    if (lo < hi) {
      out.parts_.push_back({p.blocks.narrow(0, lo - at_row, hi - lo), p.type, p.cols});
    }
    at_row += p.rows();
  }
  return out;
}

at::Tensor Linear::gather_rows(const at::Tensor& ids) const {
  if (dense_.defined()) return dense_.index_select(0, ids);
  auto idx = ids.to(at::kLong).cpu().contiguous();
  const int64_t n = idx.numel(), cols = in_features();
  auto out = at::empty({n, cols}, at::kFloat);
  const int64_t* id = idx.const_data_ptr<int64_t>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t row = id[i];
    for (const auto& p : parts_) {
      if (row < p.rows()) {
        dequantize_rows(p, row, 1, dst + i * cols);
        break;
      }
      row -= p.rows();
    }
  }
  return out;
}

int64_t Linear::nbytes() const {
  if (dense_.defined()) return static_cast<int64_t>(dense_.nbytes());
  int64_t n = 0;
  for (const auto& p : parts_) n += static_cast<int64_t>(p.blocks.nbytes());
  return n;
}

Linear Linear::cat_rows(const std::vector<Linear>& pieces) {
  const bool all_quantized = std::all_of(pieces.begin(), pieces.end(),
                                         [](const Linear& l) { return l.quantized(); });
  if (!all_quantized) {
    std::vector<at::Tensor> dense;
    dense.reserve(pieces.size());
    for (const auto& l : pieces) dense.push_back(l.to_dense());
    return Linear(at::cat(dense, 0));
  }
  // The parts as they are, no copy: blocks stay views of the mapped file, and one
  // qgemv_rows call runs all of a fused weight's parts in one parallel region.
  Linear out;
  for (const auto& l : pieces) out.parts_.insert(out.parts_.end(), l.parts_.begin(), l.parts_.end());
  return out;
}

}  // namespace attnvar
