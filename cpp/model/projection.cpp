#include "attnvar/model/projection.h"

#include <ATen/ATen.h>

namespace attnvar {
namespace {
constexpr int64_t kWeightMajorMaxRows = 16;
}  // namespace

at::Tensor project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int64_t rows = x.size(0);
  if (rows < 2 || rows > kWeightMajorMaxRows) {
    return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
  }
  auto y = at::mm(w, x.t()).t().contiguous();  // (T, out)
  return b.defined() ? y.add_(b) : y;
}

}  // namespace attnvar
