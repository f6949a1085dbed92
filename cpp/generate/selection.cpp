#include "attnvar/generate/selection.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "attnvar/error.h"
#include "attnvar/model/single_thread.h"

namespace attnvar {

void validate(const SelectionOptions& o) {
  if (!(o.threshold > 0.0 && o.threshold <= 1.0)) {
    throw ConfigError(fmt::format("threshold must be in (0, 1], got {}", o.threshold));
  }
  if (o.max_width < 1) throw ConfigError(fmt::format("max_width must be ≥ 1, got {}", o.max_width));
}

std::vector<Selected> select_set(const at::Tensor& q_in, const SelectionOptions& o,
                                 at::Generator generator) {
  validate(o);
  // Elementwise passes over the vocabulary, a sort of the few candidates: one thread is
  // enough and wakes no other (single_thread.h).
  SingleThreadScope one_thread;
  auto q = q_in.to(at::kCPU, at::kDouble).contiguous();
  // Only tokens at or above θ can be members: sort those, not the whole vocabulary.
  // A stable descending sort of candidates taken in id order breaks ties by id.
  auto candidates = (q >= o.threshold).nonzero().squeeze(1);  // ascending ids
  std::vector<Selected> set;
  if (candidates.numel() > 0) {
    auto [values, order] = at::sort(q.index_select(0, candidates), /*stable=*/true, /*dim=*/0,
                                    /*descending=*/true);
    auto ids = candidates.index_select(0, order);
    auto vals = values.accessor<double, 1>();
    auto idx = ids.accessor<int64_t, 1>();
    const int64_t n = std::min<int64_t>(ids.size(0), o.max_width);
    for (int64_t i = 0; i < n; ++i) set.push_back({idx[i], vals[i]});
  } else {
    const int64_t top = q.argmax().item<int64_t>();  // first maximum: lowest id on ties
    set.push_back({top, q[top].item<double>()});
  }
  if (o.sample) {
    const int64_t drawn = at::multinomial(q, 1, /*replacement=*/false, generator).item<int64_t>();
    const bool present = std::any_of(set.begin(), set.end(),
                                     [&](const Selected& s) { return s.token_id == drawn; });
    if (!present) {
      if (static_cast<int64_t>(set.size()) == o.max_width) set.pop_back();
      Selected s{drawn, q[drawn].item<double>()};
      auto pos = std::find_if(set.begin(), set.end(), [&](const Selected& m) {
        return m.probability < s.probability ||
               (m.probability == s.probability && m.token_id > s.token_id);
      });
      set.insert(pos, s);
    }
  }
  return set;
}

}  // namespace attnvar
