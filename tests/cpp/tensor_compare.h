// Parity helpers in the llm.c style: a comparison reports its max absolute difference.
#pragma once

#include <ATen/ATen.h>

#include <iostream>
#include <string>

namespace attnvar::testing {

// Max |a - b| over all entries (f64), printed with `label` so logs show the margin.
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b, const std::string& label) {
  double d = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  std::cout << "[parity] " << label << ": max |diff| = " << d << "\n";
  return d;
}

}  // namespace attnvar::testing
