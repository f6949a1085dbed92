#include "attnvar/model/sha256.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATTNVAR_SHA_X86 1
#endif
#include <fstream>
#include <vector>

#include "attnvar/error.h"

namespace attnvar {
namespace {

// First 32 bits of the fractional parts of the cube roots of the first 64 primes.
constexpr std::array<uint32_t, 64> kRound = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

// First 32 bits of the fractional parts of the square roots of the first 8 primes.
constexpr std::array<uint32_t, 8> kInitial = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

constexpr uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

#ifdef ATTNVAR_SHA_X86
bool cpu_has_sha_ni() {
  static const bool has = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
  return has;
}

// n blocks with the x86 SHA extensions (the bundled 98 MB model file 0.40 -> 0.067 s, so
// load_model 0.49 -> 0.15 s; Xeon, 2026-12-07). Their round instruction takes the state as two registers, A B E F and C D G H
// (A in the top lane), does two rounds per call with W + K of those rounds in its low lanes,
// and returns the new A B E F, the old one being the new C D G H; the two message
// instructions extend the schedule four words at a time.
__attribute__((target("sha,sse4.1"))) void compress_sha_ni(std::array<uint32_t, 8>& state,
                                                           const uint8_t* blocks, size_t n) {
  const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  const __m128i abcd = _mm_shuffle_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(state.data())), 0xB1);   // b a d c
  const __m128i efgh = _mm_shuffle_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(state.data() + 4)), 0x1B);  // h g f e
  __m128i abef = _mm_alignr_epi8(abcd, efgh, 8);   // f e b a
  __m128i cdgh = _mm_blend_epi16(efgh, abcd, 0xF0);  // h g d c
  for (; n > 0; --n, blocks += 64) {
    const __m128i abef_in = abef, cdgh_in = cdgh;
    __m128i w[4];  // W[4g .. 4g + 3] of the last four groups, in a ring
    for (int j = 0; j < 4; ++j) {
      w[j] = _mm_shuffle_epi8(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + 16 * j)), byte_swap);
    }
    for (int g = 0; g < 16; ++g) {
      __m128i& cur = w[g % 4];  // W[4g - 16 ..] before, W[4g ..] after
      if (g >= 4) {
        const __m128i w7 = _mm_alignr_epi8(w[(g + 3) % 4], w[(g + 2) % 4], 4);  // W[4g - 7 ..]
        cur = _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(cur, w[(g + 1) % 4]), w7), w[(g + 3) % 4]);
      }
      __m128i wk =
          _mm_add_epi32(cur, _mm_loadu_si128(reinterpret_cast<const __m128i*>(&kRound[4 * g])));
      for (int half = 0; half < 2; ++half) {
        const __m128i next = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        cdgh = abef;
        abef = next;
        wk = _mm_shuffle_epi32(wk, 0x0E);  // the other two rounds' words to the low lanes
      }
    }
    abef = _mm_add_epi32(abef, abef_in);
    cdgh = _mm_add_epi32(cdgh, cdgh_in);
  }
  const __m128i abef_up = _mm_shuffle_epi32(abef, 0x1B);  // a b e f
  const __m128i cdgh_up = _mm_shuffle_epi32(cdgh, 0xB1);  // g h c d
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data()),
                   _mm_blend_epi16(abef_up, cdgh_up, 0xF0));  // a b c d
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state.data() + 4),
                   _mm_alignr_epi8(cdgh_up, abef_up, 8));  // e f g h
}
#endif

}  // namespace

Sha256::Sha256(Sha256Kernel kernel) : state_(kInitial) {
#ifdef ATTNVAR_SHA_X86
  sha_ni_ = kernel == Sha256Kernel::kAuto && cpu_has_sha_ni();
#else
  (void)kernel;
#endif
}

void Sha256::compress(const uint8_t* blocks, size_t n) {
#ifdef ATTNVAR_SHA_X86
  if (sha_ni_) {
    compress_sha_ni(state_, blocks, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; ++i) compress_one(blocks + 64 * i);
}

void Sha256::compress_one(const uint8_t* block) {
  std::array<uint32_t, 64> w;  // message schedule
  for (int i = 0; i < 16; ++i) {
    w[i] = (uint32_t{block[4 * i]} << 24) | (uint32_t{block[4 * i + 1]} << 16) |
           (uint32_t{block[4 * i + 2]} << 8) | uint32_t{block[4 * i + 3]};
  }
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t sigma1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    const uint32_t choose = (e & f) ^ (~e & g);
    const uint32_t t1 = h + sigma1 + choose + kRound[i] + w[i];
    const uint32_t sigma0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    const uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
    const uint32_t t2 = sigma0 + majority;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state_[0] += a;
  state_[1] += b;
  state_[2] += c;
  state_[3] += d;
  state_[4] += e;
  state_[5] += f;
  state_[6] += g;
  state_[7] += h;
}

void Sha256::update(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  total_bytes_ += n;
  if (buffered_ > 0) {
    const size_t take = std::min(n, 64 - buffered_);
    std::memcpy(buffer_.data() + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < 64) return;
    compress(buffer_.data(), 1);
    buffered_ = 0;
  }
  compress(p, n / 64);
  p += n / 64 * 64;
  n %= 64;
  std::memcpy(buffer_.data(), p, n);
  buffered_ = n;
}

std::string Sha256::hex_digest() {
  // Padding: a 1 bit, zeros to 56 mod 64, then the message length in bits (big-endian).
  const uint64_t bits = total_bytes_ * 8;
  const uint8_t one = 0x80;
  update(&one, 1);
  const uint8_t zero = 0;
  while (buffered_ != 56) update(&zero, 1);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
  update(len, 8);
  std::string out;
  out.reserve(64);
  for (uint32_t v : state_) out += fmt::format("{:08x}", v);
  return out;
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MissingError(path + ": cannot open for hashing");
  Sha256 h;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    h.update(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw FormatError(path + ": read error while hashing");
  return h.hex_digest();
}

}  // namespace attnvar
