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
//      (8-bit codes without VNNI: see below), one float per block,
//      x8 = round(x / dx_b); Σx̂_g per quantization group g of the rounded
//      x̂ = dx_b·x8 (not of x: see Accuracy).
//   2. A row of w at a time (side_by_side), per 64 columns (two blocks, a unit):
//      the codes as two vectors of 32 bytes, c0 and c1, whose 32-bit lanes
//      0-3 hold block 2u's bytes and lanes 4-7 block 2u+1's; x8 is stored
//      in the order that matches (quantize_unit, x8_at), so no shuffle meets
//      the codes.
//   3. I = Σ of the 4-byte products per lane (vpdpbusd with VNNI, else
//      vpmaddubsw then vpmaddwd), exact in int32.
//   4. acc += float(I) · (dx_b · s_g) per lane (fp32; dx_b in one of two
//      layouts, kernels.h's int8_dx_expanded); at the end
//      y = Σ lanes of acc + Σ_g b_g · Σx̂_g, rounded once to bf16 / fp16.
//   (AVX-512 tables: steps 2-4 for two units of the row per 512-bit vector,
//   see pair_step; AVX2 tables, 4-bit codes: four units a step, their lane
//   sums reduced to one per block before step 4, see quad_step.)
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
#include <algorithm>
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
#include "vec.inc"

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

inline __m256i two_halves(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)),
                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
}

inline __m256i low_half(const uint8_t* p) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// q6, 256-bit tables: four 3-byte triples (16 codes) at byte `o` of each
// 128-bit lane -> 16 bytes, the codes of each triple in the order j1 j0 j3
// j2 (quantize_unit stores x to match: q6_pair_swapped). A triple's 24 bits
// hold code j at bits 6j. 1. vpshufb copies bytes (b0, b1, b1, b2) of each
// triple into a 32-bit lane: word (b0, b1) holds j0 at bits 0-5 and j1 at
// 6-11, word (b1, b2) j2 at 4-9 and j3 at 10-15. 2. Each word's fields,
// masked, move to their bytes in one right shift (the high half of a
// multiply: j1 by 2^10, j3 by 2^6, to bits 0-5) and one left shift (the low
// half: j0 by 2^8, j2 by 2^4, to bits 8-13). 3. The two halves hold
// disjoint bits: their or is the 16 clean codes. Six instructions per 32
// codes against seven and a half for the unpack to words (vpshufb,
// vpmulhuw, vpand per 16 codes, then vpackuswb) it replaced: measured on
// Zen 3 (v3, M = 1, one core, weights in L1 / L2, C++ copy of the loop)
// 2.14-2.16 ns per 64 columns against 2.34-2.36, 1.09x. (The AVX-512 pair
// loop keeps the unpack to words: q6_words2; unmeasured there.)
__attribute__((always_inline)) inline __m256i q6_triples(__m256i raw, int o) {
  const int8_t b = int8_t(o);
  const __m128i ctl = _mm_setr_epi8(b, b + 1, b + 1, b + 2, b + 3, b + 4, b + 4, b + 5,  //
                                    b + 6, b + 7, b + 7, b + 8, b + 9, b + 10, b + 10, b + 11);
  const __m256i d = _mm256_shuffle_epi8(raw, _mm256_broadcastsi128_si256(ctl));
  // Per 32-bit lane: low word j1 (mask 0x0FC0, x 2^10), high word j3 (0xFC00, x 2^6) ...
  const __m256i right = _mm256_mulhi_epu16(_mm256_and_si256(d, _mm256_set1_epi32(int32_t(0xFC000FC0))),
                                           _mm256_set1_epi32(0x00400400));
  // ... low word j0 (0x003F, x 2^8), high word j2 (0x03F0, x 2^4).
  const __m256i left = _mm256_mullo_epi16(_mm256_and_si256(d, _mm256_set1_epi32(0x03F0003F)),
                                          _mm256_set1_epi32(0x00100100));
  return _mm256_or_si256(right, left);
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
    // (groups 2, 3 at 4 and 10). Whole units take them from three 256-bit
    // loads and two blends (any vector pipe) rather than 128-bit inserts
    // (the shuffle pipes' vpshufb share): 1.04x the loop's speed on Zen 3.
    __m256i raw, raw8;
    if (half) {
      raw = low_half(p);
      raw8 = low_half(p + 8);
    } else {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i v8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
      const __m256i v16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
      raw = _mm256_blend_epi32(v0, v8, 0xF0);     // bytes 0-15 | 24-39
      raw8 = _mm256_blend_epi32(v8, v16, 0xF0);  // bytes 8-23 | 32-47
    }
    c0 = q6_triples(raw, 0);   // bytes 0-11: codes 0-15
    c1 = q6_triples(raw8, 4);  // bytes 12-23: codes 16-31
  }
}

#if !TK_INT8_VNNI
// Codes < 64 (q4, q6) against a unit of x: the 16 words of p0 + p1, the
// vpmaddubsw pair sums of c0 · x[0:32] and c1 · x[32:64]; each pair sum is
// below 2·63·127, so two of them fit int16.
__attribute__((always_inline)) inline __m256i word_sums(__m256i c0, __m256i c1, const int8_t* x) {
  return _mm256_add_epi16(_mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))),
                          _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32))));
}
#endif

