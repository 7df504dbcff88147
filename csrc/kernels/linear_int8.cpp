// The integer path of `linear` for quantized weights and bf16 x (kernels.h:
// linear_quantize_x, linear_int8), few rows of x (decode).
//
// Why. Decode reads every weight byte once, so `linear` should run at the
// memory's read bandwidth. Dequantizing codes to fp32 and FMA-ing them against
// fp32 x costs about five vector instructions per eight weights on AVX2, which
// bounds q4 at a third of the bandwidth. Here x is quantized once per call to
// int8 and the codes meet it in integer dot products, 32 byte products per
// instruction pair, with one fp32 scaling per 64 columns:
//
//   1. x (M, K) -> x8 int8 per 32-column block b: dx_b = max|x_b| / 127
//      (8-bit codes without VNNI: see below),
//      x8 = round(x / dx_b); Σx̂_g per quantization group g of the rounded
//      x̂ = dx_b·x8 (not of x: see Accuracy).
//   2. Per 64 columns (two blocks) of a weight row: the codes as two vectors
//      of 32 bytes, c0 and c1, whose 32-bit lanes 0-3 hold block 2u's bytes
//      and lanes 4-7 block 2u+1's; x8 is stored in the order that matches
//      (unit_column below), so no shuffle meets the codes.
//   3. I = Σ of the 4-byte products per lane (vpdpbusd with VNNI, else
//      vpmaddubsw then vpmaddwd), exact in int32.
//   4. acc += float(I) · (dx_b · s_g) per lane (fp32); at the end
//      y = Σ lanes of acc + Σ_g b_g · Σx̂_g, rounded once to bf16 / fp16.
//   (AVX-512 tables: steps 2-4 for two rows of w per 512-bit vector, see
//   pair_step.)
//
// 8-bit codes on AVX2 without VNNI: vpmaddubsw's 16-bit pair sums of u8 × s8
// could saturate for codes near 255 against x8 near ±127 (2·255·127 >
// 32767), so there each block of x is scaled by its largest sum of two
// adjacent |x| instead of its largest |x| (quantize_x.inc's `pairs`): each
// pair of x8 then sums to at most 128 in magnitude and each pair sum to at
// most 255·128 = 32640, exact. That costs at most half a bit of x in blocks
// whose two largest |x| are neighbours, and against recentring the codes
// and llama.cpp's sign trick (|q - 128| × x8·sign q) it saves six of the
// sixteen instructions per unit and row. vpdpbusd sums in int32 and takes
// x8 in ±127.
//
// Accuracy: the products and sums are exact, so y is the dequantized weight
// times x̂ in fp32; the one loss is x's rounding to int8 (at most 1/254 of
// each block's largest |x|). The bias term takes Σx̂, not the exact Σx: then
// the rounding errors meet w = s·q + b, which is centred, instead of s·q
// alone, whose codes average 7.5 (q4) or 127.5 (q8). Measured (q4 g64,
// K 512, M 7, random bf16 x, error vs the float64 oracle relative to its
// max): 0.019 with Σx, 0.0057 with Σx̂ (bf16's tolerance is 0.016;
// tests/test_linear.py states the errors at Talkie's shapes).
#include <cstring>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>  // always-inline intrinsics only: safe in every ISA's copy
#endif

#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {

#if defined(__AVX2__)
namespace {

#include "storage.inc"
#include "common.inc"
#include "quantize_x.inc"

// vpdpbusd (u8 × s8, four products summed into each int32 lane): the VEX
// form (AVX-VNNI) or the EVEX one (AVX512-VNNI on 256-bit vectors).
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define TK_INT8_VNNI 1
inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(acc, u, s);
}
#elif defined(__AVXVNNI__)
#define TK_INT8_VNNI 1
inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_avx_epi32(acc, u, s);
}
#else
#define TK_INT8_VNNI 0
#endif
constexpr bool kVnni = TK_INT8_VNNI;

constexpr int64_t kUnit = 2 * kLinearBlock;  // columns per step: two blocks

template <WeightKind W>
constexpr int64_t bits_of() {
  return W == WeightKind::q4 ? 4 : W == WeightKind::q6 ? 6 : 8;
}

// Bytes of one unit (64 columns) of a weight row.
template <WeightKind W>
constexpr int64_t unit_bytes() {
  return kUnit * bits_of<W>() / 8;
}

