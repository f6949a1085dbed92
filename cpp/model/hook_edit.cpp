#include "attnvar/model/hook_edit.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <limits>

#include <c10/core/InferenceMode.h>

#include "attnvar/error.h"

namespace attnvar {

bool hook_is_per_head(HookPoint point) {
  switch (point) {
    case HookPoint::kQ:
    case HookPoint::kK:
    case HookPoint::kV:
    case HookPoint::kRotQ:
    case HookPoint::kRotK:
    case HookPoint::kZ:
      return true;
    default:
      return false;
  }
}

std::vector<int64_t> hook_slot_shape(HookPoint point, int64_t hidden, int64_t intermediate,
                                     int64_t heads, int64_t kv_heads, int64_t head_dim) {
  switch (point) {
    case HookPoint::kQ:
    case HookPoint::kRotQ:
    case HookPoint::kZ:
      return {heads, head_dim};
    case HookPoint::kK:
    case HookPoint::kV:
    case HookPoint::kRotK:
      return {kv_heads, head_dim};
    case HookPoint::kMlpPost:
      return {intermediate};
    default:
      return {hidden};
  }
}

void check_hook_edits(const std::vector<HookEdit>& edits, int64_t num_layers, int64_t hidden,
                      int64_t intermediate, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t num_slots) {
  for (size_t i = 0; i < edits.size(); ++i) {
    const HookEdit& e = edits[i];
    const std::string where = fmt::format("intervention {} ({})", i, printable(e.hook, 80));
    const ParsedHook h = parse_hook_name(e.hook, num_layers);
    if (h.final_norm) {
      throw ConfigError(fmt::format("{}: ln_final.hook_normalized can be recorded, not edited",
                                    where));
    }
    const std::vector<int64_t> slot_shape =
        hook_slot_shape(h.point, hidden, intermediate, heads, kv_heads, head_dim);
    if (!e.heads.empty()) {
      if (!hook_is_per_head(h.point)) {
        throw ConfigError(fmt::format("{}: heads: {} has no head axis", where, e.hook));
      }
      for (int64_t head : e.heads) {
        if (head < 0 || head >= slot_shape[0]) {
          throw ConfigError(fmt::format("{}: heads: head {} is outside [0, {})", where, head,
                                        slot_shape[0]));
        }
      }
    }
    for (const auto* list : {&e.heads, &e.slots}) {
      std::vector<int64_t> sorted = *list;
      std::sort(sorted.begin(), sorted.end());
      if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
        throw ConfigError(fmt::format("{}: {}: an index appears twice", where,
                                      list == &e.heads ? "heads" : "slots"));
      }
    }
    for (int64_t slot : e.slots) {
      if (slot < 0 || (num_slots >= 0 && slot >= num_slots)) {
        throw ConfigError(num_slots >= 0
                              ? fmt::format("{}: slots: slot {} is outside [0, {})", where,
                                            slot, num_slots)
                              : fmt::format("{}: slots: slot {} is negative", where, slot));
      }
    }
    if (e.kind == EditKind::kZero) {
      if (e.value.defined()) throw ConfigError(fmt::format("{}: value: zero-ablation takes none", where));
      continue;
    }
    if (!e.value.defined()) throw ConfigError(fmt::format("{}: value is missing", where));
    if (!at::isFloatingType(e.value.scalar_type())) {
      throw ConfigError(fmt::format("{}: value must be a float tensor", where));
    }
    const auto sizes = e.value.sizes();
    const bool one_slot = sizes == at::IntArrayRef(slot_shape);
    const bool per_slot = sizes.size() == slot_shape.size() + 1 &&
                          sizes.slice(1) == at::IntArrayRef(slot_shape);
    if (!one_slot && !per_slot) {
      throw ConfigError(fmt::format(
          "{}: value has shape {}; {} takes {} (one slot) or [N, {}] (slot by slot)", where,
          c10::str(sizes), e.hook, c10::str(at::IntArrayRef(slot_shape)),
          fmt::join(slot_shape, ", ")));
    }
    check_value_covers(e, i, num_slots, /*whole_run=*/true);
    if (!at::isfinite(e.value).all().item<bool>()) {
      throw ConfigError(fmt::format("{}: value holds NaN or infinite entries", where));
    }
  }
}

void check_value_covers(const HookEdit& e, size_t index, int64_t num_slots, bool whole_run) {
  if (!e.value.defined()) return;
  const ParsedHook h = parse_hook_name(e.hook, std::numeric_limits<int64_t>::max());
  const int64_t slot_dims = hook_is_per_head(h.point) ? 2 : 1;
  if (e.value.dim() != slot_dims + 1) return;  // one slot's value, for every slot
  int64_t needed = whole_run || e.slots.empty() ? std::max<int64_t>(num_slots, 0) : 0;
  for (int64_t slot : e.slots) {
    if (whole_run || slot < num_slots) needed = std::max(needed, slot + 1);
  }
  if (e.value.size(0) < needed) {
    throw ConfigError(fmt::format(
        "intervention {} ({}): value holds {} slots, but slots up to {} are edited: the "
        "layouts differ", index, printable(e.hook, 80), e.value.size(0), needed - 1));
  }
}

at::Tensor at_point_rows(const std::vector<HookContext>& hooks, const std::vector<int64_t>& rows,
                         int64_t layer, HookPoint point, const at::Tensor& t) {
  bool any = false;
  for (const HookContext& hc : hooks) any = any || hc.active(layer, point);
  if (!any) return t;
  std::vector<at::Tensor> parts;
  bool changed = false;
  int64_t offset = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    auto rows_i = t.narrow(0, offset, rows[i]);
    parts.push_back(hooks[i].at_point(layer, point, rows_i));
    changed = changed || !parts.back().is_same(rows_i);
    offset += rows[i];
  }
  return changed ? at::cat(parts) : t;
}