// Step 3 for one row of x: the int32 lane sums of c · x8 over a unit.
template <WeightKind W>
__attribute__((always_inline)) inline __m256i unit_dot(__m256i c0, __m256i c1, const int8_t* x) {
#if TK_INT8_VNNI
  const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
  return dot4(dot4(_mm256_setzero_si256(), c0, x0), c1, x1);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (W == WeightKind::q8) {
    // Pair sums up to 255·128 (pair-scaled x): each widens on its own.
    const __m256i p0 = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
    const __m256i p1 = _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
    return _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
  } else {
    return _mm256_madd_epi16(word_sums(c0, c1, x), ones);
  }
#endif
}

inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// A thread's kept buffer `Slot` of at least `floats` floats.
template <int Slot>
inline float* scratch(int64_t floats) {
  thread_local std::vector<float> kept;
  if (int64_t(kept.size()) < floats) {
    kept.resize(floats);
  }
  return kept.data();
}

// Where a row of w is read (step 2), the same offset of the row that will be
// read next in its place (the next row, or R rows on when R are read side by
// side: side_by_side; at least kMinLead bytes on, below) is requested into L2
// (prefetcht1), one request per cache line: the rows a thread reads are one sequential stream, and the
// request keeps a row's time of lead on it across page boundaries, where the
// hardware prefetcher stops. Into L1 (prefetcht0) it evicts x8 at K 13696,
// whose rows of x8 and w together fill L1: measured on Zen 4 (2 cores, DRAM,
// interleaved builds, share of the read probe), q4 K 13696 -> 5120 54-62 %
// with prefetcht0 against 68-85 % with prefetcht1, q8 66-68 % against 80-95 %;
// at K 5120 q4 is alike and q8 gains (75-80 % -> 86-96 %). The exception is q6
// at K 13696 on AVX2 (v3): 62 % with prefetcht0, 45-49 % with prefetcht1.
template <int64_t kBytes>
__attribute__((always_inline)) inline void prefetch_next_row(const uint8_t* p, int64_t lead) {
#pragma GCC unroll 4
  for (int64_t o = 0; o < kBytes; o += 64) {
    __builtin_prefetch(p + lead + o, 0, 2);
  }
}

// The request's lead in bytes: R rows (side_by_side), and at least
// kMinLead, since a short row (q4 at K 5120: 2.5 KB) is ~0.2 µs of one
// core's share of the bandwidth, about one DRAM latency in a VM. Measured on a
// Sapphire-Rapids-class Xeon (v4-vnni, 2 cores, DRAM, q4 5120 -> 5120,
// C++ harness, three interleaved rounds, mean GB/s): 21.4-21.7 with one
// row's lead, 21.7-22.3 with 4 KB, 22.6-22.7 with 6 KB (q6, 3.75 KB rows:
// alike within the noise; rows of 6 KB and more are unchanged). On Zen 3
// (v3, q4, 2 cores, DRAM, 2 MiB pages, 8 interleaved process rounds,
// medians) leads of 2 / 3 / 4 / 12 / 24 KB measured 0.86-1.09x of 6 KB with
// the sign changing between repeat runs (2 KB at 13696 -> 5120: 1.09x,
// then 0.91x), and prefetcht0 0.87-1.05x: within the VM's noise, unchanged.
constexpr int64_t kMinLead = 6144;

// A row's scales and biases (groups elements each) are two short streams
// beside the codes' long one, read once per row at its start (step 1); the
// hardware prefetcher serves them poorly, so they are requested into L1
// kScaleLead rows ahead. Measured on Zen 3 (2 cores, DRAM, AVX2 (v3), M = 1,
// four runs of interleaved builds, medians as a share of the read probe):
// q8 5120 -> 15360 79-88 % without, 85-93 % with; 5120 -> 5120 83-87 %
// against 87-96 %; q4, q6 and M = 2 alike within the noise (+-8 %); 2 and 4
// rows ahead measured worse than 6.
constexpr int64_t kScaleLead = 6;
inline void prefetch_row_scales(const LinearArgs& a, int64_t n, int64_t end, int64_t groups) {
  if (n + kScaleLead >= end) {
    return;
  }
  auto ahead = [&](const void* base, Dtype d) {
    const int64_t bytes = groups * (d == Dtype::f32 ? 4 : 2);
    const uint8_t* p = static_cast<const uint8_t*>(base) + (n + kScaleLead) * bytes;
    for (int64_t o = 0; o < bytes; o += 64) {
      __builtin_prefetch(p + o, 0, 3);
    }
  };
  ahead(a.scales, a.scale_dtype);
  ahead(a.biases, a.bias_dtype);
}