// Column (within the unit) of x8 byte P of a unit: bytes 0-31 meet c0, 32-63
// meet c1. q4: c0 is the low nibbles (even columns), c1 the high ones; q6
// and q8: c0 holds columns 0-15 of each block, c1 columns 16-31.
inline int64_t unit_column(WeightKind kind, int64_t P) {
  if (kind == WeightKind::q4) {
    return P < 32 ? 2 * P : 2 * (P - 32) + 1;
  }
  const int64_t Q = P % 32;
  return 32 * (Q / 16) + (P < 32 ? 0 : 16) + Q % 16;
}

inline __m256i two_halves(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)),
                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
}

inline __m256i low_half(const uint8_t* p) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// q6: one 6-byte group (8 codes) at byte `o` of each 128-bit lane -> 8 words
// laid out for vpmulhuw: code j sits at bit 6j of the group, i.e. at bit
// 6j % 8 of byte 6j / 8; the word holding that byte (and the next) is
// shifted right by 6j % 8 via the high half of a multiply by 2^(16 - shift),
// and codes at shift 0 put their byte in the high half and shift by 8.
__attribute__((always_inline)) inline __m256i q6_words(__m256i raw, int o) {
  const int8_t b = int8_t(o);
  const __m128i ctl = _mm_setr_epi8(-1, b, b, b + 1, b + 1, b + 2, b + 2, b + 3,  //
                                    -1, b + 3, b + 3, b + 4, b + 4, b + 5, b + 5, -1);
  const __m256i mul = _mm256_setr_epi16(256, 1024, 4096, 16384, 256, 1024, 4096, 16384,  //
                                        256, 1024, 4096, 16384, 256, 1024, 4096, 16384);
  const __m256i w = _mm256_mulhi_epu16(_mm256_shuffle_epi8(raw, _mm256_broadcastsi128_si256(ctl)), mul);
  return _mm256_and_si256(w, _mm256_set1_epi16(63));
}

// Unit u of a weight row -> c0, c1 (step 2). `half`: the row's last unit
// holds only one block (K % 64 == 32); the other half reads as zero codes
// (x8 and dx are zero there too).
template <WeightKind W>
__attribute__((always_inline)) inline void load_unit(const uint8_t* row, int64_t u, bool half, __m256i& c0, __m256i& c1) {
  const uint8_t* p = row + u * unit_bytes<W>();
  if constexpr (W == WeightKind::q4) {
    // byte i holds column 2i (low nibble) and 2i + 1 (high nibble).
    const __m256i v = half ? low_half(p) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i m = _mm256_set1_epi8(0x0F);
    c0 = _mm256_and_si256(v, m);
    c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  } else if constexpr (W == WeightKind::q8) {
    c0 = half ? low_half(p) : two_halves(p, p + 32);
    c1 = half ? low_half(p + 16) : two_halves(p + 16, p + 48);
  } else {
    // Each block is 24 bytes = four 6-byte groups; one 128-bit lane per
    // block: raw has its bytes 0-15 (groups 0, 1), raw8 its bytes 8-23
    // (groups 2, 3 at 4 and 10).
    const __m256i raw = half ? low_half(p) : two_halves(p, p + 24);
    const __m256i raw8 = half ? low_half(p + 8) : two_halves(p + 8, p + 32);
    c0 = _mm256_packus_epi16(q6_words(raw, 0), q6_words(raw, 6));
    c1 = _mm256_packus_epi16(q6_words(raw8, 4), q6_words(raw8, 10));
  }
}

// Step 3 for one row of x: the int32 lane sums of c · x8 over a unit.
template <WeightKind W>
__attribute__((always_inline)) inline __m256i unit_dot(__m256i c0, __m256i c1, const int8_t* x) {
  const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
#if TK_INT8_VNNI
  return dot4(dot4(_mm256_setzero_si256(), c0, x0), c1, x1);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i p0 = _mm256_maddubs_epi16(c0, x0), p1 = _mm256_maddubs_epi16(c1, x1);
  if constexpr (W == WeightKind::q8) {
    // Pair sums up to 255·128 (pair-scaled x): each widens on its own.
    return _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
  } else {
    // Codes < 64: each pair sum is below 2·63·127 and two of them fit int16.
    return _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones);
  }
#endif
}

inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

inline float* scratch(int64_t floats) {
  thread_local std::vector<float> kept;
  if (int64_t(kept.size()) < floats) {
    kept.resize(floats);
  }
  return kept.data();
}

