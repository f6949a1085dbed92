// The KV cache: keys and values of every fed token, indexed by *slot*.
//
// A slot is a token's row in the cache (physical order: prompt, then each step's fed
// members). Its logical (RoPE) position is metadata, kept separately: several slots may
// share a position and positions may be fractional. Storage is preallocated for all
// layers and grows geometrically, so appending k tokens never reallocates per step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace attnvar {

// Metadata of one slot. step = -1 marks a prompt slot; rank is the member's rank in its
// set (0 for prompt slots); token_id is what was fed.
struct SlotInfo {
  double position = 0.0;
  int64_t step = -1;
  int64_t rank = 0;
  int64_t token_id = -1;
};

// The largest initial capacity a cache accepts (16 M slots, far past any model's context);
// the cache still grows beyond its initial capacity as slots are appended.
inline constexpr int64_t kMaxCacheSlots = int64_t{1} << 24;

class KVCache {
 public:
  // keys/values: (num_layers, num_kv_heads, capacity, head_dim) in `options`.
  KVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::TensorOptions options,
          int64_t initial_capacity = 256);

  int64_t num_layers() const { return num_layers_; }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t size() const { return static_cast<int64_t>(slots_.size()); }  // slots in use
  int64_t capacity() const { return capacity_; }
  const std::vector<SlotInfo>& slots() const { return slots_; }
  // (size,) f64 logical positions of the slots in use.
  at::Tensor positions() const;

  // Makes room for `n` slots beyond size(): capacity at least doubles when it grows.
  void reserve(int64_t n);

  // Writes one layer's k, v (num_kv_heads, T, head_dim) into slots [size, size + T).
  // reserve(T) must have been called; the slots become visible after append().
  void write_pending(int64_t layer, const at::Tensor& k, const at::Tensor& v);

  // Keys and values of slots [0, n): (num_kv_heads, n, head_dim) views, no copy.
  at::Tensor keys(int64_t layer, int64_t n) const;
  at::Tensor values(int64_t layer, int64_t n) const;

  // Commits the T pending slots written by write_pending (their metadata, in order).
  void append(const std::vector<SlotInfo>& new_slots);

  // Keeps slots [0, n).
  void truncate(int64_t n);

  // Copies slots [0, n) of `other` (keys, values and metadata) into this cache, which must
  // be empty and of the same shape: the cache a pass over those slots would leave.
  void copy_prefix_from(const KVCache& other, int64_t n);

  // Deletes the given slots (any order, no duplicates) and compacts the rest, keeping
  // their order. The remaining rows are unchanged: they are NOT recomputed, so a row
  // that attended to a removed slot keeps that influence.
  void remove_slots(std::vector<int64_t> slots);

 private:
  void check_slot_range(int64_t n, const char* what) const;

  int64_t num_layers_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  int64_t capacity_;
  at::Tensor keys_;    // (num_layers, num_kv_heads, capacity, head_dim)
  at::Tensor values_;  // (num_layers, num_kv_heads, capacity, head_dim)
  std::vector<SlotInfo> slots_;
};

}  // namespace attnvar
