// Quantized weights (QuantizedMatrix, Linear): every supported ggml type, random valid blocks.
// The decoders against dequantize_row (bit for bit, every f16 scale pattern included), the
// F16C half conversion against half_to_float (all 65536 patterns), qgemv_rows against
// gemv_rows on the decoded matrix (bit for bit, 1..17 rows, every kernel: the AVX-512VL
// tiles, the AVX2 fallback, portable) and against at::matmul (printed), and
// project()/project_segments() on a quantized Linear against the same on its dense form.
#include <ATen/ATen.h>

#include <cmath>
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
// The types with 32-element blocks, which qgemv_rows multiplies in its fused tiles.
const std::vector<GgmlType> kTypes32 = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                                        GgmlType::Q5_1, GgmlType::Q8_0};
// kAuto (the AVX-512VL tiles where the CPU has it), the AVX2 fallback, portable.
const std::vector<GemvRowsKernel> kKernels = {GemvRowsKernel::kAuto, GemvRowsKernel::kAvx2,
                                              GemvRowsKernel::kPortable};

std::string kernel_name(GemvRowsKernel k) {
  return k == GemvRowsKernel::kAuto ? "auto" : k == GemvRowsKernel::kAvx2 ? "avx2" : "portable";
}

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

// qgemv_rows on stacked parts, x and y as given (their row strides).
void run_qgemv_into(const at::Tensor& x, const std::vector<QuantizedMatrix>& parts,
                    const at::Tensor& b, at::Tensor& y, GemvRowsKernel kernel) {
  attnvar::qgemv_rows(x.data_ptr<float>(), x.stride(0), x.size(0), parts,
                      b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                      y.stride(0), kernel);
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
    for (const auto kernel : kKernels) {
      INFO(kernel_name(kernel));
      auto got = at::empty({m.rows(), m.cols});
      attnvar::dequantize_rows(m, 0, m.rows(), got.data_ptr<float>(), kernel);
      REQUIRE(bitwise_equal(got, expected));
    }
    // Finite values of the size the scales allow (|scale| ≤ 0.05 times quants under 256).
    REQUIRE(expected.abs().max().item<double>() < 1000.0);
  }
}

TEST_CASE("qgemv_rows is gemv_rows on the decoded weights, bit for bit, 1..17 rows",
          "[quantized]") {
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
      for (const auto kernel : kKernels) {
        for (int64_t rows = 1; rows <= 17; ++rows) {
          auto x = at::randn({rows, cols}, g);
          INFO(name(type) << " out " << out << " cols " << cols << " rows " << rows << " "
                          << kernel_name(kernel));
          const auto got = run_qgemv(x, m, b, kernel);
          REQUIRE(bitwise_equal(got, run_gemv(x, dense, b, kernel)));
          REQUIRE(bitwise_equal(run_qgemv(x, m, {}, kernel), run_gemv(x, dense, {}, kernel)));
          worst = std::max(
              worst, (got - (at::matmul(x, dense.t()) + b)).abs().max().item<double>());
        }
      }
      std::cout << "[parity] qgemv_rows " << name(type) << " (" << out << " x " << cols
                << ") vs at::matmul on the decoded weights, rows 1..17: max |diff| = " << worst
                << "\n";
      CHECK(worst < 1e-3 * std::max(1.0, dense.abs().max().item<double>() * cols));
    }
  }
}

TEST_CASE("F16C half to float is half_to_float on all 65536 f16 patterns", "[quantized]") {
  std::vector<uint16_t> h(65536);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(i);
  std::vector<float> vec(h.size()), scalar(h.size());
  if (!attnvar::detail::half_to_float_f16c(h.data(), static_cast<int64_t>(h.size()), vec.data(),
                                           scalar.data())) {
    WARN("no F16C on this CPU: the AVX2 decoders are not used, nothing to compare");
    return;
  }
  const auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  int64_t nans = 0;
  for (size_t i = 0; i < h.size(); ++i) {
    const uint32_t want = bits(attnvar::half_to_float(h[i]));
    INFO("f16 0x" << std::hex << i);
    const bool nan = (i & 0x7C00) == 0x7C00 && (i & 0x3FF) != 0;
    if (nan) {
      // F16C quiets a signalling NaN (sets the top mantissa bit), half_to_float keeps it as
      // it is; both keep the sign and the payload. Every decoder multiplies or adds a scale
      // before it stores anything, which quiets it in either case (the next test).
      ++nans;
      REQUIRE(bits(vec[i]) == (want | 0x00400000u));
      REQUIRE(bits(scalar[i]) == (want | 0x00400000u));
    } else {
      REQUIRE(bits(vec[i]) == want);  // zeros, subnormals, normals, infinities: exact
      REQUIRE(bits(scalar[i]) == want);
    }
  }
  REQUIRE(nans == 2 * 1023);
}