// One unit u of NR rows of w against MR rows of x (steps 2-4). G32: group
// size 32, so the unit's two blocks have scales of their own; else both share
// scale[r][u >> gshift1]. HALF: the row's last unit holds one block.
template <WeightKind W, int MR, int NR, bool G32, bool HALF>
__attribute__((always_inline)) inline void unit_step(const LinearArgs& a, const uint8_t* const* row,
                                                     const float* const* scale, int gshift1, int64_t units,
                                                     int64_t u, __m256 (&acc)[MR][NR]) {
  constexpr int64_t ub = unit_bytes<W>();
  const int64_t rb = a.K * bits_of<W>() / 8;
  // The next row block's bytes of this unit, one request per cache line:
  // NR rows side by side are NR short streams, which the hardware
  // prefetcher alone keeps restarting.
  if ((u * ub) % 64 < ub) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      __builtin_prefetch(row[r] + NR * rb + u * ub);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    __m256i c0, c1;
    load_unit<W>(row[r], u, HALF, c0, c1);
    const __m256 sv = G32 ? _mm256_set_m128(_mm_broadcast_ss(scale[r] + 2 * u + 1), _mm_broadcast_ss(scale[r] + 2 * u))
                          : _mm256_broadcast_ss(scale[r] + (u >> gshift1));
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256i I = unit_dot<W>(c0, c1, a.x8 + (m * units + u) * kUnit);
      const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(a.dx + (m * units + u) * 8), sv);
      acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), d, acc[m][r]);
    }
  }
}

#if defined(__AVX512BW__) && defined(__AVX512DQ__)
// AVX-512 tables: two rows of w per 512-bit vector, row r in the low 256
// bits and row r + 1 in the high ones, so each instruction of steps 2-4 does
// the work of two. Every lane computes what unit_step's lane computes, in
// the same order. Measured on Zen 5 (full-width AVX-512; C++ harness, one
// core, K 5120, 256 rows in L2, interleaved against the 256-bit loop, with
// tile's one-pass scale conversion): q4 / q6 / q8 1.31 / 1.32 / 1.15x with
// VNNI, 1.28 / 1.32 / 1.05x without; from DRAM (2 cores) the same speed,
// ~85 % of the read probe counting scales and biases, as memory bounds it
// there. 8 rows in flight (4 read 1.1x faster in L2, no faster from DRAM;
// 16 0.86x).
#define TK_INT8_PAIRS 1

// unit_dot at 512 bits, x already loaded (one load of x serves every pair).
template <WeightKind W>
__attribute__((always_inline)) inline __m512i unit_dot2(__m512i c0, __m512i c1, __m512i x0, __m512i x1) {
#if TK_INT8_VNNI
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), c0, x0), c1, x1);
#else
  const __m512i ones = _mm512_set1_epi16(1);
  const __m512i p0 = _mm512_maddubs_epi16(c0, x0), p1 = _mm512_maddubs_epi16(c1, x1);
  if constexpr (W == WeightKind::q8) {
    return _mm512_add_epi32(_mm512_madd_epi16(p0, ones), _mm512_madd_epi16(p1, ones));
  } else {
    return _mm512_madd_epi16(_mm512_add_epi16(p0, p1), ones);
  }
#endif
}

