// Quantized weights (QuantizedMatrix, Linear): every supported ggml type, random valid blocks.
// The decoders against dequantize_row (bit for bit), qgemv_rows against gemv_rows on the
// decoded matrix (bit for bit, 1..16 rows, both kernels) and against at::matmul (printed),
// and project()/project_segments() on a quantized Linear against the same on its dense
// form.
#include <ATen/ATen.h>

#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"
#include "attnvar/model/linear.h"
#include "attnvar/model/projection.h"
#include "attnvar/model/quantized_matrix.h"
#include "catch_compat.h"

using attnvar::GemvRowsKernel;
using attnvar::GgmlType;
using attnvar::Linear;
using attnvar::QuantizedMatrix;

namespace {

const std::vector<GgmlType> kTypes = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                                      GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4_K,
                                      GgmlType::Q5_K, GgmlType::Q6_K};

uint16_t half_bits(float f) {
  // Round-to-nearest f32 -> f16 for the finite, normal values used here.
  return at::Half(f).x;
}

// Byte offsets of a block's f16 scales (d, and m / dmin where the type has one).
std::vector<int> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      return {0, 2};
    case GgmlType::Q6_K:
      return {208};
    default:
      return {0};
  }
}

// Random bytes for every quant, finite random scales of a size that keeps values O(1).
QuantizedMatrix random_matrix(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const auto t = static_cast<uint32_t>(type);
  const int64_t block = attnvar::ggml_block_size(t), bytes = attnvar::ggml_type_size(t);
  const int64_t row_bytes = static_cast<int64_t>(attnvar::ggml_nbytes(t, cols));
  auto blocks = at::empty({rows, row_bytes}, at::kByte);
  uint8_t* p = blocks.data_ptr<uint8_t>();
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (int64_t i = 0; i < blocks.numel(); ++i) p[i] = static_cast<uint8_t>(byte(rng));
  for (int64_t b = 0; b < rows * (cols / block); ++b) {
    for (int off : scale_offsets(type)) {
      const uint16_t h = half_bits(scale(rng));
      std::memcpy(p + b * bytes + off, &h, 2);
    }
  }
  return {blocks, t, cols};
}

at::Tensor scalar_dequantize(const QuantizedMatrix& m) {
  auto out = at::empty({m.rows(), m.cols}, at::kFloat);
  for (int64_t r = 0; r < m.rows(); ++r) {
    attnvar::dequantize_row(m.type, m.blocks.data_ptr<uint8_t>() + r * m.row_bytes(), m.cols,
                            out.data_ptr<float>() + r * m.cols);
  }
  return out;
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr<float>(), b.contiguous().data_ptr<float>(),
                     a.numel() * sizeof(float)) == 0;
}

at::Tensor run_qgemv(const at::Tensor& x, const QuantizedMatrix& m, const at::Tensor& b,
                     GemvRowsKernel kernel) {
  auto y = at::empty({x.size(0), m.rows()});
  attnvar::qgemv_rows(x.data_ptr<float>(), x.stride(0), x.size(0), m,
                      b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                      y.stride(0), kernel);
  return y;
}

at::Tensor run_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                    GemvRowsKernel kernel) {
  auto y = at::empty({x.size(0), w.size(0)});
  attnvar::gemv_rows(x.data_ptr<float>(), x.stride(0), x.size(0), w.data_ptr<float>(),
                     w.stride(0), w.size(0), w.size(1), b.defined() ? b.data_ptr<float>() : nullptr,
                     y.data_ptr<float>(), y.stride(0), kernel);
  return y;
}

std::string name(GgmlType t) { return attnvar::ggml_type_name(static_cast<uint32_t>(t)); }

}  // namespace

TEST_CASE("quantized decoders give dequantize_row's floats bit for bit", "[quantized]") {
  std::mt19937 rng(5);
  for (GgmlType type : kTypes) {
    const int64_t cols = attnvar::ggml_block_size(static_cast<uint32_t>(type)) * 3;
    auto m = random_matrix(type, 7, cols, rng);
    INFO(name(type));
    REQUIRE(attnvar::ggml_type_projectable(static_cast<uint32_t>(type)));
    const auto expected = scalar_dequantize(m);
    REQUIRE(bitwise_equal(attnvar::dequantize(m), expected));
    auto portable = at::empty({m.rows(), m.cols});
    attnvar::dequantize_rows(m, 0, m.rows(), portable.data_ptr<float>(),
                             GemvRowsKernel::kPortable);
    REQUIRE(bitwise_equal(portable, expected));
    // Finite values of the size the scales allow (|scale| ≤ 0.05 times quants under 256).
    REQUIRE(expected.abs().max().item<double>() < 1000.0);
  }
}