TEST_CASE("quantized decoders give dequantize_row's floats for every f16 scale pattern",
          "[quantized]") {
  // Every f16 bit pattern as d (and as m / dmin, paired differently): zeros, subnormals,
  // infinities and NaNs included, through the AVX2 decoders (kAuto, kAvx2) and portable.
  std::mt19937 rng(13);
  for (GgmlType type : kTypes) {
    const auto t = static_cast<uint32_t>(type);
    const int64_t block = attnvar::ggml_block_size(t), bytes = attnvar::ggml_type_size(t);
    const std::vector<int> offsets = scale_offsets(type);
    const int64_t per_chunk = 4096;  // blocks per matrix: 65536 patterns in 16 matrices
    for (int64_t first = 0; first < 65536; first += per_chunk) {
      auto m = random_matrix(type, per_chunk, block, rng);  // one block per row
      uint8_t* p = m.blocks.data_ptr<uint8_t>();
      for (int64_t b = 0; b < per_chunk; ++b) {
        for (size_t k = 0; k < offsets.size(); ++k) {
          const auto h = static_cast<uint16_t>((first + b) * (k == 0 ? 1 : 40503) + 7 * k);
          std::memcpy(p + b * bytes + offsets[k], &h, 2);
        }
      }
      const auto expected = scalar_dequantize(m);
      for (const auto kernel : kKernels) {
        INFO(name(type) << " patterns from " << first << " " << kernel_name(kernel));
        auto got = at::empty({m.rows(), m.cols});
        attnvar::dequantize_rows(m, 0, m.rows(), got.data_ptr<float>(), kernel);
        REQUIRE(bitwise_equal(got, expected));
      }
    }
  }
}

TEST_CASE("the AVX-512VL tiles' decoders give dequantize_row's floats for every f16 scale "
          "pattern, 256- and 512-bit",
          "[quantized]") {
  // The fused tiles decode with their own decoders where one is faster (Q4_1 by table
  // lookup); the tile test below draws finite scales, so here every f16 pattern as d (and
  // as m, paired differently), as the decoders' previous test does for dequantize_rows.
  // The tiles are compiled for FMA, which may contract d·q + m: only a NaN's payload can
  // differ then (an infinite d times a zero quant plus a NaN m), so a NaN must stay a NaN.
  // The 512-bit decoder must give a chunk in both halves of its register alike.
  std::mt19937 rng(23);
  const auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  for (GgmlType type : kTypes32) {
    const auto t = static_cast<uint32_t>(type);
    const int64_t bytes = attnvar::ggml_type_size(t);
    const std::vector<int> offsets = scale_offsets(type);
    auto m = random_matrix(type, 65536, 32, rng);  // one block per row, one per pattern
    uint8_t* p = m.blocks.data_ptr<uint8_t>();
    for (int64_t b = 0; b < 65536; ++b) {
      for (size_t k = 0; k < offsets.size(); ++k) {
        const auto h = static_cast<uint16_t>(b * (k == 0 ? 1 : 40503) + 7 * k);
        std::memcpy(p + b * bytes + offsets[k], &h, 2);
      }
    }
    const auto expected = scalar_dequantize(m);
    const float* want = expected.const_data_ptr<float>();
    for (const bool wide : {false, true}) {
      std::vector<float> got(65536 * 32);
      if (!attnvar::detail::decode_blocks_avx512(t, p, 65536, wide, got.data())) {
        WARN("no AVX-512VL here: its tiles' decoders do not run, nothing to compare");
        return;
      }
      int64_t differ = 0, nan_payloads = 0, halves_apart = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        halves_apart += bits(got[i]) == 0xFFC007FFu;
        if (std::isnan(want[i]) && std::isnan(got[i])) {
          nan_payloads += bits(want[i]) != bits(got[i]);
        } else {
          differ += bits(want[i]) != bits(got[i]);
        }
      }
      std::cout << "[quantized] " << name(type) << (wide ? " 512-bit" : " 256-bit")
                << " tile decoder, every f16 scale: " << differ << " floats differ, "
                << nan_payloads << " NaN payloads differ, " << halves_apart
                << " chunks' halves apart\n";
      INFO(name(type) << (wide ? " 512-bit" : " 256-bit"));
      REQUIRE(differ == 0);
      REQUIRE(halves_apart == 0);
    }
  }
}