inline __m512i join(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// q6_words on both rows at once (vpshufb and vpmulhuw work per 128-bit lane).
__attribute__((always_inline)) inline __m512i q6_words2(__m512i raw, int o) {
  const int8_t b = int8_t(o);
  const __m128i ctl = _mm_setr_epi8(-1, b, b, b + 1, b + 1, b + 2, b + 2, b + 3,  //
                                    -1, b + 3, b + 3, b + 4, b + 4, b + 5, b + 5, -1);
  const __m512i mul = _mm512_broadcast_i32x4(_mm_setr_epi16(256, 1024, 4096, 16384, 256, 1024, 4096, 16384));
  const __m512i w = _mm512_mulhi_epu16(_mm512_shuffle_epi8(raw, _mm512_broadcast_i32x4(ctl)), mul);
  return _mm512_and_si512(w, _mm512_set1_epi16(63));
}

// load_unit for rows ra (low half) and rb (high half).
template <WeightKind W>
__attribute__((always_inline)) inline void load_pair(const uint8_t* ra, const uint8_t* rb, int64_t u, bool half,
                                                      __m512i& c0, __m512i& c1) {
  const uint8_t* pa = ra + u * unit_bytes<W>();
  const uint8_t* pb = rb + u * unit_bytes<W>();
  if constexpr (W == WeightKind::q4) {
    const __m512i v = half ? join(low_half(pa), low_half(pb))
                           : join(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa)),
                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb)));
    const __m512i m = _mm512_set1_epi8(0x0F);
    c0 = _mm512_and_si512(v, m);
    c1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
  } else if constexpr (W == WeightKind::q8) {
    // Each row's 64 bytes as four 16-byte pieces 0-3: c0 takes pieces 0, 2
    // of each row, c1 pieces 1, 3 (one shuffle each, not four inserts).
    const __m512i va = half ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, pa) : _mm512_loadu_si512(pa);
    const __m512i vb = half ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, pb) : _mm512_loadu_si512(pb);
    c0 = _mm512_shuffle_i64x2(va, vb, 0x88);
    c1 = _mm512_shuffle_i64x2(va, vb, 0xDD);
  } else {
    const __m512i raw = half ? join(low_half(pa), low_half(pb)) : join(two_halves(pa, pa + 24), two_halves(pb, pb + 24));
    const __m512i raw8 = half ? join(low_half(pa + 8), low_half(pb + 8))
                              : join(two_halves(pa + 8, pa + 32), two_halves(pb + 8, pb + 32));
    c0 = _mm512_packus_epi16(q6_words2(raw, 0), q6_words2(raw, 6));
    c1 = _mm512_packus_epi16(q6_words2(raw8, 4), q6_words2(raw8, 10));
  }
}

// The scale vector of every pair in a tile at unit u: ts holds the tile's
// scales transposed, ts[g·NR + r] = s_g of row r (a zero group past the
// last), so one load per unit serves every pair. Lanes of the result: G32,
// rows' s_2u in lanes 0..NR-1 and s_2u+1 in NR..2NR-1; else s_g in 0..NR-1.
template <int NR, bool G32>
__attribute__((always_inline)) inline __m512 tile_scales(const float* ts, int gshift1, int64_t u) {
  constexpr int n = G32 ? 2 * NR : NR;
  const float* p = ts + n * (G32 ? u : u >> gshift1);
  return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
}

// Pair p's lanes of tile_scales: the low half takes row 2p's scales, the
// high half row 2p + 1's (G32: block 2u's in lanes 0-3 of each half, block
// 2u + 1's in lanes 4-7, as unit_step's sv).
template <int NR, bool G32>
inline __m512i pair_index(int p) {
  const int a = 2 * p, b = 2 * p + 1;
  if constexpr (G32) {
    return _mm512_setr_epi32(a, a, a, a, a + NR, a + NR, a + NR, a + NR, b, b, b, b, b + NR, b + NR, b + NR, b + NR);
  }
  return _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
}

// unit_step for NR rows of w as NR/2 pairs (accumulators acc[m][p]).
template <WeightKind W, int MR, int NR, bool G32, bool HALF>
__attribute__((always_inline)) inline void pair_step(const LinearArgs& a, const uint8_t* const* row, const float* ts,
                                                     int gshift1, int64_t units, int64_t u,
                                                     __m512 (&acc)[MR][NR / 2]) {
  constexpr int64_t ub = unit_bytes<W>();
  const int64_t rb = a.K * bits_of<W>() / 8;
  if ((u * ub) % 64 < ub) {  // (as unit_step)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      __builtin_prefetch(row[r] + NR * rb + u * ub);
    }
  }
  __m512i x0[MR], x1[MR];
  __m512 dx[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const int8_t* x = a.x8 + (m * units + u) * kUnit;
    x0[m] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
    x1[m] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
    dx[m] = _mm512_broadcast_f32x8(_mm256_loadu_ps(a.dx + (m * units + u) * 8));
  }
  const __m512 s = tile_scales<NR, G32>(ts, gshift1, u);
#pragma GCC unroll 4
  for (int p = 0; p < NR / 2; ++p) {
    __m512i c0, c1;
    load_pair<W>(row[2 * p], row[2 * p + 1], u, HALF, c0, c1);
    const __m512 sv = _mm512_permutexvar_ps(pair_index<NR, G32>(p), s);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512i I = unit_dot2<W>(c0, c1, x0[m], x1[m]);
      acc[m][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(dx[m], sv), acc[m][p]);
    }
  }
}
#else
#define TK_INT8_PAIRS 0
#endif

