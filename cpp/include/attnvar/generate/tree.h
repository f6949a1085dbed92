// The tree: the prompt plus every set chosen at every step — everything needed to replay
// a run. Torch-free. A member may have no slot (an EOS member is never fed; in the
// compat preset only one member per step is fed).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace attnvar {

struct Member {
  int64_t token_id = -1;
  double probability = 0.0;  // selection probability q_t(token); NaN for hand-built trees
  int64_t rank = 0;          // 0 = most probable
  bool is_eos = false;
  std::optional<int64_t> slot;  // slot in the run that produced the tree, if fed
};

// S_t: members in rank order.
struct TreeStep {
  std::vector<Member> members;
  double entropy = std::numeric_limits<double>::quiet_NaN();  // of q_t, nats
};

struct Tree {
  std::vector<int64_t> prompt;  // token ids, BOS included when the tokenizer adds one
  std::vector<TreeStep> steps;

  int64_t prompt_length() const { return static_cast<int64_t>(prompt.size()); }
  int64_t num_steps() const { return static_cast<int64_t>(steps.size()); }

  // A tree built by hand: steps[t] lists S_t's token ids in rank order. Members with an
  // id in `eos_ids` are marked EOS (never fed). ConfigError for an empty prompt, an
  // empty step, a repeated id within a step or a negative id.
  static Tree build(std::vector<int64_t> prompt, const std::vector<std::vector<int64_t>>& steps,
                    const std::vector<int64_t>& eos_ids = {});
};

// Metadata of one slot of a run: what was fed there, at which logical position.
// step = -1 marks the prompt (and the compat preset's duplicated last prompt token);
// member = index into steps[step].members, or -1.
struct SlotRecord {
  int64_t token_id = -1;
  double position = 0.0;
  int64_t step = -1;
  int64_t member = -1;
};

}  // namespace attnvar