TEST_CASE("qgemv_rows is gemv_rows on the decoded weights, bit for bit, 1..16 rows", "[quantized]") {
  std::mt19937 rng(7);
  auto g = at::make_generator<at::CPUGeneratorImpl>(3);
  for (GgmlType type : kTypes) {
    const int64_t block = attnvar::ggml_block_size(static_cast<uint32_t>(type));
    // Output counts that leave partial tiles of every size; widths of 1..several blocks
    // (9 K-type super-blocks: rows longer than 2048, where the tiles change).
    for (const auto& [out, cols] : std::vector<std::pair<int64_t, int64_t>>{
             {1, block}, {13, 2 * block}, {37, 5 * block}, {11, 9 * block}}) {
      auto m = random_matrix(type, out, cols, rng);
      const auto dense = scalar_dequantize(m);
      auto b = at::randn({out}, g);
      double worst = 0;
      for (const auto kernel : {GemvRowsKernel::kAuto, GemvRowsKernel::kPortable}) {
        for (int64_t rows = 1; rows <= 16; ++rows) {
          auto x = at::randn({rows, cols}, g);
          INFO(name(type) << " out " << out << " cols " << cols << " rows " << rows);
          const auto got = run_qgemv(x, m, b, kernel);
          REQUIRE(bitwise_equal(got, run_gemv(x, dense, b, kernel)));
          REQUIRE(bitwise_equal(run_qgemv(x, m, {}, kernel), run_gemv(x, dense, {}, kernel)));
          worst = std::max(
              worst, (got - (at::matmul(x, dense.t()) + b)).abs().max().item<double>());
        }
      }
      std::cout << "[parity] qgemv_rows " << name(type) << " (" << out << " x " << cols
                << ") vs at::matmul on the decoded weights, rows 1..16: max |diff| = " << worst
                << "\n";
      CHECK(worst < 1e-3 * std::max(1.0, dense.abs().max().item<double>() * cols));
    }
  }
}

TEST_CASE("project on a quantized Linear equals project on its dense form, any row count",
          "[quantized]") {
  std::mt19937 rng(9);
  auto g = at::make_generator<at::CPUGeneratorImpl>(4);
  // A fused weight of three types (q, k, v in different types, as Q4_K_M files mix them).
  const int64_t cols = 256;
  Linear q(random_matrix(GgmlType::Q4_K, 24, cols, rng));
  Linear k(random_matrix(GgmlType::Q4_K, 8, cols, rng));
  Linear v(random_matrix(GgmlType::Q6_K, 8, cols, rng));
  Linear fused = Linear::cat_rows({q, k, v});
  REQUIRE(fused.quantized());
  REQUIRE(fused.parts().size() == 3);  // one part per matrix, each in its own type
  REQUIRE(fused.out_features() == 40);
  const auto dense = fused.to_dense();
  REQUIRE(bitwise_equal(fused.narrow_rows(20, 12).to_dense(), dense.narrow(0, 20, 12)));
  auto bias = at::randn({40}, g);
  for (int64_t rows : {1, 4, 16, 17, 40}) {
    auto x = at::randn({rows, cols}, g);
    INFO("rows " << rows);
    REQUIRE(bitwise_equal(attnvar::project(x, fused, bias), attnvar::project(x, dense, bias)));
  }
  // Several sequences in one call: each row as in its own sequence's call.
  auto x = at::randn({3 + 20 + 1, cols}, g);
  const std::vector<int64_t> rows = {3, 20, 1};
  REQUIRE(bitwise_equal(attnvar::project_segments(x, rows, fused, bias),
                        attnvar::project_segments(x, rows, dense, bias)));
  // Embedding rows decode only what they read.
  auto ids = at::tensor(std::vector<int64_t>{39, 0, 24, 24}, at::kLong);
  REQUIRE(bitwise_equal(fused.gather_rows(ids), dense.index_select(0, ids)));
  REQUIRE(fused.nbytes() == 32 * 144 + 8 * 210);
}

TEST_CASE("check_quantized names what is wrong", "[quantized]") {
  const auto message = [](const QuantizedMatrix& m, const char* what) -> std::string {
    try {
      attnvar::check_quantized(m, what);
    } catch (const attnvar::FormatError& e) {
      return e.what();
    }
    return "no error";
  };
  QuantizedMatrix bad{at::zeros({2, 10}, at::kByte), static_cast<uint32_t>(GgmlType::Q8_0), 32};
  const std::string m1 = message(bad, "blk.0.attn_q.weight");
  CHECK(m1.find("blk.0.attn_q.weight") != std::string::npos);
  CHECK(m1.find("(rows, 34)") != std::string::npos);
  QuantizedMatrix f16{at::zeros({2, 64}, at::kByte), static_cast<uint32_t>(GgmlType::F16), 32};
  CHECK(message(f16, "w").find("F16 cannot stay quantized") != std::string::npos);
}
