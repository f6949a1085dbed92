// RoPE against its closed form: dimension i pairs with i + D/2 and rotates by
// position * theta^(-2i/D). Positions are explicit floats: repeated and fractional.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/rope.h"
#include "catch_compat.h"
#include "tensor_compare.h"

using attnvar::Rope;
using attnvar::RopeParams;
using attnvar::testing::max_abs_diff;

namespace {

// Closed form in f64: x (T, D), positions (T) -> rotated (T, D).
at::Tensor closed_form(const at::Tensor& x, const std::vector<double>& positions, double theta,
                       const std::vector<double>& inv_freq) {
  const int64_t T = x.size(0), D = x.size(1), h = D / 2;
  auto xd = x.to(at::kDouble).contiguous();
  auto out = at::empty_like(xd);
  auto xa = xd.accessor<double, 2>();
  auto oa = out.accessor<double, 2>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < h; ++i) {
      const double angle = positions[t] * inv_freq[i];
      const double c = std::cos(angle), s = std::sin(angle);
      oa[t][i] = xa[t][i] * c - xa[t][i + h] * s;
      oa[t][i + h] = xa[t][i + h] * c + xa[t][i] * s;
    }
  }
  return out;
}

std::vector<double> default_inv_freq(int64_t D, double theta) {
  std::vector<double> f;
  for (int64_t i = 0; i < D / 2; ++i) f.push_back(std::pow(theta, -2.0 * i / D));
  return f;
}

at::Tensor positions_tensor(const std::vector<double>& p) {
  return at::tensor(p, at::TensorOptions().dtype(at::kDouble));
}

}  // namespace

TEST_CASE("rope inv_freq follows theta^(-2i/D)", "[rope]") {
  Rope rope(RopeParams{16, 10000.0, {}}, c10::kCPU);
  auto expected = at::tensor(default_inv_freq(16, 10000.0));
  REQUIRE(rope.inv_freq().scalar_type() == at::kFloat);
  REQUIRE(rope.inv_freq().size(0) == 8);
  CHECK(max_abs_diff(rope.inv_freq(), expected, "inv_freq vs closed form") < 1e-7);
}

TEST_CASE("rope at integer, repeated and fractional positions equals the closed form",
          "[rope]") {
  const int64_t D = 32;
  const double theta = 10000.0;
  // A parallel set shares position 5 (three tokens), then fractional positions as in
  // the `fractional` encoding, then a large position.
  const std::vector<double> positions = {0, 1, 2, 3, 4, 5, 5, 5, 5.5, 5.25, 6, 40.75, 200};
  at::manual_seed(0);
  auto x = at::randn({(int64_t)positions.size(), D});
  Rope rope(RopeParams{D, theta, {}}, c10::kCPU);
  auto out = rope.apply(x, rope.angles(positions_tensor(positions)));
  auto expected = closed_form(x, positions, theta, default_inv_freq(D, theta));
  CHECK(max_abs_diff(out, expected, "rope vs closed form (f32 vs f64)") < 1e-4);
  // Away from the large position the f32 error is much smaller.
  CHECK(max_abs_diff(out.narrow(0, 0, 11), expected.narrow(0, 0, 11), "positions <= 6") < 5e-6);
}

TEST_CASE("rope gives identical rotations to tokens sharing a position", "[rope]") {
  const int64_t D = 16;
  at::manual_seed(1);
  auto row = at::randn({1, D});
  auto x = row.repeat({3, 1});  // three identical tokens at one logical position
  Rope rope(RopeParams{D, 500000.0, {}}, c10::kCPU);
  auto shared = rope.apply(x, rope.angles(positions_tensor({7, 7, 7})));
  auto single = rope.apply(row, rope.angles(positions_tensor({7})));
  for (int i = 0; i < 3; ++i) CHECK(at::equal(shared[i], single[0]));
  // The slot order is irrelevant: the same token at the same position in another row.
  auto mixed = rope.apply(at::cat({at::randn({2, D}), row}), rope.angles(positions_tensor({1, 2, 7})));
  CHECK(at::equal(mixed[2], single[0]));
}

TEST_CASE("rope scores depend only on the difference of logical positions", "[rope]") {
  const int64_t D = 64;
  at::manual_seed(2);
  auto q = at::randn({1, D});
  auto k = at::randn({1, D});
  Rope rope(RopeParams{D, 10000.0, {}}, c10::kCPU);
  auto score = [&](double pq, double pk) {
    auto rq = rope.apply(q, rope.angles(positions_tensor({pq})));
    auto rk = rope.apply(k, rope.angles(positions_tensor({pk})));
    return (rq * rk).sum().item<double>();
  };
  const double base = score(9.0, 4.0);
  CHECK(std::abs(score(14.0, 9.0) - base) < 1e-4);
  CHECK(std::abs(score(9.5, 4.5) - base) < 1e-4);
  // A shared position: query at distance 0 from the key behaves like q.k unrotated.
  CHECK(std::abs(score(3.0, 3.0) - (q * k).sum().item<double>()) < 1e-4);
}