// The per-row scale factors of one step for a row of x: lanes 0-3 of the
// 256-bit result take block 2u's dx_b·s_g, lanes 4-7 block 2u + 1's. `dx`:
// x's block scales from block 2u (4 floats: dx is padded), `s`: the row's
// scales in fp32 (rows_of's buffer, padded), GS the group size.
template <int GS>
__attribute__((always_inline)) inline __m256 unit_scales(const float* dx, const float* s, int64_t u) {
  const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const __m128 d = _mm_loadu_ps(dx);
  if constexpr (GS == 32) {
    return _mm256_permutevar8x32_ps(_mm256_zextps128_ps256(_mm_mul_ps(d, _mm_loadu_ps(s + 2 * u))), idx);
  } else {
    return _mm256_mul_ps(_mm256_permutevar8x32_ps(_mm256_zextps128_ps256(d), idx),
                         _mm256_broadcast_ss(s + (GS == 64 ? u : u >> 1)));
  }
}

// Expanded dx (int8_dx_expanded: M != 2): the row of w's part of unit u's
// scale factors, lanes 0-3 block 2u's s_g, lanes 4-7 block 2u + 1's; once
// per unit, shared by the rows of x, which each multiply it by their dx.
template <int GS>
__attribute__((always_inline)) inline __m256 unit_row_scales(const float* s, int64_t u) {
  if constexpr (GS == 32) {
    const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    return _mm256_permutevar8x32_ps(_mm256_zextps128_ps256(_mm_loadu_ps(s + 2 * u)), idx);
  } else {
    return _mm256_broadcast_ss(s + (GS == 64 ? u : u >> 1));
  }
}

// Steps 2-4 for unit u of one row of w against MR rows of x. HALF: the
// row's last unit holds one block.
template <WeightKind W, int MR, int GS, bool HALF>
__attribute__((always_inline)) inline void unit_step(const LinearArgs& a, const uint8_t* row, const float* s,
                                                     int64_t u, int64_t x8_stride, int64_t dx_stride, int64_t lead,
                                                     __m256 (&acc)[MR]) {
  constexpr int64_t ub = unit_bytes<W>();
  // One request per line of the target (first_in_line, by address): by
  // offset in the row it skipped lines of q6 rows at K 13696. Measured on
  // Zen 4 (v3, q6 13696 -> 5120, DRAM, interleaved builds): one core 9.3 ->
  // 12.0 GB/s (6 of 6 rounds), two 15.0-16.2 -> 20.2-20.3 (7 of 8, twice);
  // q4 alike. (The AVX-512 pair loop asks for every line of its 96 bytes.)
  const uint8_t* p = row + u * ub;
  if (first_in_line(p + lead, ub)) {
    prefetch_next_row<ub>(p, lead);
  }
  __m256i c0, c1;
  load_unit<W>(row, u, HALF, c0, c1);
  constexpr bool kExpanded = int8_dx_expanded(MR);
  const __m256 rs = kExpanded ? unit_row_scales<GS>(s, u) : __m256{};
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const __m256i I = unit_dot<W>(c0, c1, a.x8 + m * x8_stride + u * kUnit);
    const float* dx = a.dx + m * dx_stride;
    const __m256 f = kExpanded ? _mm256_mul_ps(_mm256_loadu_ps(dx + 8 * u), rs) : unit_scales<GS>(dx + 2 * u, s, u);
    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I), f, acc[m]);
  }
}

#if defined(__AVX512BW__) && defined(__AVX512DQ__)
// AVX-512 tables: units u and u + 1 (u even) of one row of w per 512-bit
// vector, so each instruction of steps 2-4 does the work of two and a row is
// still read in order. x8 stores each such pair of units interleaved
// (x8_at), so its halves load as two plain 512-bit vectors. Every lane
// computes what unit_step's lane computes, in the same order.
#define TK_INT8_PAIRS 1

// unit_dot at 512 bits.
template <WeightKind W>
__attribute__((always_inline)) inline __m512i unit_dot2(__m512i c0, __m512i c1, const int8_t* x) {
  const __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 64);
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

// q6, the AVX-512 pair loop: one 6-byte group (8 codes) at byte `o` of each
// 128-bit lane -> 8 words, code j (at bit 6j of the group, i.e. bit 6j % 8
// of byte 6j / 8) from the word holding that byte and the next, shifted
// right by 6j % 8 as the high half of a multiply by 2^(16 - shift) (codes
// at shift 0 put their byte in the high half and shift by 8), then masked;
// vpackuswb joins two groups' words into bytes in column order.
__attribute__((always_inline)) inline __m512i q6_words2(__m512i raw, int o) {
  const int8_t b = int8_t(o);
  const __m128i ctl = _mm_setr_epi8(-1, b, b, b + 1, b + 1, b + 2, b + 2, b + 3,  //
                                    -1, b + 3, b + 3, b + 4, b + 4, b + 5, b + 5, -1);
  const __m512i mul = _mm512_broadcast_i32x4(_mm_setr_epi16(256, 1024, 4096, 16384, 256, 1024, 4096, 16384));
  const __m512i w = _mm512_mulhi_epu16(_mm512_shuffle_epi8(raw, _mm512_broadcast_i32x4(ctl)), mul);
  return _mm512_and_si512(w, _mm512_set1_epi16(63));
}

