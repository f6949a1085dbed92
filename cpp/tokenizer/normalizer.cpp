#include "attnvar/tokenizer/normalizer.h"

namespace attnvar {

std::string replace_literal(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

std::string replace_matches(const Regex& regex, std::string_view text, std::string_view content) {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  for (const Regex::Match& m : regex.find_all(text)) {
    out.append(text.substr(pos, m.begin - pos));
    out.append(content);
    pos = m.end;
  }
  out.append(text.substr(pos));
  return out;
}

void PrependNormalizer::normalize(std::string& text) const {
  if (!text.empty()) text.insert(0, prefix_);
}

ReplaceNormalizer::ReplaceNormalizer(std::string literal, std::string content)
    : literal_(std::move(literal)), content_(std::move(content)) {}

ReplaceNormalizer::ReplaceNormalizer(Regex regex, std::string content)
    : regex_(std::make_unique<Regex>(std::move(regex))), content_(std::move(content)) {}

void ReplaceNormalizer::normalize(std::string& text) const {
  if (regex_) {
    text = replace_matches(*regex_, text, content_);
  } else if (!literal_.empty() && text.find(literal_) != std::string::npos) {
    text = replace_literal(text, literal_, content_);
  }
}

void SequenceNormalizer::normalize(std::string& text) const {
  for (const auto& step : steps_) step->normalize(text);
}

}  // namespace attnvar
