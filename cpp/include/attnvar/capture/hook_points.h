// Named hook points: the activations a forward pass can record, named as TransformerLens
// names them (docs/engine.md, "Hook points"). Torch-free.
//
// Per layer l the name is "blocks.{l}." + a point below; after the last layer,
// "ln_final.hook_normalized". Every recorded tensor has the pass's T new tokens first:
//   hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post,
//   ln_final.hook_normalized                         (T, hidden)
//   attn.hook_q, attn.hook_rot_q, attn.hook_z        (T, heads, head_dim)
//   attn.hook_k, attn.hook_v, attn.hook_rot_k        (T, kv_heads, head_dim)
//   mlp.hook_post                                    (T, intermediate)
// q, k and v are the projections' outputs (before Qwen3's q/k norms and before RoPE); rot_q
// and rot_k are after the norms and RoPE at each slot's logical position; z is the heads'
// outputs before o_proj. Attention scores and patterns are not hook points here: the
// attention capture (CaptureSpec) records them, per layer and head.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attnvar {

enum class HookPoint : uint32_t {
  kResidPre,
  kQ,
  kK,
  kV,
  kRotQ,
  kRotK,
  kZ,
  kAttnOut,
  kResidMid,
  kMlpPost,
  kMlpOut,
  kResidPost,
  kCount  // (not a point)
};

// The point's name inside a block, e.g. "attn.hook_q".
std::string_view hook_point_suffix(HookPoint point);
// The full name, "blocks.{layer}.{suffix}".
std::string hook_name(int64_t layer, HookPoint point);
inline constexpr std::string_view kFinalNormHook = "ln_final.hook_normalized";

// Every valid name for a model of `num_layers` layers, in forward order.
std::vector<std::string> hook_point_names(int64_t num_layers);

// One name taken apart: a block point (layer, point), or the final norm.
struct ParsedHook {
  int64_t layer = -1;
  HookPoint point = HookPoint::kCount;
  bool final_norm = false;
};
// ConfigError naming `name` when it is not a hook point of a `num_layers`-layer model (an
// unknown point, a layer out of range), with the list of valid points.
ParsedHook parse_hook_name(const std::string& name, int64_t num_layers);

// A parsed list of names: which points of which layers a pass records.
class HookSelection {
 public:
  HookSelection() = default;
  // ConfigError naming the first name that is not a hook point of a `num_layers`-layer model
  // (an unknown point, a layer out of range), with the list of valid points.
  HookSelection(const std::vector<std::string>& names, int64_t num_layers);

  bool empty() const { return count_ == 0; }
  bool wants(int64_t layer, HookPoint point) const {
    return layer >= 0 && layer < static_cast<int64_t>(masks_.size()) &&
           (masks_[layer] >> static_cast<uint32_t>(point) & 1u) != 0;
  }
  bool wants_layer(int64_t layer) const {
    return layer >= 0 && layer < static_cast<int64_t>(masks_.size()) && masks_[layer] != 0;
  }
  bool wants_final_norm() const { return final_norm_; }
  int64_t num_layers() const { return static_cast<int64_t>(masks_.size()); }
  // Bit p set when point p of `layer` is recorded.
  uint32_t mask(int64_t layer) const {
    return layer >= 0 && layer < static_cast<int64_t>(masks_.size()) ? masks_[layer] : 0u;
  }

 private:
  std::vector<uint32_t> masks_;  // per layer: bit p set when point p is recorded
  bool final_norm_ = false;
  int64_t count_ = 0;
};

}  // namespace attnvar