inline __m512i join(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// load_unit for the two units at p: the first in the low 256 bits.
template <WeightKind W>
__attribute__((always_inline)) inline void load_two(const uint8_t* p, __m512i& c0, __m512i& c1) {
  constexpr int64_t ub = unit_bytes<W>();
  if constexpr (W == WeightKind::q4) {
    const __m512i v = _mm512_loadu_si512(p);
    const __m512i m = _mm512_set1_epi8(0x0F);
    c0 = _mm512_and_si512(v, m);
    c1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
  } else if constexpr (W == WeightKind::q8) {
    // Each unit's 64 bytes as four 16-byte pieces 0-3: c0 takes pieces 0, 2
    // of each unit, c1 pieces 1, 3 (one shuffle each, not four inserts).
    const __m512i va = _mm512_loadu_si512(p), vb = _mm512_loadu_si512(p + ub);
    c0 = _mm512_shuffle_i64x2(va, vb, 0x88);
    c1 = _mm512_shuffle_i64x2(va, vb, 0xDD);
  } else {
    // (Tried with AVX512-VBMI, Zen 5: each 6-byte group into a qword by
    // vpermt2b, then vpmultishiftqb and a mask, 6 instructions per 128
    // codes: 1.06-1.56x, median 1.3x, this loop's speed with the weights in
    // L2 (one core, interleaved), but 0.8-0.97x from DRAM (2 cores,
    // interleaved, q6 5120 -> 5120 and 13696 -> 5120), with or without the
    // row prefetch and with 12 or 24 KB of lead; not taken.)
    const __m512i raw = join(two_halves(p, p + 24), two_halves(p + ub, p + ub + 24));
    const __m512i raw8 = join(two_halves(p + 8, p + 32), two_halves(p + ub + 8, p + ub + 32));
    c0 = _mm512_packus_epi16(q6_words2(raw, 0), q6_words2(raw, 6));
    c1 = _mm512_packus_epi16(q6_words2(raw8, 4), q6_words2(raw8, 10));
  }
}

// unit_scales for units u, u + 1: blocks 2u .. 2u + 3 in lanes 0-3, 4-7,
// 8-11, 12-15: the row of w's part, shared by the rows of x (pair_d; with
// expanded dx, a multiply). Compact dx, GS 32: the 4 blocks' s_g in lanes
// 0-3 (pair_d spreads them after its multiply).
template <int GS, bool EXPANDED>
__attribute__((always_inline)) inline __m512 pair_scales(const float* s, int64_t u) {
  if constexpr (GS == 32 && EXPANDED) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(idx, _mm512_zextps128_ps512(_mm_loadu_ps(s + 2 * u)));
  } else if constexpr (GS == 32) {
    return _mm512_zextps128_ps512(_mm_loadu_ps(s + 2 * u));
  } else if constexpr (GS == 64) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(idx, _mm512_zextps128_ps512(_mm_loadu_ps(s + u)));
  } else {
    return _mm512_set1_ps(s[u >> 1]);
  }
}

// unit_scales for units u, u + 1 and one row of x: its dx_b from block 2u
// (4 floats) times the row of w's part `sv`, each block's in its 4 lanes.
template <int GS>
__attribute__((always_inline)) inline __m512 pair_d(const float* dx, __m512 sv) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512 d = _mm512_zextps128_ps512(_mm_loadu_ps(dx));
  if constexpr (GS == 32) {
    return _mm512_permutexvar_ps(idx, _mm512_mul_ps(d, sv));  // (the low 4 lanes are the ones read)
  } else {
    return _mm512_mul_ps(_mm512_permutexvar_ps(idx, d), sv);
  }
}

// unit_step for units u and u + 1 (u even, below paired_units).
template <WeightKind W, int MR, int GS>
__attribute__((always_inline)) inline void pair_step(const LinearArgs& a, const uint8_t* row, const float* s,
                                                     int64_t u, int64_t x8_stride, int64_t dx_stride, int64_t lead,
                                                     __m512 (&acc)[MR]) {
  constexpr int64_t ub = unit_bytes<W>();
  prefetch_next_row<2 * ub>(row + u * ub, lead);
  __m512i c0, c1;
  load_two<W>(row + u * ub, c0, c1);
  constexpr bool kExpanded = int8_dx_expanded(MR);
  const __m512 sv = pair_scales<GS, kExpanded>(s, u);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const __m512i I = unit_dot2<W>(c0, c1, a.x8 + m * x8_stride + u * kUnit);
    const float* dx = a.dx + m * dx_stride;
    const __m512 f = kExpanded ? _mm512_mul_ps(_mm512_loadu_ps(dx + 8 * u), sv) : pair_d<GS>(dx + 2 * u, sv);
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), f, acc[m]);
  }
}

inline float hsum16(__m512 v) {
  return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}
#else
#define TK_INT8_PAIRS 0
#endif

