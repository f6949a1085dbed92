// What one forward pass of a run recorded, and the dense views a run assembles from its
// passes (docs/engine.md, "Capture"). Each (query, key) pair is recorded once, by the pass
// that processed the query.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attnvar/model/attention.h"

namespace attnvar {

struct PassCapture {
  int64_t step = -1;        // -1: the prompt prefill (or a replay chunk of prompt slots)
  int64_t first_slot = 0;   // the pass's queries are slots [first_slot, first_slot + T)
  int64_t num_queries = 0;  // T
  std::vector<LayerCapture> layers;  // captured layers in order
  std::map<std::string, at::Tensor> hooks;  // hook points by name, (T, ...) each
};

enum class CaptureField { kProbabilities, kScores };

// Dense lower-block view [L', H', N, N] (f32) of probabilities or scores over a run's N
// slots. Pairs no pass recorded (a key added after its query's pass) hold 0 for
// probabilities and −inf for scores, like masked pairs. L' and H' follow the spec.
at::Tensor assemble_dense(const std::vector<PassCapture>& passes, int64_t num_slots,
                          CaptureField field);

// Value-contribution norms [L', H', N] for every slot (a slot's values never change
// after it is written, so the pass that saw the most slots holds all of them).
at::Tensor assemble_value_norms(const std::vector<PassCapture>& passes, int64_t num_slots);

}  // namespace attnvar
