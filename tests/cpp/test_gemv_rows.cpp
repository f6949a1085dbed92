// gemv_rows (a few rows times a weight read once) and project() against at::matmul:
// 1..16 rows, odd sizes (row tails of every length mod 8, odd output counts), bias,
// strided and transposed inputs, both kernels. Max differences are printed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <iostream>
#include <string>
#include <vector>

#include "attnvar/model/gemv_rows.h"
#include "attnvar/model/projection.h"
#include "catch_compat.h"
#include "tensor_compare.h"

using attnvar::gemv_rows;
using attnvar::GemvRowsKernel;
using attnvar::project;
using attnvar::testing::max_abs_diff;

namespace {

struct Shape {
  int64_t out, in;
};

// Odd sizes: in covers every length mod 8, out odd and even, one-element edge cases.
const std::vector<Shape> kShapes = {{1, 1},    {3, 7},      {5, 8},  {7, 13},
                                    {33, 577}, {130, 1537}, {64, 9}, {17, 300}};

// Inputs scaled so outputs are O(1): a fixed absolute tolerance means the same everywhere.
at::Tensor weight(int64_t out, int64_t in, at::Generator& g) {
  return at::randn({out, in}, g) / std::sqrt(static_cast<double>(in));
}

at::Tensor run_kernel(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                      GemvRowsKernel kernel) {
  auto y = at::empty({x.size(0), w.size(0)});
  gemv_rows(x.data_ptr<float>(), x.stride(0), x.size(0), w.data_ptr<float>(), w.stride(0),
            w.size(0), w.size(1), b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(),
            y.stride(0), kernel);
  return y;
}

constexpr double kTol = 1e-5;

}  // namespace

TEST_CASE("gemv_rows equals at::matmul for 1..16 rows and odd sizes, both kernels", "[gemv_rows]") {
  std::cout << "[gemv_rows] auto kernel on this CPU: " << attnvar::gemv_rows_auto_kernel() << "\n";
  auto g = at::make_generator<at::CPUGeneratorImpl>(11);
  for (const auto kernel : {GemvRowsKernel::kAuto, GemvRowsKernel::kPortable}) {
    const std::string kname = kernel == GemvRowsKernel::kAuto ? "auto" : "portable";
    double worst = 0;
    for (const auto& s : kShapes) {
      auto w = weight(s.out, s.in, g);
      auto b = at::randn({s.out}, g);
      for (int64_t rows = 1; rows <= 16; ++rows) {
        auto x = at::randn({rows, s.in}, g);
        auto expected = at::matmul(x, w.t());
        const double d = (run_kernel(x, w, {}, kernel) - expected).abs().max().item<double>();
        const double db = (run_kernel(x, w, b, kernel) - (expected + b)).abs().max().item<double>();
        INFO(kname << " rows " << rows << " out " << s.out << " in " << s.in);
        REQUIRE(d <= kTol);
        REQUIRE(db <= kTol);
        worst = std::max({worst, d, db});
      }
    }
    std::cout << "[parity] gemv_rows " << kname
              << " vs at::matmul, rows 1..16, all shapes: max |diff| = " << worst << "\n";
  }
}

TEST_CASE("gemv_rows: a row's result depends neither on the other rows nor on threads",
          "[gemv_rows]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(12);
  auto w = weight(1031, 577, g);
  auto b = at::randn({1031}, g);
  auto x = at::randn({16, 577}, g);
  const auto all = project(x, w, b);
  for (int64_t r = 0; r < 16; ++r) {
    // Row r alone, and inside batches of every size that contains it.
    REQUIRE(at::equal(project(x.narrow(0, r, 1), w, b), all.narrow(0, r, 1)));
    REQUIRE(at::equal(project(x.narrow(0, 0, r + 1), w, b), all.narrow(0, 0, r + 1)));
  }
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one_thread = project(x, w, b);
  at::set_num_threads(threads);
  REQUIRE(at::equal(one_thread, all));
}

TEST_CASE("project with strided and transposed inputs and weight views equals at::linear",
          "[gemv_rows]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(13);
  // A fused weight (q, k, v rows stacked) and a view of its middle rows: a row-strided,
  // non-owning weight like the engine's k_proj.
  auto fused = weight(96 + 40 + 40, 203, g);
  auto w_view = fused.narrow(0, 96, 40);
  auto b = at::randn({40}, g);
  for (int64_t rows : {1, 2, 3, 4, 5, 8, 11, 16, 17, 40}) {
    // Rows strided: every other row of a wider buffer, and columns cut out of it.
    auto wide = at::randn({2 * rows, 260}, g);
    auto x_rows = wide.slice(0, 0, 2 * rows, 2).narrow(1, 31, 203);  // stride (520, 1)
    if (rows > 1) REQUIRE_FALSE(x_rows.is_contiguous());
    // Transposed: unit stride across rows, not within a row.
    auto x_t = at::randn({203, rows}, g).t();
    if (rows > 1) REQUIRE(x_t.stride(1) != 1);
    for (const auto& [label, x] :
         {std::pair{"row-strided", x_rows}, std::pair{"transposed", x_t}}) {
      const std::string tag = std::string(label) + " x, rows " + std::to_string(rows);
      REQUIRE(max_abs_diff(project(x, w_view, b), at::linear(x, w_view, b), tag) <= kTol);
      REQUIRE(max_abs_diff(project(x, fused), at::matmul(x, fused.t()), tag + ", fused w") <= kTol);
      auto y = project(x, w_view);
      REQUIRE(y.is_contiguous());
      REQUIRE(y.sizes() == at::IntArrayRef({rows, 40}));
    }
  }
  // A transposed weight (no unit stride within a row) takes linear(), same result.
  auto wt = weight(150, 64, g).t().contiguous().t();
  REQUIRE(wt.stride(1) != 1);
  auto x = at::randn({4, 64}, g);
  REQUIRE(max_abs_diff(project(x, wt), at::linear(x, wt), "transposed weight") <= kTol);
}