#if !TK_INT8_PAIRS
// AVX2 tables, 4-bit codes: four units of a row of w per step (quad_step),
// their int32 lane sums reduced to one per block (vphaddw, vphaddd) before
// the one conversion and scaling, which unit_step does per unit: per four
// units vpmaddubsw ×8, vpmaddwd ×2 and one vcvtdq2ps, vmulps and vfmadd
// instead of ×8, ×4 and four each (Zen 3 runs these five on two pipes:
// kernels.h's int8_dx_expanded). Measured on Zen 3 (v3, M = 1, interleaved
// builds): one core, weights in L3 (best of 40), M = 1 5-7 % less time
// per row at 5120 and 13696 columns, M = 2 / 4 / 7 at 5120 28 / 9-27 / 15 %
// less; two cores from DRAM, medians of 6 rounds, q4
// 1.27 / 0.98 / 1.16× at 5120 -> 5120, 13696 -> 5120, 5120 -> 15360 and
// 1.01 / 1.03 / 1.12× at 5120 -> 5120, 13696 -> 5120, 5120 -> 27392 the
// speed of unit_step alone. q6 and q8 (vpmaddwd per unit either way, so
// less saved) measured 0.90-1.10× and 0.93-1.21×, medians below 1: they
// keep unit_step.
#define TK_INT8_QUADS 1
constexpr int64_t kQuad = 4;  // units per quad_step

// Whole quads of a row of K columns (4-bit codes; the others take none).
template <WeightKind W>
inline int64_t quads_of(int64_t K) {
  return W == WeightKind::q4 ? K / kUnit / kQuad : 0;
}

// A quad's scale factors are 8 lanes: lanes 0-3 the even blocks of units
// u .. u + 3 (block 2u + 2j in lane j), lanes 4-7 the odd ones, the order
// in which quad_step leaves their sums.
//
// The row of w's part, from its fp32 scales s (padded) at unit u (u % 4 == 0).
template <int GS>
__attribute__((always_inline)) inline __m256 quad_row_scales(const float* s, int64_t u) {
  if constexpr (GS == 32) {
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + 2 * u), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  } else if constexpr (GS == 64) {
    return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s + u));
  } else {
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + u / 2)),
                                    _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1));
  }
}

// x's part: dx in quad order, 8 floats per quad for each of the MR rows of x
// (quads per row `quads`), from dx's layout (int8_dx_expanded), once per
// rows_of call.
inline void quad_dx(const LinearArgs& a, int MR, int64_t quads, int64_t dx_stride, float* dq) {
  const bool expanded = int8_dx_expanded(MR);
  for (int m = 0; m < MR; ++m) {
    const float* d = a.dx + m * dx_stride;
    for (int64_t q = 0; q < quads; ++q) {
      for (int j = 0; j < 8; ++j) {
        const int64_t b = 2 * (kQuad * q + j % 4) + j / 4;  // lane j's block
        dq[(m * quads + q) * 8 + j] = expanded ? d[8 * (b / 2) + 4 * (b % 2)] : d[b];
      }
    }
  }
}

// Step 3 for two units (u, u + 1) of 4-bit codes and one row of x: their
// lane sums in 8 int32 lanes, per 128-bit half [u: 2 | u + 1: 2] partial
// sums of the half's block, so that one vphaddd of two such results leaves
// one sum per block in quad order.
__attribute__((always_inline)) inline __m256i pair_dot(__m256i a0, __m256i a1, __m256i b0, __m256i b1,
                                                       const int8_t* x) {
#if TK_INT8_VNNI
  return _mm256_hadd_epi32(unit_dot<WeightKind::q4>(a0, a1, x), unit_dot<WeightKind::q4>(b0, b1, x + kUnit));
#else
  // Codes < 16: each of word_sums' words is at most 4·15·127 and two of
  // them (vphaddw) at most 15240, exact in int16.
  return _mm256_madd_epi16(_mm256_hadd_epi16(word_sums(a0, a1, x), word_sums(b0, b1, x + kUnit)),
                           _mm256_set1_epi16(1));
#endif
}

// Steps 2-4 for units u .. u + 3 (u % 4 == 0, all whole) of one row of 4-bit
// codes against MR rows of x; dq: quad_dx's rows at this quad, dq_stride
// floats apart.
template <int MR, int GS>
__attribute__((always_inline)) inline void quad_step(const LinearArgs& a, const uint8_t* row, const float* s,
                                                     const float* dq, int64_t u, int64_t x8_stride,
                                                     int64_t dq_stride, int64_t lead, __m256 (&acc)[MR]) {
  constexpr WeightKind W = WeightKind::q4;
  constexpr int64_t ub = unit_bytes<W>();
  __m256i half[MR];  // units u, u + 1 (pair_dot), then joined with u + 2, u + 3
  for (int h = 0; h < 2; ++h) {
    __m256i c[2][2];
    for (int j = 0; j < 2; ++j) {
      const uint8_t* p = row + (u + 2 * h + j) * ub;
      if (first_in_line(p + lead, ub)) {  // (unit_step's request)
        prefetch_next_row<ub>(p, lead);
      }
      load_unit<W>(row, u + 2 * h + j, false, c[j][0], c[j][1]);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256i I = pair_dot(c[0][0], c[0][1], c[1][0], c[1][1], a.x8 + m * x8_stride + (u + 2 * h) * kUnit);
      half[m] = h == 0 ? I : _mm256_hadd_epi32(half[m], I);
    }
  }
  const __m256 rs = quad_row_scales<GS>(s, u);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(dq + m * dq_stride), rs);
    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(half[m]), f, acc[m]);
  }
}
#else
#define TK_INT8_QUADS 0
#endif

