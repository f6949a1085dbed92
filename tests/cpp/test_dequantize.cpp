// ggml block decoding on hand-built blocks whose values follow from the layout by hand.
// (Bit-exactness against the gguf package on random blocks is in tests/python/test_gguf.py.)
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"
#include "catch_compat.h"

using attnvar::dequantize_row;
using attnvar::FormatError;
using attnvar::GgmlType;

namespace {

uint32_t num(GgmlType t) { return static_cast<uint32_t>(t); }

void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { std::memcpy(&b[at], &v, 2); }

constexpr uint16_t kHalfOne = 0x3C00;   // 1.0
constexpr uint16_t kHalfHalf = 0x3800;  // 0.5
constexpr uint16_t kHalfTwo = 0x4000;   // 2.0
constexpr uint16_t kHalfMinusOne = 0xBC00;

std::vector<float> decode(GgmlType t, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
  dequantize_row(num(t), bytes.data(), n, out.data());
  return out;
}

// Packs 8 six-bit scales and mins the Q4_K/Q5_K way: sub-blocks 0-3 in the low 6 bits of
// bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 split into a low nibble in bytes 8-11
// (scale low, min high) and 2 high bits in the top of bytes 0-3 (scale) and 4-7 (min).
std::vector<uint8_t> pack_k4_scales(const int sc[8], const int mn[8]) {
  std::vector<uint8_t> s(12, 0);
  for (int i = 0; i < 4; ++i) {
    s[i] = static_cast<uint8_t>(sc[i] | ((sc[i + 4] >> 4) << 6));
    s[i + 4] = static_cast<uint8_t>(mn[i] | ((mn[i + 4] >> 4) << 6));
    s[i + 8] = static_cast<uint8_t>((sc[i + 4] & 0xF) | ((mn[i + 4] & 0xF) << 4));
  }
  return s;
}

}  // namespace

