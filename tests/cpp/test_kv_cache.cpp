// KV cache: geometric growth keeps contents, truncate, remove with compaction, errors.
#include <ATen/ATen.h>

#include "attnvar/error.h"
#include "attnvar/model/kv_cache.h"
#include "catch_compat.h"

using namespace attnvar;

namespace {
// Appends T slots whose keys/values encode (layer, slot) so rows can be traced.
void append_tagged(KVCache& cache, int64_t t) {
  cache.reserve(t);
  const int64_t first = cache.size();
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    auto slots = at::arange(first, first + t, at::kFloat).view({1, t, 1});
    auto k = (slots + 1000.0 * l).expand({cache.num_kv_heads(), t, cache.head_dim()}).contiguous();
    cache.write_pending(l, k, -k);
  }
  std::vector<SlotInfo> info;
  for (int64_t i = 0; i < t; ++i) info.push_back(SlotInfo{0.5 * (first + i), 0, i, first + i});
  cache.append(info);
}

float key_tag(const KVCache& c, int64_t layer, int64_t slot) {
  return c.keys(layer, c.size())[0][slot][0].item<float>();
}
}  // namespace

TEST_CASE("kv cache grows geometrically and keeps what it held", "[kv_cache]") {
  KVCache cache(3, 2, 4, at::TensorOptions().dtype(at::kFloat), 2);
  append_tagged(cache, 2);
  CHECK(cache.capacity() == 2);
  append_tagged(cache, 3);  // needs 5: 2 -> 4 -> 8
  CHECK(cache.capacity() == 8);
  append_tagged(cache, 1);
  CHECK(cache.capacity() == 8);  // no reallocation while it fits
  REQUIRE(cache.size() == 6);
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t s = 0; s < 6; ++s) {
      CHECK(key_tag(cache, l, s) == s + 1000.0f * l);
      CHECK(cache.values(l, 6)[1][s][3].item<float>() == -(s + 1000.0f * l));
    }
  }
  CHECK(cache.slots()[4].token_id == 4);
  CHECK(cache.positions()[5].item<double>() == 2.5);
}

TEST_CASE("kv cache truncate keeps a prefix; remove_slots compacts in order", "[kv_cache]") {
  KVCache cache(2, 2, 4, at::TensorOptions().dtype(at::kFloat), 4);
  append_tagged(cache, 7);
  cache.remove_slots({5, 1, 2});
  REQUIRE(cache.size() == 4);
  const std::vector<int64_t> kept = {0, 3, 4, 6};
  for (int64_t l = 0; l < 2; ++l) {
    for (size_t i = 0; i < kept.size(); ++i) {
      CHECK(key_tag(cache, l, i) == kept[i] + 1000.0f * l);
      CHECK(cache.slots()[i].token_id == kept[i]);
    }
  }
  cache.truncate(2);
  CHECK(cache.size() == 2);
  CHECK(cache.slots()[1].token_id == 3);
  append_tagged(cache, 1);  // new slot lands right after the prefix
  CHECK(key_tag(cache, 1, 2) == 2 + 1000.0f);
}

TEST_CASE("kv cache copy_prefix_from copies a prefix into an empty cache, or refuses",
          "[kv_cache]") {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  KVCache source(2, 2, 4, f32, 8);
  append_tagged(source, 6);
  KVCache copy(2, 2, 4, f32, 1);  // grows to hold the prefix
  copy.copy_prefix_from(source, 4);
  REQUIRE(copy.size() == 4);
  for (int64_t l = 0; l < 2; ++l) {
    CHECK(at::equal(copy.keys(l, 4), source.keys(l, 4)));
    CHECK(at::equal(copy.values(l, 4), source.values(l, 4)));
  }
  CHECK(copy.slots()[3].token_id == 3);
  CHECK(copy.positions()[3].item<double>() == 1.5);
  append_tagged(copy, 1);  // goes on after the copied prefix; the source is untouched
  CHECK(key_tag(copy, 0, 4) == 4.0f);
  CHECK(source.size() == 6);
  CHECK_THROWS_AS(copy.copy_prefix_from(source, 2), Error);  // not empty
  KVCache other_shape(2, 1, 4, f32, 8);
  CHECK_THROWS_AS(other_shape.copy_prefix_from(source, 2), Error);
  KVCache empty(2, 2, 4, f32, 8);
  CHECK_THROWS_AS(empty.copy_prefix_from(source, 7), ConfigError);  // beyond its slots
  CHECK(empty.size() == 0);
}

TEST_CASE("kv cache rejects bad slots and writes beyond its reservation", "[kv_cache]") {
  KVCache cache(1, 1, 4, at::TensorOptions().dtype(at::kFloat), 2);
  append_tagged(cache, 2);
  CHECK_THROWS_AS(cache.truncate(3), ConfigError);
  CHECK_THROWS_AS(cache.truncate(-1), ConfigError);
  CHECK_THROWS_AS(cache.remove_slots({2}), ConfigError);
  CHECK_THROWS_AS(cache.remove_slots({0, 0}), ConfigError);
  CHECK_THROWS_AS(cache.write_pending(0, at::zeros({1, 1, 4}), at::zeros({1, 1, 4})), Error);
  cache.reserve(1);
  CHECK_THROWS_AS(cache.write_pending(0, at::zeros({2, 1, 4}), at::zeros({2, 1, 4})), Error);
  CHECK_THROWS_AS(cache.write_pending(0, at::zeros({1, 1, 3}), at::zeros({1, 1, 3})), Error);
  CHECK_THROWS_AS(KVCache(0, 1, 4, at::TensorOptions()), ConfigError);
  CHECK(cache.size() == 2);
}

TEST_CASE("kv cache refuses an initial capacity outside [0, kMaxCacheSlots]", "[kv_cache]") {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  CHECK_THROWS_AS(attnvar::KVCache(2, 1, 4, opts, attnvar::kMaxCacheSlots + 1),
                  attnvar::ConfigError);
  CHECK_THROWS_AS(attnvar::KVCache(2, 1, 4, opts, -1), attnvar::ConfigError);
  CHECK(attnvar::KVCache(2, 1, 4, opts, 0).capacity() >= 1);
}
