// Unicode data for NFC (generated into nfc_tables.cpp by gen_nfc_tables.py). Internal to the
// tokenizer library: sorted arrays searched by code point.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>

namespace attnvar::nfc_tables {

struct CombiningRange {
  char32_t first;
  char32_t last;
  uint8_t combining_class;
};

struct Decomposition {
  char32_t code_point;
  uint16_t offset;  // into kDecompositionPool
  uint8_t length;   // full (recursive) canonical decomposition
};

struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};

extern const CombiningRange kCombiningRanges[];
extern const std::size_t kCombiningRangeCount;
extern const char32_t kDecompositionPool[];
extern const Decomposition kDecompositions[];
extern const std::size_t kDecompositionCount;
extern const Composition kCompositions[];  // sorted by (first, second)
extern const std::size_t kCompositionCount;

}  // namespace attnvar::nfc_tables
