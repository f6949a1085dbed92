// Where one sequence's pass records its hook points (attnvar/capture/hook_points.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "attnvar/capture/hook_points.h"

namespace attnvar {

struct HookSink {
  const HookSelection* selection = nullptr;  // null or empty: nothing is recorded
  std::map<std::string, at::Tensor>* out = nullptr;
  at::ScalarType dtype = at::kFloat;

  bool wants(int64_t layer, HookPoint point) const {
    return selection != nullptr && selection->wants(layer, point);
  }
  // Records a copy of `t` (in `dtype`, on the host: the engine may write the original's
  // storage in place later) as hook_name(layer, point).
  void put(int64_t layer, HookPoint point, const at::Tensor& t) const {
    (*out)[hook_name(layer, point)] = t.to(dtype, /*non_blocking=*/false, /*copy=*/true).cpu();
  }
};

}  // namespace attnvar
