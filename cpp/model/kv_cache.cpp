#include "attnvar/model/kv_cache.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "attnvar/error.h"

namespace attnvar {

KVCache::KVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                 at::TensorOptions options, int64_t initial_capacity)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      capacity_(std::max<int64_t>(initial_capacity, 1)) {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
    throw ConfigError(fmt::format("kv_cache: bad shape (layers {}, kv heads {}, head_dim {})",
                                  num_layers, num_kv_heads, head_dim));
  }
  // The initial capacity is a request, not a header value, but a typo (2**40) must not
  // become a multi-terabyte allocation error from the allocator: refuse it by name.
  if (initial_capacity < 0 || initial_capacity > kMaxCacheSlots) {
    throw ConfigError(fmt::format("kv_cache: initial_capacity must be in [0, {}] slots, got {}",
                                  kMaxCacheSlots, initial_capacity));
  }
  keys_ = at::zeros({num_layers_, num_kv_heads_, capacity_, head_dim_}, options);
  values_ = at::zeros_like(keys_);
}

at::Tensor KVCache::positions() const {
  std::vector<double> p;
  p.reserve(slots_.size());
  for (const auto& s : slots_) p.push_back(s.position);
  return at::tensor(p, at::TensorOptions().dtype(at::kDouble));
}

void KVCache::reserve(int64_t n) {
  const int64_t needed = size() + n;
  if (needed <= capacity_) return;
  int64_t new_capacity = capacity_;
  while (new_capacity < needed) new_capacity *= 2;
  auto grow = [&](const at::Tensor& old) {
    auto fresh = at::zeros({num_layers_, num_kv_heads_, new_capacity, head_dim_}, old.options());
    fresh.narrow(2, 0, capacity_).copy_(old);
    return fresh;
  };
  keys_ = grow(keys_);
  values_ = grow(values_);
  capacity_ = new_capacity;
}

void KVCache::write_pending(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.dim() == 3 ? k.size(1) : -1;
  if (t < 0 || k.size(0) != num_kv_heads_ || k.size(2) != head_dim_ || v.sizes() != k.sizes()) {
    throw Error(fmt::format("kv_cache: k and v must be (num_kv_heads={}, T, head_dim={}), got {} "
                            "and {}",
                            num_kv_heads_, head_dim_, c10::str(k.sizes()), c10::str(v.sizes())));
  }
  if (layer < 0 || layer >= num_layers_ || size() + t > capacity_) {
    throw Error(fmt::format("kv_cache: write of {} slots at layer {} exceeds capacity {} "
                            "(size {}); call reserve first",
                            t, layer, capacity_, size()));
  }
  keys_[layer].narrow(1, size(), t).copy_(k);
  values_[layer].narrow(1, size(), t).copy_(v);
}

at::Tensor KVCache::keys(int64_t layer, int64_t n) const { return keys_[layer].narrow(1, 0, n); }

at::Tensor KVCache::values(int64_t layer, int64_t n) const {
  return values_[layer].narrow(1, 0, n);
}

void KVCache::append(const std::vector<SlotInfo>& new_slots) {
  if (size() + static_cast<int64_t>(new_slots.size()) > capacity_) {
    throw Error("kv_cache: append beyond the reserved capacity");
  }
  slots_.insert(slots_.end(), new_slots.begin(), new_slots.end());
}

void KVCache::check_slot_range(int64_t n, const char* what) const {
  if (n < 0 || n > size()) {
    throw ConfigError(fmt::format("kv_cache: {} {} is outside [0, {}]", what, n, size()));
  }
}

void KVCache::truncate(int64_t n) {
  check_slot_range(n, "truncate to");
  slots_.resize(n);
}

void KVCache::copy_prefix_from(const KVCache& other, int64_t n) {
  if (size() != 0 || other.num_layers_ != num_layers_ || other.num_kv_heads_ != num_kv_heads_ ||
      other.head_dim_ != head_dim_ || other.keys_.scalar_type() != keys_.scalar_type() ||
      other.keys_.device() != keys_.device()) {
    throw Error("kv_cache: copy_prefix_from needs an empty cache of the source's shape");
  }
  other.check_slot_range(n, "copy of the first");
  reserve(n);
  keys_.narrow(2, 0, n).copy_(other.keys_.narrow(2, 0, n));
  values_.narrow(2, 0, n).copy_(other.values_.narrow(2, 0, n));
  slots_.assign(other.slots_.begin(), other.slots_.begin() + n);
}

void KVCache::remove_slots(std::vector<int64_t> slots) {
  std::sort(slots.begin(), slots.end());
  if (std::adjacent_find(slots.begin(), slots.end()) != slots.end()) {
    throw ConfigError("kv_cache: remove_slots got a slot twice");
  }
  for (int64_t s : slots) {
    if (s < 0 || s >= size()) {
      throw ConfigError(fmt::format("kv_cache: cannot remove slot {} (size {})", s, size()));
    }
  }
  if (slots.empty()) return;
  std::vector<int64_t> keep;
  std::vector<SlotInfo> kept_info;
  keep.reserve(size() - slots.size());
  for (int64_t i = 0, j = 0; i < size(); ++i) {
    if (j < static_cast<int64_t>(slots.size()) && slots[j] == i) {
      ++j;
      continue;
    }
    keep.push_back(i);
    kept_info.push_back(slots_[i]);
  }
  const int64_t n = static_cast<int64_t>(keep.size());
  auto index = at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(keys_.device());
  // index_select copies, so overlapping source and destination rows are safe.
  keys_.narrow(2, 0, n).copy_(keys_.narrow(2, 0, size()).index_select(2, index));
  values_.narrow(2, 0, n).copy_(values_.narrow(2, 0, size()).index_select(2, index));
  slots_ = std::move(kept_info);
}

}  // namespace attnvar
