// What a forward pass records about attention (docs/engine.md, "Capture"). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace attnvar {

enum class CaptureDtype { kFloat32, kFloat16 };  // f16 is for storage only

struct CaptureSpec {
  bool enabled = false;
  std::vector<int64_t> layers;  // empty: every layer
  std::vector<int64_t> heads;   // empty: every query head
  bool probabilities = true;    // α[h, q, k]
  bool scores = false;          // pre-softmax s[h, q, k] after the bias (−inf where masked)
  bool value_norms = false;     // ‖v_k W_O^h‖ per head and key
  CaptureDtype dtype = CaptureDtype::kFloat32;
  // Named activations to record (hook_points.h), whether or not attention is captured
  // (`enabled` governs only the fields above). Recorded in f32 (or dtype), every head.
  std::vector<std::string> hook_points;

  // Whether a pass records anything: attention (enabled) or hook points.
  bool records() const { return enabled || !hook_points.empty(); }

  bool captures_layer(int64_t layer) const {
    if (!enabled) return false;
    if (layers.empty()) return true;
    for (int64_t l : layers) {
      if (l == layer) return true;
    }
    return false;
  }

  bool operator==(const CaptureSpec&) const = default;
};

}  // namespace attnvar
