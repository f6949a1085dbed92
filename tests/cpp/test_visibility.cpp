// Visibility matrices for prompts and parallel sets.
#include <ATen/ATen.h>

#include "attnvar/error.h"
#include "attnvar/model/visibility.h"
#include "catch_compat.h"

using namespace attnvar;

TEST_CASE("causal visibility sees every earlier slot and is causal among new tokens",
          "[visibility]") {
  auto v = causal_visibility(3, 2);
  REQUIRE(v.sizes() == at::IntArrayRef({3, 5}));
  auto expected = at::tensor({1, 1, 1, 0, 0,  //
                              1, 1, 1, 1, 0,  //
                              1, 1, 1, 1, 1})
                      .view({3, 5})
                      .to(at::kBool);
  CHECK(at::equal(v, expected));
}

TEST_CASE("set visibility: isolated, visible and causal siblings", "[visibility]") {
  auto prev = at::ones({3, 4}, at::TensorOptions().dtype(at::kBool));
  auto iso = set_visibility(3, 4, SiblingVisibility::kIsolated);
  auto vis = set_visibility(3, 4, SiblingVisibility::kVisible);
  auto cau = set_visibility(3, 4, SiblingVisibility::kCausal);
  for (const auto& v : {iso, vis, cau}) {
    REQUIRE(v.sizes() == at::IntArrayRef({3, 7}));
    CHECK(at::equal(v.narrow(1, 0, 4), prev));  // every earlier slot, whatever the mode
  }
  CHECK(at::equal(iso.narrow(1, 4, 3), at::eye(3).to(at::kBool)));
  CHECK(vis.narrow(1, 4, 3).all().item<bool>());
  CHECK(at::equal(cau.narrow(1, 4, 3), at::ones({3, 3}).tril().to(at::kBool)));
  CHECK(sibling_visibility_from_string("visible") == SiblingVisibility::kVisible);
  CHECK_THROWS_AS(sibling_visibility_from_string("open"), ConfigError);
}

TEST_CASE("negative slot counts are a ConfigError, not a torch shape error", "[visibility]") {
  CHECK_THROWS_AS(attnvar::causal_visibility(-5, 0), attnvar::ConfigError);
  CHECK_THROWS_AS(attnvar::causal_visibility(3, -2), attnvar::ConfigError);
  CHECK_THROWS_AS(attnvar::set_visibility(-1, 3, attnvar::SiblingVisibility::kIsolated),
                  attnvar::ConfigError);
  CHECK(attnvar::causal_visibility(0, 4).size(0) == 0);
}