// Units of a row covered by pair_step (AVX-512 tables: whole units in pairs).
inline int64_t paired_units(int64_t K) {
  return TK_INT8_PAIRS ? (K / kUnit) & ~int64_t(1) : 0;
}

// Whether unit u of a q6 row unpacks by q6_triples (every unit unit_step
// reads), whose codes come in pairs swapped (j1 j0 j3 j2 ...), rather than
// q6_words2 (the AVX-512 pair loop's units, below paired_units), in order.
inline bool q6_pair_swapped(WeightKind kind, int64_t u, int64_t paired) {
  return kind == WeightKind::q6 && u >= paired;
}

// Offset within a row of x8 of byte P (0-63, quantize_unit's order) of unit u:
// a pair of units (u, u + 1) below paired_units stores bytes 0-31 of both,
// then bytes 32-63 of both.
inline int64_t x8_at(int64_t u, int64_t P, int64_t paired) {
  if (u < paired) {
    return (u & ~int64_t(1)) * kUnit + (P < 32 ? 0 : 64) + (u & 1) * 32 + P % 32;
  }
  return u * kUnit + P;
}

// Rows of w a thread reads side by side (row_block's R; rows_of walks its
// rows [begin, end) in such blocks). One at a time, the rows a thread reads
// are one sequential stream. Several side by side sharing each load of x (the
// loop this replaced read 8 for one row of x, each requesting only its own
// next row) are as many short streams, on which the hardware prefetcher
// keeps restarting: measured on Zen 4 (2 cores, DRAM, M = 1, share of the
// read probe, v3 / v4 / v4-vnni) q4 5120 -> 15360 64 / 64 / 62 % with 8 rows
// against 74-79 / 76-82 / 85 % one row at a time, q8 64-69 % against
// 86-96 %. x8 and dx stay in L1 from row to row.
//
// The exception is 8-bit codes on AVX2 at M = 1, where each row's request is
// for the same bytes R rows on (the next block's row): their loop costs the
// fewest instructions per byte, so it waits on memory alone, and four such
// streams a thread keep more of DRAM busy than one. Measured on Zen 3 (v3,
// 2 cores, DRAM, weights in 2 MiB pages, six interleaved process rounds,
// medians) q8 5120 -> 5120 / 13696 -> 5120 / 5120 -> 15360 / 5120 -> 27392
// 1.13 / 1.10 / 1.15 / 1.09x with four rows (5-6 of 6 rounds faster), two
// rows 1.02 / 0.99x. q4 and q6 measured slower with four rows (one core,
// weights in L3: q4 0.89x, q6 0.97x; DRAM q4 0.83-0.89x, q6 0.70-0.97x;
// q4 with two rows 0.78-1.20x, within this VM's noise): they keep one row,
// as do the AVX-512 tables (four rows unmeasured there). (q6 spends about
// as long on its instructions as on the memory; q4's loop, ~14 cycles per
// 256 columns at 3.2 GHz in isolation, runs at ~1.5x a core's share of
// DRAM, so its shortfall from DRAM is not its instructions.)
template <WeightKind W, int MR>
constexpr int side_by_side() {
  return W == WeightKind::q8 && MR == 1 && !TK_INT8_PAIRS ? 4 : 1;
}

// Floats per row of rows_of's scale buffer: the row's scales in fp32, then
// zeros that the padded loads and a last unit of one block read.
inline int64_t scale_stride(int64_t groups) {
  return groups + 8;
}