TEST_CASE("dequantize: half and bfloat16 bit patterns decode exactly", "[dequantize]") {
  CHECK(attnvar::half_to_float(0x3C00) == 1.0f);
  CHECK(attnvar::half_to_float(0xC000) == -2.0f);
  CHECK(attnvar::half_to_float(0x7BFF) == 65504.0f);
  CHECK(attnvar::half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(attnvar::half_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(std::isinf(attnvar::half_to_float(0x7C00)));
  CHECK(std::isnan(attnvar::half_to_float(0x7E00)));
  CHECK(std::signbit(attnvar::half_to_float(0x8000)));
  CHECK(attnvar::bf16_to_float(0x3F80) == 1.0f);
  CHECK(attnvar::bf16_to_float(0xC0A0) == -5.0f);
}

TEST_CASE("dequantize: type table sizes", "[dequantize]") {
  CHECK(attnvar::ggml_type_name(num(GgmlType::Q4_1)) == "Q4_1");
  CHECK(attnvar::ggml_type_name(999) == "type999");
  CHECK(attnvar::ggml_block_size(num(GgmlType::Q6_K)) == 256);
  CHECK(attnvar::ggml_type_size(num(GgmlType::Q6_K)) == 210);
  CHECK(attnvar::ggml_type_size(num(GgmlType::Q5_1)) == 24);
  CHECK(attnvar::ggml_nbytes(num(GgmlType::Q8_0), 64) == 68);
  CHECK(attnvar::ggml_nbytes(num(GgmlType::BF16), 3) == 6);
  CHECK_THROWS_AS(attnvar::ggml_nbytes(num(GgmlType::Q8_0), 33), FormatError);
  CHECK_THROWS_AS(attnvar::ggml_block_size(999), FormatError);
  CHECK(attnvar::ggml_can_dequantize(num(GgmlType::Q5_K)));
  CHECK_FALSE(attnvar::ggml_can_dequantize(num(GgmlType::Q2_K)));
}

TEST_CASE("dequantize: F32, F16 and BF16 rows", "[dequantize]") {
  std::vector<uint8_t> f16(6);
  put_u16(f16, 0, kHalfOne);
  put_u16(f16, 2, kHalfMinusOne);
  put_u16(f16, 4, kHalfHalf);
  CHECK(decode(GgmlType::F16, f16, 3) == std::vector<float>{1.0f, -1.0f, 0.5f});
  std::vector<uint8_t> bf(4);
  put_u16(bf, 0, 0x4040);  // 3.0
  put_u16(bf, 2, 0xBF00);  // -0.5
  CHECK(decode(GgmlType::BF16, bf, 2) == std::vector<float>{3.0f, -0.5f});
  std::vector<float> f32 = {1.5f, -2.25f};
  std::vector<uint8_t> raw(8);
  std::memcpy(raw.data(), f32.data(), 8);
  CHECK(decode(GgmlType::F32, raw, 2) == f32);
}

TEST_CASE("dequantize: Q8_0 is d times a signed byte", "[dequantize]") {
  std::vector<uint8_t> b(34 * 2);
  for (int blk = 0; blk < 2; ++blk) {
    put_u16(b, 34 * blk, blk == 0 ? kHalfHalf : kHalfTwo);
    for (int j = 0; j < 32; ++j)
      b[34 * blk + 2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  }
  auto y = decode(GgmlType::Q8_0, b, 64);
  for (int j = 0; j < 32; ++j) {
    CHECK(y[j] == 0.5f * (j - 16));
    CHECK(y[32 + j] == 2.0f * (j - 16));
  }
}

TEST_CASE("dequantize: Q4_0 and Q4_1 put low nibbles first, high nibbles second", "[dequantize]") {
  std::vector<uint8_t> b0(18);
  put_u16(b0, 0, kHalfTwo);
  for (int j = 0; j < 16; ++j) b0[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  auto y0 = decode(GgmlType::Q4_0, b0, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(y0[j] == 2.0f * (j - 8));
    CHECK(y0[16 + j] == 2.0f * (15 - j - 8));
  }
  std::vector<uint8_t> b1(20);
  put_u16(b1, 0, kHalfHalf);
  put_u16(b1, 2, kHalfMinusOne);
  for (int j = 0; j < 16; ++j) b1[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  auto y1 = decode(GgmlType::Q4_1, b1, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(y1[j] == 0.5f * j - 1.0f);
    CHECK(y1[16 + j] == 0.5f * (15 - j) - 1.0f);
  }
}

TEST_CASE("dequantize: Q5_0 and Q5_1 take the fifth bit of element i from bit i of qh",
          "[dequantize]") {
  // Elements 1, 17 and 31 have the fifth bit set.
  const uint32_t qh = (1u << 1) | (1u << 17) | (1u << 31);
  std::vector<uint8_t> b0(22, 0);
  put_u16(b0, 0, kHalfOne);
  std::memcpy(&b0[2], &qh, 4);
  for (int j = 0; j < 16; ++j) b0[6 + j] = static_cast<uint8_t>(3 | (5 << 4));
  auto y0 = decode(GgmlType::Q5_0, b0, 32);
  for (int i = 0; i < 32; ++i) {
    const int low4 = i < 16 ? 3 : 5;
    const int bit = (i == 1 || i == 17 || i == 31) ? 16 : 0;
    CHECK(y0[i] == static_cast<float>(low4 + bit - 16));
  }
  std::vector<uint8_t> b1(24, 0);
  put_u16(b1, 0, kHalfHalf);
  put_u16(b1, 2, kHalfTwo);
  std::memcpy(&b1[4], &qh, 4);
  for (int j = 0; j < 16; ++j) b1[8 + j] = static_cast<uint8_t>(3 | (5 << 4));
  auto y1 = decode(GgmlType::Q5_1, b1, 32);
  for (int i = 0; i < 32; ++i) {
    const int low4 = i < 16 ? 3 : 5;
    const int bit = (i == 1 || i == 17 || i == 31) ? 16 : 0;
    CHECK(y1[i] == 0.5f * static_cast<float>(low4 + bit) + 2.0f);
  }
}

TEST_CASE("dequantize: Q4_K and Q5_K use 8 six-bit scales and mins per super-block",
          "[dequantize]") {
  // High scales/mins (>= 16) in sub-blocks 4-7 exercise the split 2+4 bit packing.
  const int sc[8] = {1, 2, 3, 63, 17, 33, 48, 62};
  const int mn[8] = {0, 5, 63, 7, 60, 16, 1, 40};
  const auto scales = pack_k4_scales(sc, mn);
  // q of element e: sub-block s = e / 32, l = e % 32; nibble value (l + s) % 16.
  auto nibble = [](int s, int l) { return (l + s) % 16; };

  std::vector<uint8_t> b4(144, 0);
  put_u16(b4, 0, kHalfHalf);  // d
  put_u16(b4, 2, kHalfTwo);   // dmin
  std::memcpy(&b4[4], scales.data(), 12);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      b4[16 + 32 * c + l] = static_cast<uint8_t>(nibble(2 * c, l) | (nibble(2 * c + 1, l) << 4));
    }
  }
  auto y4 = decode(GgmlType::Q4_K, b4, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    CHECK(y4[e] == (0.5f * sc[s]) * nibble(s, l) - 2.0f * mn[s]);
  }

  std::vector<uint8_t> b5(176, 0);
  put_u16(b5, 0, kHalfHalf);
  put_u16(b5, 2, kHalfTwo);
  std::memcpy(&b5[4], scales.data(), 12);
  // Fifth bit of element (s, l): bit s of qh[l]; set it when (l + 2 * s) % 3 == 0.
  auto high = [](int s, int l) { return (l + 2 * s) % 3 == 0 ? 1 : 0; };
  for (int l = 0; l < 32; ++l) {
    int byte = 0;
    for (int s = 0; s < 8; ++s) byte |= high(s, l) << s;
    b5[16 + l] = static_cast<uint8_t>(byte);
  }
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      b5[48 + 32 * c + l] = static_cast<uint8_t>(nibble(2 * c, l) | (nibble(2 * c + 1, l) << 4));
    }
  }
  auto y5 = decode(GgmlType::Q5_K, b5, 256);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    const int q = nibble(s, l) + 16 * high(s, l);
    CHECK(y5[e] == (0.5f * sc[s]) * q - 2.0f * mn[s]);
  }
}