HookContext::HookContext(const HookSelection* record, std::map<std::string, at::Tensor>* out,
                         at::ScalarType dtype, const std::vector<HookEdit>* edits,
                         const std::map<std::string, HookCallback>* callbacks,
                         int64_t first_slot)
    : record_(record != nullptr && !record->empty() ? record : nullptr),
      out_(out),
      dtype_(dtype),
      edits_(edits != nullptr && !edits->empty() ? edits : nullptr),
      callbacks_(callbacks != nullptr && !callbacks->empty() ? callbacks : nullptr),
      first_slot_(first_slot) {
  const auto mark = [&](const std::string& name) {
    // (Names are checked before the pass; layer count from the selection or the name.)
    const ParsedHook h = parse_hook_name(name, std::numeric_limits<int64_t>::max());
    if (h.final_norm) return;
    if (static_cast<int64_t>(active_.size()) <= h.layer) active_.resize(h.layer + 1, 0u);
    active_[h.layer] |= 1u << static_cast<uint32_t>(h.point);
  };
  if (edits_) {
    for (const HookEdit& e : *edits_) mark(e.hook);
  }
  if (callbacks_) {
    for (const auto& [name, fn] : *callbacks_) mark(name);
  }
  if (record_) {
    if (static_cast<int64_t>(active_.size()) < record_->num_layers()) {
      active_.resize(record_->num_layers(), 0u);
    }
    for (int64_t l = 0; l < record_->num_layers(); ++l) active_[l] |= record_->mask(l);
  }
}

namespace {

// Rows [first, first + T) of the pass that `slots` selects (all when empty), as indices.
std::vector<int64_t> selected_rows(const std::vector<int64_t>& slots, int64_t first, int64_t T) {
  std::vector<int64_t> rows;
  if (slots.empty()) {
    for (int64_t i = 0; i < T; ++i) rows.push_back(i);
    return rows;
  }
  for (int64_t s : slots) {
    if (s >= first && s < first + T) rows.push_back(s - first);
  }
  return rows;
}

at::Tensor apply_edit(const HookEdit& e, const at::Tensor& t, int64_t first_slot) {
  const int64_t T = t.size(0);
  const std::vector<int64_t> rows = selected_rows(e.slots, first_slot, T);
  if (rows.empty()) return t;
  auto longs = at::TensorOptions().dtype(at::kLong).device(t.device());
  auto row_index = at::tensor(rows, longs);
  at::Tensor part = t.index_select(0, row_index);  // (R, slot shape...), a copy
  at::Tensor value;
  if (e.kind != EditKind::kZero) {
    value = e.value.to(t.device(), t.scalar_type());
    if (value.dim() == t.dim()) {  // slot by slot: the selected slots' rows
      std::vector<int64_t> source(rows.size());
      for (size_t i = 0; i < rows.size(); ++i) source[i] = first_slot + rows[i];
      value = value.index_select(0, at::tensor(source, longs));
    } else {
      value = value.unsqueeze(0).expand_as(part);
    }
  }
  at::Tensor target = part;
  at::Tensor head_index;
  if (!e.heads.empty()) {
    head_index = at::tensor(e.heads, longs);
    target = part.index_select(1, head_index);
    if (value.defined()) value = value.index_select(1, head_index);
  }
  switch (e.kind) {
    case EditKind::kZero:
      target = at::zeros_like(target);
      break;
    case EditKind::kSet:
      target = value.clone();
      break;
    case EditKind::kAdd:
      target = target + value;
      break;
  }
  if (head_index.defined()) {
    part.index_copy_(1, head_index, target);
  } else {
    part = target;
  }
  at::Tensor out = t.clone();
  out.index_copy_(0, row_index, part);
  return out;
}

}  // namespace

at::Tensor HookContext::at_point(int64_t layer, HookPoint point, const at::Tensor& t) const {
  if (!active(layer, point)) return t;
  at::Tensor cur = t;
  if (edits_ || callbacks_) {
    const std::string name = hook_name(layer, point);
    if (edits_) {
      for (const HookEdit& e : *edits_) {
        if (e.hook == name) cur = apply_edit(e, cur, first_slot_);
      }
    }
    if (callbacks_) {
      const auto it = callbacks_->find(name);
      if (it != callbacks_->end()) {
        at::Tensor replaced = it->second(name, cur);
        if (replaced.defined()) {
          if (replaced.sizes() != cur.sizes() || !at::isFloatingType(replaced.scalar_type())) {
            throw ConfigError(fmt::format("the hook function at {} returned shape {} ({}); it "
                                          "must return a float tensor of shape {} or None",
                                          name, c10::str(replaced.sizes()),
                                          c10::toString(replaced.scalar_type()),
                                          c10::str(cur.sizes())));
          }
          cur = replaced.to(cur.device(), cur.scalar_type()).contiguous();
        }
      }
    }
  }
  if (record_ != nullptr && record_->wants(layer, point)) {
    (*out_)[hook_name(layer, point)] = recorded_copy(cur, dtype_);
  }
  return cur;
}

void HookContext::record_final_norm(const at::Tensor& t) const {
  (*out_)[std::string(kFinalNormHook)] = recorded_copy(t, dtype_);
}

at::Tensor recorded_copy(const at::Tensor& t, at::ScalarType dtype) {
  // Outside inference mode: the copy is an ordinary tensor, which the caller may edit in
  // place or use with autograd (an inference tensor refuses both).
  c10::InferenceMode ordinary(false);
  return t.to(dtype, /*non_blocking=*/false, /*copy=*/true).cpu();
}

}  // namespace attnvar