// Rows n .. n + R - 1 of w side by side against all MR rows of x (rows_of;
// sbuf: R rows of scale_stride floats, their padding zeroed).
template <WeightKind W, int MR, int GS, int R>
__attribute__((always_inline)) inline void row_block(const LinearArgs& a, int64_t n, int64_t end, float* sbuf,
                                                     [[maybe_unused]] const float* dq) {
  const int64_t units = int8_units(a.K), whole = a.K / kUnit;
  [[maybe_unused]] const int64_t paired = paired_units(a.K);  // (AVX-512 tables)
  const int64_t groups = a.K / GS, rb = a.K * bits_of<W>() / 8, lead = std::max(R * rb, kMinLead);
  const int64_t x8_stride = units * kUnit, dx_stride = int8_dx_stride(a.K, MR);
  const uint8_t* rows[R];
  float* srow[R];  // each row's scales in fp32
  float bt[R][MR];
  for (int r = 0; r < R; ++r) {
    rows[r] = static_cast<const uint8_t*>(a.w) + (n + r) * rb;
    float* s = srow[r] = sbuf + r * scale_stride(groups);
    prefetch_row_scales(a, n + r, end, groups);
    // 1. s_g of the row in fp32; the bias terms Σ_g b_g·Σx̂_g.
    with_dtype(a.scale_dtype, [&](auto tag) {
      constexpr Dtype D = decltype(tag)::value;
      const auto* src = static_cast<const typename Storage<D>::type*>(a.scales) + (n + r) * groups;
      int64_t g = 0;
      for (; g + kVec <= groups; g += kVec) {
        vstore(s + g, vload_float<D>(src + g));
      }
      for (; g < groups; ++g) {
        s[g] = load<D>(src[g]);
      }
    });
    with_dtype(a.bias_dtype, [&](auto tag) {
      constexpr Dtype D = decltype(tag)::value;
      const auto* bias = static_cast<const typename Storage<D>::type*>(a.biases) + (n + r) * groups;
      for (int m = 0; m < MR; ++m) {
        const float* xsum = a.xsum + m * groups;
        fvec t{};
        int64_t g = 0;
        for (; g + kVec <= groups; g += kVec) {
          t += vload_float<D>(bias + g) * vload<fvec>(xsum + g);
        }
        float v = vsum(t);
        for (; g < groups; ++g) {
          v += load<D>(bias[g]) * xsum[g];
        }
        bt[r][m] = v;
      }
    });
  }
  // 2-4. The units. One row at a time and M = 1: two accumulators, even
  // and odd units, else the one FMA chain (4 cycles a link on Zen 3) bounds
  // the loop. (Decided by W and MR, not R, so a row left over past the last
  // block of side_by_side rows sums in the same order as the block's and
  // the bits do not depend on how the rows were split between threads.)
  constexpr int kChains = MR == 1 && side_by_side<W, MR>() == 1 ? 2 : 1;
  __m256 acc[R][kChains][MR];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < kChains; ++c) {
      for (int m = 0; m < MR; ++m) {
        acc[r][c][m] = _mm256_setzero_ps();
      }
    }
  }
#if TK_INT8_QUADS
  const int64_t quads = quads_of<W>(a.K);
  for (int64_t q = 0; q < quads; ++q) {  // (the units left add to the same accumulators)
    for (int r = 0; r < R; ++r) {
      quad_step<MR, GS>(a, rows[r], srow[r], dq + 8 * q, kQuad * q, x8_stride, 8 * quads, lead, acc[r][0]);
    }
  }
  int64_t u = kQuad * quads;
#else
  int64_t u = paired;
#endif
#if TK_INT8_PAIRS
  __m512 acc2[R][MR];
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < MR; ++m) {
      acc2[r][m] = _mm512_setzero_ps();
    }
  }
  for (int64_t u = 0; u < paired; u += 2) {
    for (int r = 0; r < R; ++r) {
      pair_step<W, MR, GS>(a, rows[r], srow[r], u, x8_stride, dx_stride, lead, acc2[r]);
    }
  }
#endif
  for (; u + kChains <= whole; u += kChains) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < kChains; ++c) {
        unit_step<W, MR, GS, false>(a, rows[r], srow[r], u + c, x8_stride, dx_stride, lead, acc[r][c]);
      }
    }
  }
  for (; u < whole; ++u) {
    for (int r = 0; r < R; ++r) {
      unit_step<W, MR, GS, false>(a, rows[r], srow[r], u, x8_stride, dx_stride, lead, acc[r][0]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 1; c < kChains; ++c) {
      for (int m = 0; m < MR; ++m) {
        acc[r][0][m] = _mm256_add_ps(acc[r][0][m], acc[r][c][m]);
      }
    }
    if (whole < units) {
      unit_step<W, MR, GS, true>(a, rows[r], srow[r], whole, x8_stride, dx_stride, lead, acc[r][0]);
    }
    for (int m = 0; m < MR; ++m) {
#if TK_INT8_PAIRS
      const float v = hsum16(acc2[r][m]) + hsum8(acc[r][0][m]) + bt[r][m];
#else
      const float v = hsum8(acc[r][0][m]) + bt[r][m];
#endif
      const int64_t at = m * a.N + n + r;
      if (a.out_dtype == Dtype::bf16) {
        static_cast<uint16_t*>(a.out)[at] = store<Dtype::bf16>(v);
      } else {
        static_cast<uint16_t*>(a.out)[at] = store<Dtype::f16>(v);
      }
    }
  }
}

template <WeightKind W, int MR, int GS>
void rows_of(const LinearArgs& a, int64_t begin, int64_t end) {
  constexpr int R = side_by_side<W, MR>();
  const int64_t groups = a.K / GS;
  // R rows of scales (scale_stride), their padding zeroed once.
  float* s = scratch<0>(R * scale_stride(groups));
  for (int r = 0; r < R; ++r) {
    for (int64_t i = groups; i < scale_stride(groups); ++i) {
      s[r * scale_stride(groups) + i] = 0.0f;
    }
  }
  float* dq = nullptr;
#if TK_INT8_QUADS
  const int64_t quads = quads_of<W>(a.K);
  dq = scratch<1>(MR * quads * 8);
  quad_dx(a, MR, quads, int8_dx_stride(a.K, MR), dq);
#endif
  int64_t n = begin;
  for (; n + R <= end; n += R) {
    row_block<W, MR, GS, R>(a, n, end, s, dq);
  }
  for (; n < end; ++n) {
    row_block<W, MR, GS, 1>(a, n, end, s, dq);
  }
}