TEST_CASE("dequantize: Q6_K combines 4 low and 2 high bits, one signed scale per 16",
          "[dequantize]") {
  // Element e = 128 h + 32 g + l (half h, group g of 4, l < 32): low 4 bits from
  // ql[64 h + 32 (g % 2) + l] (low nibble for g < 2, high nibble otherwise), high 2 bits
  // from qh[32 h + l] bits (2 g, 2 g + 1); scale index e / 16.
  auto q6 = [](int e) { return (e * 7 + 3) % 64; };  // unsigned 6-bit value
  std::vector<uint8_t> b(210, 0);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, g = (e % 128) / 32, l = e % 32;
    const int low = q6(e) & 0xF, hi = q6(e) >> 4;
    b[64 * h + 32 * (g % 2) + l] |= static_cast<uint8_t>(g < 2 ? low : low << 4);
    b[128 + 32 * h + l] |= static_cast<uint8_t>(hi << (2 * g));
  }
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) scales[i] = static_cast<int8_t>(i % 2 ? -(i + 1) : i + 1);
  std::memcpy(&b[192], scales, 16);
  put_u16(b, 208, kHalfHalf);
  auto y = decode(GgmlType::Q6_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    CHECK(y[e] == (0.5f * scales[e / 16]) * static_cast<float>(q6(e) - 32));
  }
}

TEST_CASE("dequantize: unsupported types and partial blocks are FormatErrors", "[dequantize]") {
  std::vector<uint8_t> b(512, 0);
  std::vector<float> y(256);
  try {
    dequantize_row(num(GgmlType::Q2_K), b.data(), 256, y.data());
    FAIL("Q2_K accepted");
  } catch (const FormatError& e) {
    CHECK(std::string(e.what()).find("Q2_K") != std::string::npos);
  }
  CHECK_THROWS_AS(dequantize_row(77, b.data(), 1, y.data()), FormatError);
  CHECK_THROWS_AS(dequantize_row(num(GgmlType::Q4_0), b.data(), 31, y.data()), FormatError);
}

// Found by fuzzing (tests/data/fuzz/regressions/gguf/found-empty_tensor_dequantize_null.gguf):
// an empty tensor's buffers may be null, and memcpy with a null pointer is undefined even
// for zero bytes (UBSan reports it in the sanitizer build).
TEST_CASE("dequantize: an empty tensor reads and writes nothing", "[dequantize]") {
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0,
                        GgmlType::Q6_K}) {
    CHECK_NOTHROW(dequantize_row(num(type), nullptr, 0, nullptr));
  }
}
