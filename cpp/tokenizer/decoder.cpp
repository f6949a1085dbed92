#include "attnvar/tokenizer/decoder.h"

#include "attnvar/tokenizer/byte_level.h"
#include "attnvar/tokenizer/normalizer.h"
#include "attnvar/tokenizer/utf8.h"

namespace attnvar {

namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<unsigned char> byte_token_value(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token.back() != '>') return std::nullopt;
  const int hi = hex_value(token[3]);
  const int lo = hex_value(token[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<unsigned char>(hi * 16 + lo);
}

void ByteLevelDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string bytes;
  for (const std::string& token : tokens) {
    if (std::optional<std::string> b = byte_level::to_bytes(token)) {
      bytes += *b;
    } else {
      bytes += token;
    }
  }
  tokens.assign(1, utf8::repair(bytes));
}

void MetaspaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].find(replacement_) == std::string::npos) continue;
    const bool drop = i == 0 && scheme_ != PrependScheme::kNever;
    tokens[i] = replace_literal(tokens[i], replacement_, drop ? "" : " ");
  }
}

ReplaceDecoder::ReplaceDecoder(std::string literal, std::string content)
    : literal_(std::move(literal)), content_(std::move(content)) {}

ReplaceDecoder::ReplaceDecoder(Regex regex, std::string content)
    : regex_(std::make_unique<Regex>(std::move(regex))), content_(std::move(content)) {}

void ReplaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (std::string& token : tokens) {
    if (regex_) {
      token = replace_matches(*regex_, token, content_);
    } else if (!literal_.empty() && token.find(literal_) != std::string::npos) {
      token = replace_literal(token, literal_, content_);
    }
  }
}

void ByteFallbackDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::vector<std::string> out;
  out.reserve(tokens.size());
  std::string run;  // bytes of the current run of <0xNN> tokens
  auto flush = [&] {
    if (run.empty()) return;
    if (utf8::is_valid(run)) {
      out.push_back(run);
    } else {
      for (std::size_t k = 0; k < run.size(); ++k) out.emplace_back(kReplacementChar);
    }
    run.clear();
  };
  for (std::string& token : tokens) {
    if (const auto byte = byte_token_value(token)) {
      run += static_cast<char>(*byte);
    } else {
      flush();
      out.push_back(std::move(token));
    }
  }
  flush();
  tokens = std::move(out);
}

void FuseDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string all;
  for (const std::string& token : tokens) all += token;
  tokens.assign(1, std::move(all));
}

void StripDecoder::decode_chain(std::vector<std::string>& tokens) const {
  if (content_.empty()) return;
  for (std::string& token : tokens) {
    std::size_t begin = 0;
    for (std::size_t k = 0; k < start_ && token.compare(begin, content_.size(), content_) == 0;
         ++k) {
      begin += content_.size();
    }
    std::size_t end = token.size();
    for (std::size_t k = 0; k < stop_ && end >= begin + content_.size() &&
                            token.compare(end - content_.size(), content_.size(), content_) == 0;
         ++k) {
      end -= content_.size();
    }
    token = token.substr(begin, end - begin);
  }
}

void SequenceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (const auto& step : steps_) step->decode_chain(tokens);
}

}  // namespace attnvar