template <WeightKind W, int MR>
void rows_mr(const LinearArgs& a, int64_t begin, int64_t end) {
  switch (a.group_size) {
    case 32:
      return rows_of<W, MR, 32>(a, begin, end);
    case 64:
      return rows_of<W, MR, 64>(a, begin, end);
    default:
      return rows_of<W, MR, 128>(a, begin, end);
  }
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

// quantize_block (quantize_x.inc) on a unit: 64 contiguous bf16 columns at
// xr -> the unit's two 32-byte halves of x8 (bytes 0-31 at h0, 32-63 at h1)
// in the order its codes unpack (load_unit): bytes 0-31 meet c0, 32-63 c1.
// q4: c0 is the low nibbles (even columns), c1 the high ones; q6 and q8: c0
// holds columns 0-15 of each block, c1 columns 16-31, with `swapped` each
// pair of adjacent columns swapped (q6_pair_swapped). Each block's d and Σ
// codes into d, sum.
__attribute__((always_inline)) inline void quantize_unit(const uint16_t* xr, WeightKind kind, bool pairs, bool swapped,
                                                         int8_t* h0, int8_t* h1, float (&d)[2], int32_t (&sum)[2]) {
  const __m256i q0 = quantize_block(xr, pairs, d[0], sum[0]);  // columns 0-31 in order
  const __m256i q1 = quantize_block(xr + kLinearBlock, pairs, d[1], sum[1]);
  __m256i a, c;
  if (kind == WeightKind::q4) {
    // Even columns to bytes 0-31, odd ones to 32-63: per 128-bit lane evens
    // to its low 8 bytes, then the 8-byte pieces in order.
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i s0 = _mm256_shuffle_epi8(q0, split), s1 = _mm256_shuffle_epi8(q1, split);
    a = _mm256_permute4x64_epi64(_mm256_unpacklo_epi64(s0, s1), 0xD8);
    c = _mm256_permute4x64_epi64(_mm256_unpackhi_epi64(s0, s1), 0xD8);
  } else {
    // Columns 0-15 and 32-47 to bytes 0-31, 16-31 and 48-63 to 32-63.
    a = _mm256_permute2x128_si256(q0, q1, 0x20);
    c = _mm256_permute2x128_si256(q0, q1, 0x31);
    if (swapped) {
      const __m256i swap = _mm256_setr_epi8(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14,  //
                                            1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
      a = _mm256_shuffle_epi8(a, swap);
      c = _mm256_shuffle_epi8(c, swap);
    }
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(h0), a);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(h1), c);
}

// Block b of unit u's scale into a row of dx (int8_dx_expanded's layouts).
inline void set_dx(float* d, int64_t u, int b, float db, bool expanded) {
  if (expanded) {
    for (int i = 0; i < 4; ++i) {
      d[8 * u + 4 * b + i] = db;
    }
  } else {
    d[2 * u + b] = db;
  }
}

} // namespace

void linear_quantize_x(const LinearX& x, WeightKind kind, int64_t group_size, int8_t* x8, float* dx, float* xsum,
                       int64_t begin, int64_t end) {
  const int64_t units = int8_units(x.K), groups = x.K / group_size;
  const int64_t paired = paired_units(x.K), dx_stride = int8_dx_stride(x.K, x.M);
  const bool expanded = int8_dx_expanded(x.M);
  const bool pairs = pair_scaled(kind, kVnni);  // (the file comment)
  const auto* src = static_cast<const uint16_t*>(x.ptr);  // bf16 (quantize_x.inc)
  uint16_t buf[kUnit];
  for (int64_t m = begin; m < end; ++m) {
    const uint16_t* xr = src + m * x.row_stride;
    int8_t* x8r = x8 + m * units * kUnit;
    // Σx̂ per group accumulates block by block (groups hold whole blocks).
    float* xs = xsum + m * groups;
    for (int64_t g = 0; g < groups; ++g) {
      xs[g] = 0.0f;
    }
    // dx: one scale per block (compact or expanded, int8_dx_expanded),
    // zero past the last (a last unit of one block and the padded loads
    // read them).
    float* d = dx + m * dx_stride;
    for (int64_t b = 0; b < dx_stride; ++b) {
      d[b] = 0.0f;
    }
    for (int64_t u = 0; u < units; ++u) {
      // A last unit of one block: its second block reads as zeros.
      const int64_t n = std::min(kUnit, x.K - u * kUnit);
      const uint16_t* v = bf16_run(xr + u * kUnit * x.col_stride, x.col_stride, n, kUnit, buf);
      float db[2];
      int32_t sum[2];
      quantize_unit(v, kind, pairs, q6_pair_swapped(kind, u, paired), x8r + x8_at(u, 0, paired),
                    x8r + x8_at(u, 32, paired), db, sum);
      for (int b = 0; b < 2 && (2 * u + b) * kLinearBlock < x.K; ++b) {
        set_dx(d, u, b, db[b], expanded);
        xs[(2 * u + b) * kLinearBlock / group_size] += db[b] * float(sum[b]);
      }
    }
  }
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
