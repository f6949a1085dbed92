// Interventions at hook points (attnvar/capture/hook_points.h), declared as data and
// executed inside the forward pass (docs/engine.md, "Interventions at hook points").
//
// Three verbs cover the user-facing kinds: zero-ablation (kZero), mean-ablation and
// activation patching (kSet: the slot's value is replaced by `value`), steering (kAdd).
// `value` is either one slot's shape (the same for every selected slot: a mean, a steering
// vector) or [N, slot shape...] indexed by slot (values from another run, slot by slot).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "attnvar/capture/hook_points.h"

namespace attnvar {

enum class EditKind { kZero, kSet, kAdd };

struct HookEdit {
  EditKind kind = EditKind::kZero;
  std::string hook;            // full hook point name, e.g. "blocks.3.attn.hook_z"
  std::vector<int64_t> heads;  // per-head points only: which heads (empty: every head)
  std::vector<int64_t> slots;  // which slots, in the run's slot space (empty: every slot)
  at::Tensor value;            // kSet, kAdd: slot shape, or [N, slot shape...]
};

// A Python (or other) function called at a hook point with the pass's tensor (T rows);
// returns a replacement of the same shape, or an undefined tensor to keep the original.
using HookCallback = std::function<at::Tensor(const std::string& name, const at::Tensor& t)>;

// The shape of one slot's value at a hook point: {hidden}, {heads, head_dim},
// {kv_heads, head_dim} or {intermediate}.
std::vector<int64_t> hook_slot_shape(HookPoint point, int64_t hidden, int64_t intermediate,
                                     int64_t heads, int64_t kv_heads, int64_t head_dim);
bool hook_is_per_head(HookPoint point);

// What one sequence's pass does at its hook points: applies the edits and callbacks that
// name a point, then records the point when the selection wants it (the value the model
// went on with). Built per pass by the model.
class HookContext {
 public:
  HookContext() = default;
  HookContext(const HookSelection* record, std::map<std::string, at::Tensor>* out,
              at::ScalarType dtype, const std::vector<HookEdit>* edits,
              const std::map<std::string, HookCallback>* callbacks, int64_t first_slot);

  // Whether anything happens at this point (cheap: the fast path checks it first).
  bool active(int64_t layer, HookPoint point) const {
    return layer >= 0 && layer < static_cast<int64_t>(active_.size()) &&
           (active_[layer] >> static_cast<uint32_t>(point) & 1u) != 0;
  }
  bool records_final_norm() const { return record_ != nullptr && record_->wants_final_norm(); }
  // The tensor after this point's edits and callbacks (the same tensor when none apply);
  // records it when asked. `t`: the pass's T rows first.
  at::Tensor at_point(int64_t layer, HookPoint point, const at::Tensor& t) const;
  at::ScalarType dtype() const { return dtype_; }
  const std::map<std::string, at::Tensor>* recorded() const { return out_; }
  void record_final_norm(const at::Tensor& t) const;

 private:
  const HookSelection* record_ = nullptr;
  std::map<std::string, at::Tensor>* out_ = nullptr;
  at::ScalarType dtype_ = at::kFloat;
  const std::vector<HookEdit>* edits_ = nullptr;
  const std::map<std::string, HookCallback>* callbacks_ = nullptr;
  int64_t first_slot_ = 0;
  std::vector<uint32_t> active_;  // per layer: bit p when point p records, edits or calls back
};

// A slot-by-slot value ([N, slot shape...]) must be long enough. For a whole run
// (`whole_run`), all of its `num_slots` slots and every named slot (num_slots < 0: length
// unknown, named slots only); for one pass, every slot below `num_slots` (the slots that
// exist by its end) that the edit selects — all of them when it names none. ConfigError
// naming the edit (`index`).
void check_value_covers(const HookEdit& edit, size_t index, int64_t num_slots, bool whole_run);

// A (Σ T, ...) tensor of several sequences' rows (counts `rows`) through each sequence's
// hook point (`hooks[i]` for its rows): `t` itself when no context changes it, else the
// sequences' rows joined again. With no contexts, `t`.
at::Tensor at_point_rows(const std::vector<HookContext>& hooks, const std::vector<int64_t>& rows,
                         int64_t layer, HookPoint point, const at::Tensor& t);

// A copy of an activation for the caller (recorded hook points, Python hook functions): in
// `dtype`, on the host, an ordinary tensor (not an inference tensor).
at::Tensor recorded_copy(const at::Tensor& t, at::ScalarType dtype);

// Checks a list of edits against a model before any pass runs: known hook names, heads
// only on per-head points and in range, slots ≥ 0 (and < num_slots when it is known, ≥ 0),
// value shapes, finite values. ConfigError naming the edit (its index) and the field.
void check_hook_edits(const std::vector<HookEdit>& edits, int64_t num_layers, int64_t hidden,
                      int64_t intermediate, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t num_slots = -1);

}  // namespace attnvar
