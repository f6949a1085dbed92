#include "attnvar/generate/tree.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "attnvar/error.h"

namespace attnvar {

Tree Tree::build(std::vector<int64_t> prompt, const std::vector<std::vector<int64_t>>& steps,
                 const std::vector<int64_t>& eos_ids) {
  if (prompt.empty()) throw ConfigError("tree: the prompt is empty");
  for (int64_t id : prompt) {
    if (id < 0) throw ConfigError(fmt::format("tree: prompt token id {} is negative", id));
  }
  Tree tree;
  tree.prompt = std::move(prompt);
  for (size_t t = 0; t < steps.size(); ++t) {
    if (steps[t].empty()) throw ConfigError(fmt::format("tree: step {} has no member", t));
    std::set<int64_t> seen;
    TreeStep step;
    for (size_t r = 0; r < steps[t].size(); ++r) {
      const int64_t id = steps[t][r];
      if (id < 0) throw ConfigError(fmt::format("tree: step {} member {} has id {}", t, r, id));
      if (!seen.insert(id).second) {
        throw ConfigError(fmt::format("tree: step {} lists token {} twice", t, id));
      }
      Member m;
      m.token_id = id;
      m.probability = std::numeric_limits<double>::quiet_NaN();
      m.rank = static_cast<int64_t>(r);
      m.is_eos = std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end();
      step.members.push_back(m);
    }
    tree.steps.push_back(std::move(step));
  }
  return tree;
}

}  // namespace attnvar