TEST_CASE("qgemv_rows' fused tiles equal gemv_rows bit for bit: every 32-element type, "
          "1..17 rows, partial tiles, strided rows, AVX-512VL and AVX2",
          "[quantized]") {
  std::cout << "[quantized] qgemv_rows kernel here: " << attnvar::qgemv_rows_auto_kernel()
            << "\n";
  if (std::string(attnvar::qgemv_rows_auto_kernel()) != "avx512vl") {
    WARN("no AVX-512VL here: kAuto runs the AVX2 tiles, as kAvx2 does");
  }
  std::mt19937 rng(17);
  auto g = at::make_generator<at::CPUGeneratorImpl>(5);
  for (GgmlType type : kTypes32) {
    // 1, 18 (the model's 576 columns) and 48 blocks (1536: the down projection, where the
    // AVX2 tiles group rows by four); 1, 7, 13 and 37 weight rows, none a multiple of the
    // tiles' 2, 4 or 8 (nor of qgemv_rows' 8-row steps), so every narrower tile runs too.
    // 1..17 rows: one group and two, of every size.
    for (const int64_t cols : {32, 576, 1536}) {
      for (const int64_t out : {1, 7, 13, 37}) {
        auto m = random_matrix(type, out, cols, rng);
        const auto dense = scalar_dequantize(m);
        auto b = at::randn({out}, g);
        for (int64_t rows = 1; rows <= 17; ++rows) {
          // x and y with row strides past their widths (x rows are packed for the tiles).
          auto x = at::randn({rows, cols + 8}, g).narrow(1, 0, cols);
          const auto x_dense = x.contiguous();
          const auto want = run_gemv(x_dense, dense, b, GemvRowsKernel::kAuto);
          const auto want_portable = run_gemv(x_dense, dense, b, GemvRowsKernel::kPortable);
          for (const auto kernel : kKernels) {
            INFO(name(type) << " cols " << cols << " out " << out << " rows " << rows << " "
                            << kernel_name(kernel));
            auto y = at::full({rows, out + 5}, 7.0f).narrow(1, 0, out);
            run_qgemv_into(x, {m}, b, y, kernel);
            REQUIRE(bitwise_equal(y, kernel == GemvRowsKernel::kPortable ? want_portable : want));
            // Nothing written past the outputs.
            REQUIRE(at::equal(y.as_strided({rows, 5}, {out + 5, 1}, out),
                              at::full({rows, 5}, 7.0f)));
          }
        }
      }
    }
  }
}

TEST_CASE("qgemv_rows gives each row what a call with that row alone gives, mixed parts",
          "[quantized]") {
  // Batched generation stacks sequences' rows into one call; each row's outputs must be
  // its solo call's, bit for bit, whatever the rows around it. Four parts of four types, a
  // K type among them (decoded into the buffer), as a fused q/k/v stacks its weights.
  std::mt19937 rng(19);
  auto g = at::make_generator<at::CPUGeneratorImpl>(6);
  const int64_t cols = 512;
  const std::vector<QuantizedMatrix> parts = {random_matrix(GgmlType::Q4_1, 21, cols, rng),
                                              random_matrix(GgmlType::Q8_0, 11, cols, rng),
                                              random_matrix(GgmlType::Q4_K, 9, cols, rng),
                                              random_matrix(GgmlType::Q5_0, 5, cols, rng)};
  const int64_t out = 21 + 11 + 9 + 5;
  auto b = at::randn({out}, g);
  auto x = at::randn({17, cols}, g);
  for (const auto kernel : kKernels) {
    std::vector<at::Tensor> solo;
    for (int64_t r = 0; r < 17; ++r) {
      auto y = at::empty({1, out});
      run_qgemv_into(x.narrow(0, r, 1), parts, b, y, kernel);
      solo.push_back(y);
    }
    for (int64_t rows = 1; rows <= 17; ++rows) {
      INFO(kernel_name(kernel) << " rows " << rows);
      auto y = at::empty({rows, out});
      run_qgemv_into(x.narrow(0, 0, rows), parts, b, y, kernel);
      const std::vector<at::Tensor> first(solo.begin(), solo.begin() + rows);
      REQUIRE(bitwise_equal(y, at::cat(first)));
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