// MR rows of x (all of them) against NR consecutive rows of w from n0.
template <WeightKind W, int MR, int NR, bool G32>
void tile(const LinearArgs& a, int64_t n0) {
  const int64_t units = int8_units(a.K), whole = a.K / kUnit;
  const int64_t groups = a.K / a.group_size;
  const int64_t rb = a.K * bits_of<W>() / 8;
  constexpr bool pairs = TK_INT8_PAIRS && NR % 2 == 0;
  const uint8_t* row[NR];
  for (int r = 0; r < NR; ++r) {
    row[r] = static_cast<const uint8_t*>(a.w) + (n0 + r) * rb;
  }
  // The rows' s_g in fp32, with a zero group past the last (which a last
  // unit of one block reads): pairs read them transposed (tile_scales),
  // unit_step row by row (scale[r]). One pass straight from the source:
  // with pairs, converting the scales and biases into per-row fp32 arrays
  // first took about a fifth of the q4 loop's time (Zen 5, in L2); the
  // biases are read in their own dtype at the end instead.
  float* buf = scratch(NR * (groups + 1));
  const float* scale[NR];
  with_dtype(a.scale_dtype, [&](auto tag) {
    constexpr Dtype D = decltype(tag)::value;
    const auto* src = static_cast<const typename Storage<D>::type*>(a.scales) + n0 * groups;
    if constexpr (pairs) {
      for (int64_t g = 0; g < groups; ++g) {
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
          buf[g * NR + r] = load<D>(src[r * groups + g]);
        }
      }
      for (int r = 0; r < NR; ++r) {
        buf[groups * NR + r] = 0.0f;
      }
    } else {
      for (int r = 0; r < NR; ++r) {
        scale[r] = buf + r * (groups + 1);
        for (int64_t g = 0; g < groups; ++g) {
          buf[r * (groups + 1) + g] = load<D>(src[r * groups + g]);
        }
        buf[r * (groups + 1) + groups] = 0.0f;
      }
    }
  });
  const int gshift1 = a.group_size == 128 ? 1 : 0;  // unit u is in group u >> gshift1 (G32 false)
  __m256 acc[MR][NR];
#if TK_INT8_PAIRS
  if constexpr (pairs) {
    __m512 acc2[MR][NR / 2];
    for (int m = 0; m < MR; ++m) {
      for (int p = 0; p < NR / 2; ++p) {
        acc2[m][p] = _mm512_setzero_ps();
      }
    }
    for (int64_t u = 0; u < whole; ++u) {
      pair_step<W, MR, NR, G32, false>(a, row, buf, gshift1, units, u, acc2);
    }
    if (whole < units) {
      pair_step<W, MR, NR, G32, true>(a, row, buf, gshift1, units, whole, acc2);
    }
    for (int m = 0; m < MR; ++m) {
      for (int p = 0; p < NR / 2; ++p) {
        acc[m][2 * p] = _mm512_castps512_ps256(acc2[m][p]);
        acc[m][2 * p + 1] = _mm512_extractf32x8_ps(acc2[m][p], 1);
      }
    }
  }
#endif
  if constexpr (!pairs) {
    for (int m = 0; m < MR; ++m) {
      for (int r = 0; r < NR; ++r) {
        acc[m][r] = _mm256_setzero_ps();
      }
    }
    for (int64_t u = 0; u < whole; ++u) {
      unit_step<W, MR, NR, G32, false>(a, row, scale, gshift1, units, u, acc);
    }
    if (whole < units) {
      unit_step<W, MR, NR, G32, true>(a, row, scale, gshift1, units, whole, acc);
    }
  }
  // y = Σ lanes + Σ_g b_g·Σx̂_g, the biases read in their own dtype.
  with_dtype(a.bias_dtype, [&](auto tag) {
    constexpr Dtype D = decltype(tag)::value;
    const auto* bsrc = static_cast<const typename Storage<D>::type*>(a.biases) + n0 * groups;
    for (int m = 0; m < MR; ++m) {
      const float* xs = a.xsum + m * groups;
      for (int r = 0; r < NR; ++r) {
        const auto* bias = bsrc + r * groups;
        float bt[8] = {};
        int64_t g = 0;
        for (; g + 8 <= groups; g += 8) {
          for (int l = 0; l < 8; ++l) {
            bt[l] += load<D>(bias[g + l]) * xs[g + l];
          }
        }
        float v = hsum8(acc[m][r]);
        for (; g < groups; ++g) {
          v += load<D>(bias[g]) * xs[g];
        }
        for (int l = 0; l < 8; ++l) {
          v += bt[l];
        }
        const int64_t at = m * a.N + n0 + r;
        if (a.out_dtype == Dtype::bf16) {
          static_cast<uint16_t*>(a.out)[at] = store<Dtype::bf16>(v);
        } else {
          static_cast<uint16_t*>(a.out)[at] = store<Dtype::f16>(v);
        }
      }
    }
  });
}

