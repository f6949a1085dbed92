// NFC (Unicode Standard Annex #15): decompose canonically, order combining marks by class,
// recompose primary composites. Hangul syllables are decomposed and composed arithmetically.
#include <algorithm>
#include <tuple>
#include <vector>

#include "attnvar/tokenizer/normalizer.h"
#include "attnvar/tokenizer/utf8.h"
#include "nfc_tables.h"

namespace attnvar {

namespace {

namespace t = nfc_tables;

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const t::CombiningRange* end = t::kCombiningRanges + t::kCombiningRangeCount;
  const t::CombiningRange* it =
      std::upper_bound(t::kCombiningRanges, end, cp,
                       [](char32_t c, const t::CombiningRange& r) { return c < r.first; });
  if (it == t::kCombiningRanges) return 0;
  --it;
  return cp <= it->last ? it->combining_class : 0;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const t::Decomposition* end = t::kDecompositions + t::kDecompositionCount;
  const t::Decomposition* it =
      std::lower_bound(t::kDecompositions, end, cp,
                       [](const t::Decomposition& d, char32_t c) { return d.code_point < c; });
  if (it != end && it->code_point == cp) {
    out.insert(out.end(), t::kDecompositionPool + it->offset,
               t::kDecompositionPool + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of (first, second), or 0.
char32_t compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase &&
      second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const t::Composition* end = t::kCompositions + t::kCompositionCount;
  const t::Composition* it = std::lower_bound(
      t::kCompositions, end, std::pair{first, second}, [](const t::Composition& c, auto key) {
        return c.first != key.first ? c.first < key.first : c.second < key.second;
      });
  if (it != end && it->first == first && it->second == second) return it->composite;
  return 0;
}

}  // namespace

void NfcNormalizer::normalize(std::string& text) const {
  // Code points below U+0300 (lead bytes below 0xCC) neither decompose nor combine with what
  // precedes them, so text made only of them is already NFC.
  if (std::none_of(text.begin(), text.end(),
                   [](char c) { return static_cast<unsigned char>(c) >= 0xCC; })) {
    return;
  }
  std::vector<char32_t> decomposed;
  decomposed.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) decompose(utf8::decode(text, pos), decomposed);

  // Canonical ordering: each run of non-starters sorted (stably) by combining class.
  std::vector<uint8_t> classes(decomposed.size());
  for (std::size_t i = 0; i < decomposed.size(); ++i) classes[i] = combining_class(decomposed[i]);
  for (std::size_t i = 0; i < decomposed.size();) {
    if (classes[i] == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < decomposed.size() && classes[j] != 0) ++j;
    if (j - i > 1) {
      std::vector<std::pair<uint8_t, char32_t>> run;
      for (std::size_t k = i; k < j; ++k) run.emplace_back(classes[k], decomposed[k]);
      std::stable_sort(run.begin(), run.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (std::size_t k = i; k < j; ++k) std::tie(classes[k], decomposed[k]) = run[k - i];
    }
    i = j;
  }

  // Canonical composition: a character joins the last starter unless blocked by a character
  // in between of class 0 or of a class not below its own.
  std::vector<char32_t> composed;
  std::vector<uint8_t> composed_classes;
  composed.reserve(decomposed.size());
  std::ptrdiff_t starter = -1;
  for (std::size_t i = 0; i < decomposed.size(); ++i) {
    const char32_t cp = decomposed[i];
    const uint8_t cc = classes[i];
    if (starter >= 0) {
      const bool adjacent = static_cast<std::size_t>(starter) + 1 == composed.size();
      if (adjacent || (cc != 0 && composed_classes.back() < cc)) {
        if (const char32_t c = compose(composed[starter], cp)) {
          composed[starter] = c;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<std::ptrdiff_t>(composed.size());
    composed.push_back(cp);
    composed_classes.push_back(cc);
  }
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : composed) utf8::append(out, cp);
  text = std::move(out);
}

}  // namespace attnvar
