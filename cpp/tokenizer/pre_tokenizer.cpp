#include "attnvar/tokenizer/pre_tokenizer.h"

#include <algorithm>

#include "attnvar/error.h"

namespace attnvar {

namespace {

struct Flagged {
  Span span;
  bool is_match;
};

// The matches and the gaps between them, covering the text (HF's find_matches).
std::vector<Flagged> cover(std::size_t text_size, const std::vector<Regex::Match>& matches,
                           bool invert) {
  std::vector<Flagged> out;
  out.reserve(matches.size() * 2 + 1);
  std::size_t prev = 0;
  for (const Regex::Match& m : matches) {
    if (prev != m.begin) out.push_back({{prev, m.begin}, invert});
    out.push_back({{m.begin, m.end}, !invert});
    prev = m.end;
  }
  if (prev != text_size || out.empty()) out.push_back({{prev, text_size}, invert});
  return out;
}

std::vector<Regex::Match> find_literal(std::string_view text, std::string_view literal) {
  std::vector<Regex::Match> out;
  if (literal.empty()) return out;
  for (std::size_t pos = text.find(literal); pos != std::string_view::npos;
       pos = text.find(literal, pos + literal.size())) {
    out.push_back({pos, pos + literal.size()});
  }
  return out;
}

// Replaces each piece by its sub-pieces; a sub-piece is at the input's start only if its parent
// was and it begins the parent.
template <typename SpansOf>
void refine(std::vector<PreToken>& pieces, SpansOf&& spans_of) {
  std::vector<PreToken> out;
  out.reserve(pieces.size() * 2);
  for (PreToken& piece : pieces) {
    const std::vector<Span> spans = spans_of(piece.text);
    if (spans.size() == 1 && spans[0].begin == 0 && spans[0].end == piece.text.size()) {
      out.push_back(std::move(piece));
      continue;
    }
    for (const Span& s : spans) {
      out.push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_start && s.begin == 0});
    }
  }
  pieces = std::move(out);
}

}  // namespace

std::vector<Span> split_at_matches(std::size_t text_size, const std::vector<Regex::Match>& matches,
                                   SplitBehavior behavior, bool invert) {
  std::vector<Flagged> parts = cover(text_size, matches, invert);
  std::vector<Flagged> merged;
  merged.reserve(parts.size());
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Flagged& p : parts) {
        if (!p.is_match) merged.push_back(p);
      }
      break;
    case SplitBehavior::kIsolated:
      merged = std::move(parts);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Flagged& p : parts) {
        if (p.is_match && !previous_match && !merged.empty()) {
          merged.back().span.end = p.span.end;
        } else {
          merged.push_back(p);
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !merged.empty()) {
          merged.back().span.begin = it->span.begin;
        } else {
          merged.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Flagged& p : parts) {
        if (p.is_match == previous_match && !merged.empty()) {
          merged.back().span.end = p.span.end;
        } else {
          merged.push_back(p);
        }
        previous_match = p.is_match;
      }
      break;
    }
  }
  std::vector<Span> spans;
  spans.reserve(merged.size());
  for (const Flagged& p : merged) {
    if (p.span.end > p.span.begin) spans.push_back(p.span);
  }
  return spans;
}

SplitPreTokenizer::SplitPreTokenizer(Regex regex, SplitBehavior behavior, bool invert)
    : regex_(std::make_unique<Regex>(std::move(regex))), behavior_(behavior), invert_(invert) {}

SplitPreTokenizer::SplitPreTokenizer(std::string literal, SplitBehavior behavior, bool invert)
    : literal_(std::move(literal)), behavior_(behavior), invert_(invert) {}

void SplitPreTokenizer::split(std::vector<PreToken>& pieces) const {
  refine(pieces, [&](const std::string& text) {
    const auto matches = regex_ ? regex_->find_all(text) : find_literal(text, literal_);
    return split_at_matches(text.size(), matches, behavior_, invert_);
  });
}

DigitsPreTokenizer::DigitsPreTokenizer(bool individual_digits)
    // Runs of digits as one match give exactly HF's per-character matches merged "contiguous".
    : digits_(individual_digits ? R"(\p{N})" : R"(\p{N}+)", "Digits pre-tokenizer") {}

void DigitsPreTokenizer::split(std::vector<PreToken>& pieces) const {
  refine(pieces, [&](const std::string& text) {
    return split_at_matches(text.size(), digits_.find_all(text), SplitBehavior::kIsolated, false);
  });
}

ByteLevelPreTokenizer::ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
    : add_prefix_space_(add_prefix_space),
      regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, "ByteLevel pre-tokenizer")
                       : nullptr) {}

void ByteLevelPreTokenizer::split(std::vector<PreToken>& pieces) const {
  if (add_prefix_space_) {
    for (PreToken& piece : pieces) {
      if (!piece.text.empty() && piece.text.front() != ' ') piece.text.insert(0, 1, ' ');
    }
  }
  if (!regex_) return;
  refine(pieces, [&](const std::string& text) {
    return split_at_matches(text.size(), regex_->find_all(text), SplitBehavior::kIsolated, false);
  });
}

MetaspacePreTokenizer::MetaspacePreTokenizer(std::string replacement, PrependScheme scheme,
                                             bool split)
    : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
  if (replacement_.empty()) throw ConfigError("Metaspace: empty replacement character");
}

void MetaspacePreTokenizer::split(std::vector<PreToken>& pieces) const {
  for (PreToken& piece : pieces) {
    if (piece.text.find(' ') != std::string::npos) {
      piece.text = replace_literal_spaces(piece.text);
    }
    const bool needs_prefix = !piece.text.starts_with(replacement_);
    if (needs_prefix && (scheme_ == PrependScheme::kAlways ||
                         (scheme_ == PrependScheme::kFirst && piece.at_start))) {
      piece.text.insert(0, replacement_);
    }
  }
  if (!split_) return;
  refine(pieces, [&](const std::string& text) {
    return split_at_matches(text.size(), find_literal(text, replacement_),
                            SplitBehavior::kMergedWithNext, false);
  });
}

std::string MetaspacePreTokenizer::replace_literal_spaces(const std::string& text) const {
  std::string out;
  out.reserve(text.size() + 8);
  for (char c : text) {
    if (c == ' ') {
      out += replacement_;
    } else {
      out += c;
    }
  }
  return out;
}

SequencePreTokenizer::SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
    : steps_(std::move(steps)) {
  for (std::size_t i = 0; i + 1 < steps_.size(); ++i) {
    if (steps_[i]->is_byte_level()) {
      throw ConfigError(
          "pre_tokenizer: a ByteLevel step must be the last of a Sequence (the byte alphabet is "
          "folded into the BPE model)");
    }
  }
}

void SequencePreTokenizer::split(std::vector<PreToken>& pieces) const {
  for (const auto& step : steps_) step->split(pieces);
}

bool SequencePreTokenizer::is_byte_level() const {
  return !steps_.empty() && steps_.back()->is_byte_level();
}

}  // namespace attnvar