// Rows of w in flight: 8 for one row of x (more streams hide more of
// memory's latency), fewer as rows of x add accumulators (16 registers).
template <WeightKind W, int MR, bool G32>
void rows_mr(const LinearArgs& a, int64_t begin, int64_t end) {
  constexpr int NR = MR == 1 ? 8 : MR == 2 ? 4 : MR <= 4 ? 2 : 1;
  int64_t n = begin;
  for (; n + NR <= end; n += NR) {
    tile<W, MR, NR, G32>(a, n);
  }
  for (; n < end; ++n) {
    tile<W, MR, 1, G32>(a, n);
  }
}

template <WeightKind W, int MR>
void rows_mr(const LinearArgs& a, int64_t begin, int64_t end) {
  return a.group_size == 32 ? rows_mr<W, MR, true>(a, begin, end) : rows_mr<W, MR, false>(a, begin, end);
}

template <WeightKind W>
void rows_kind(const LinearArgs& a, int64_t begin, int64_t end) {
  switch (a.M) {
    case 1:
      return rows_mr<W, 1>(a, begin, end);
    case 2:
      return rows_mr<W, 2>(a, begin, end);
    case 3:
      return rows_mr<W, 3>(a, begin, end);
    case 4:
      return rows_mr<W, 4>(a, begin, end);
    case 5:
      return rows_mr<W, 5>(a, begin, end);
    case 6:
      return rows_mr<W, 6>(a, begin, end);
    default:
      return rows_mr<W, 7>(a, begin, end);
  }
}

} // namespace

void linear_quantize_x(const LinearX& x, WeightKind kind, int64_t group_size, int8_t* x8, float* dx, float* xsum,
                       int64_t begin, int64_t end) {
  const int64_t units = int8_units(x.K), groups = x.K / group_size;
  const bool pairs = pair_scaled(kind, kVnni);  // (the file comment)
  int64_t col[kUnit];
  for (int64_t P = 0; P < kUnit; ++P) {
    col[P] = unit_column(kind, P);
  }
  with_dtype(x.dtype, [&](auto tag) {
    constexpr Dtype D = decltype(tag)::value;
    const auto* src = static_cast<const typename Storage<D>::type*>(x.ptr);
    for (int64_t m = begin; m < end; ++m) {
      const auto* xr = src + m * x.row_stride;
      // Σx̂ per group accumulates block by block (groups hold whole blocks).
      float* xs = xsum + m * groups;
      for (int64_t g = 0; g < groups; ++g) {
        xs[g] = 0.0f;
      }
      for (int64_t u = 0; u < units; ++u) {
        float v[kUnit];
        int8_t q[kUnit];
        for (int64_t k = 0; k < kUnit; ++k) {
          const int64_t c = u * kUnit + k;
          v[k] = c < x.K ? load<D>(xr[c * x.col_stride]) : 0.0f;
        }
        for (int b = 0; b < 2 && (2 * u + b) * kLinearBlock < x.K; ++b) {
          int32_t sum;
          const float d = quantize_block(v + b * kLinearBlock, q + b * kLinearBlock, &sum, pairs);
          xs[(2 * u + b) * kLinearBlock / group_size] += d * float(sum);
          for (int l = 0; l < 4; ++l) {
            dx[(m * units + u) * 8 + 4 * b + l] = d;
          }
        }
        if ((2 * u + 1) * kLinearBlock >= x.K) {  // a last unit of one block
          std::memset(q + kLinearBlock, 0, kLinearBlock);
          for (int l = 4; l < 8; ++l) {
            dx[(m * units + u) * 8 + l] = 0.0f;
          }
        }
        for (int64_t P = 0; P < kUnit; ++P) {
          x8[(m * units + u) * kUnit + P] = q[col[P]];
        }
      }
    }
  });
}

void linear_int8(const LinearArgs& a, int64_t begin, int64_t end) {
  switch (a.kind) {
    case WeightKind::q4:
      return rows_kind<WeightKind::q4>(a, begin, end);
    case WeightKind::q6:
      return rows_kind<WeightKind::q6>(a, begin, end);
    default:
      return rows_kind<WeightKind::q8>(a, begin, end);
  }
}
#endif

} // namespace tk::kern::TK_ISA