TEST_CASE("rope applies over leading (batch, head) dimensions", "[rope]") {
  const int64_t D = 8;
  at::manual_seed(3);
  auto x = at::randn({2, 3, 4, D});  // (B, H, T, D)
  Rope rope(RopeParams{D, 10000.0, {}}, c10::kCPU);
  auto angles = rope.angles(positions_tensor({0, 2, 2, 3.5}));
  auto out = rope.apply(x, angles);
  for (int b = 0; b < 2; ++b) {
    for (int h = 0; h < 3; ++h) {
      CHECK(at::equal(out[b][h], rope.apply(x[b][h], angles)));
    }
  }
}

TEST_CASE("rope's loop over (heads, T, D) f32 rows is bit-identical to the tensor form",
          "[rope]") {
  const int64_t D = 64, H = 9, T = 5;
  at::manual_seed(4);
  // As attention passes q: (T, H, D) columns of a wider projection, viewed as (H, T, D).
  auto qkv = at::randn({T, (H + 2) * D});
  auto x = qkv.narrow(1, 0, H * D).view({T, H, D}).transpose(0, 1);
  Rope rope(RopeParams{D, 10000.0, {}}, c10::kCPU);
  auto angles = rope.angles(positions_tensor({0, 13, 13, 13.5, 200}));
  auto looped = rope.apply(x, angles);                            // 3-D f32: the loop
  auto tensor_form = rope.apply(x.unsqueeze(0), angles).squeeze(0);  // 4-D: tensor ops
  REQUIRE(looped.sizes() == tensor_form.sizes());
  CHECK(at::equal(looped, tensor_form));
}

TEST_CASE("rope scaling: linear divides inv_freq, llama3 follows its band rule", "[rope]") {
  const int64_t D = 64;
  const double theta = 500000.0;
  attnvar::RopeScaling linear{attnvar::RopeScalingType::kLinear, 4.0};
  Rope lin(RopeParams{D, theta, linear}, c10::kCPU);
  auto base = default_inv_freq(D, theta);
  std::vector<double> lin_expected;
  for (double f : base) lin_expected.push_back(f / 4.0);
  CHECK(max_abs_diff(lin.inv_freq(), at::tensor(lin_expected), "linear inv_freq") < 1e-7);

  attnvar::RopeScaling l3{attnvar::RopeScalingType::kLlama3, 32.0, 1.0, 4.0, 8192};
  Rope llama3(RopeParams{D, theta, l3}, c10::kCPU);
  std::vector<double> expected;
  int low = 0, mid = 0, high = 0;
  for (double f : base) {
    const double wavelen = 2 * M_PI / f;
    const double low_wl = 8192 / 1.0, high_wl = 8192 / 4.0;
    if (wavelen < high_wl) {
      expected.push_back(f), ++high;
    } else if (wavelen > low_wl) {
      expected.push_back(f / 32.0), ++low;
    } else {
      const double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
      expected.push_back((1 - smooth) * f / 32.0 + smooth * f), ++mid;
    }
  }
  REQUIRE(low > 0);
  REQUIRE(mid > 0);
  REQUIRE(high > 0);  // all three bands exercised
  auto got = llama3.inv_freq().to(at::kDouble);
  auto rel = ((got - at::tensor(expected)).abs() / at::tensor(expected)).max().item<double>();
  INFO("llama3 inv_freq max relative diff " << rel);
  CHECK(rel < 1e-6);
}

TEST_CASE("rope rejects bad shapes and positions with ConfigError", "[rope]") {
  CHECK_THROWS_AS(Rope(RopeParams{7, 10000.0, {}}, c10::kCPU), attnvar::ConfigError);
  Rope rope(RopeParams{8, 10000.0, {}}, c10::kCPU);
  CHECK_THROWS_AS(rope.angles(at::zeros({2, 2})), attnvar::ConfigError);
  CHECK_THROWS_AS(rope.angles(positions_tensor({0, NAN})), attnvar::ConfigError);
  CHECK_THROWS_AS(rope.apply(at::zeros({3, 6}), rope.angles(positions_tensor({0, 1, 2}))),
                  attnvar::ConfigError);
  CHECK_THROWS_AS(rope.apply(at::zeros({2, 8}), rope.angles(positions_tensor({0, 1, 2}))),
                  attnvar::ConfigError);
}
