// The CPU loops of `linear` (out = x @ w.T): see kernels.h for the interface.
//
// Compiled once per instruction set into namespace tk::kern::TK_ISA (see
// kernels.h and common.inc); everything but the entry points has internal
// linkage. The loops use GCC/Clang vector extensions: one source that the
// compiler lowers to AVX-512 (v4), AVX2 (v3), SSE2 (base) or NEON.
//
// Why this shape. A decode step reads every weight byte once and does two
// flops per weight, so it is bound by memory bandwidth: the loops stream each
// weight row once for all rows of x, dequantize in registers
// (w = scale·q + bias, one FMA per vector) and never write a dequantized copy.
// Prefill (many rows of x) is bound by arithmetic instead: a GEMM over
// packed, dequantized weight panels with a register block that fills the
// vector registers (see "prefill" below). All arithmetic is fp32; each output
// is rounded once.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>  // always-inline intrinsics only: safe in every ISA's copy
#endif

#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {
namespace {

#include "storage.inc"
#include "common.inc"
#include "vec.inc"

constexpr int VW = kVec;  // floats per vector (vec.inc)
constexpr int BV = kLinearBlock / VW;  // vectors per 32-column block

using vf = fvec;
using vu = uvec;

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < VW; ++i) {
    s += v[i];
  }
  return s;
}

// ---- one 32-column block of a weight row, as VW-wide fp32 vectors -----------

constexpr bool quantized(WeightKind W) {
  return W == WeightKind::q4 || W == WeightKind::q6 || W == WeightKind::q8;
}

constexpr int bits_of(WeightKind W) {
  return W == WeightKind::q4 ? 4 : W == WeightKind::q6 ? 6 : W == WeightKind::q8 ? 8 : 0;
}

// Bytes of one weight row holding K columns.
template <WeightKind W>
constexpr int64_t row_bytes(int64_t K) {
  if constexpr (quantized(W)) {
    return K * bits_of(W) / 8;
  } else {
    return K * (W == WeightKind::f32 ? 4 : 2);
  }
}

// Block `kb` of a row (`row` points at the row's first byte) -> w[BV], in the
// block order of kernels.h; quantized kinds give the integer codes q (the
// caller applies scale and bias).
template <WeightKind W>
inline void load_block(const uint8_t* row, int64_t kb, vf* w) {
  if constexpr (W == WeightKind::f32) {
    const float* p = reinterpret_cast<const float*>(row) + kb * kLinearBlock;
    for (int j = 0; j < BV; ++j) {
      w[j] = vload<vf>(p + j * VW);
    }
  } else if constexpr (W == WeightKind::bf16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + kb * kLinearBlock;
    for (int j = 0; j < BV; ++j) {
      w[j] = vload_float<Dtype::bf16>(p + j * VW);
    }
  } else if constexpr (W == WeightKind::f16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + kb * kLinearBlock;
    for (int j = 0; j < BV; ++j) {
      w[j] = vload_float<Dtype::f16>(p + j * VW);
    }
  } else if constexpr (W == WeightKind::q8) {
    const uint8_t* p = row + kb * kLinearBlock;
    for (int j = 0; j < BV; ++j) {
      w[j] = __builtin_convertvector(vwiden_bytes(p + j * VW), vf);
    }
  } else if constexpr (W == WeightKind::q4) {
    // 16 bytes; byte i holds columns 2i (low nibble) and 2i+1 (high nibble).
    const uint8_t* p = row + kb * 16;
    constexpr int chunks = 16 / VW;
    for (int c = 0; c < chunks; ++c) {
      vu u = vwiden_bytes(p + c * VW);
      w[c] = __builtin_convertvector(u & 15u, vf);
      w[chunks + c] = __builtin_convertvector(u >> 4, vf);
    }
  } else {  // q6
    // 24 bytes = 8 little-endian 24-bit words t_i, each holding columns
    // 4i..4i+3 at bits 0, 6, 12, 18; lane i of t gets t_i.
    const uint8_t* p = row + kb * 24;
#if TK_VEC_WIDTH >= 8
    // Bytes 0-15 and 8-23 (no read past the block) in the two 128-bit lanes;
    // one in-lane byte shuffle puts each word in its 32-bit lane.
    const __m256i raw = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)), 1);
    const __m256i spread = _mm256_setr_epi8(
        0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,
        4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
    const __m256i t = _mm256_shuffle_epi8(raw, spread);
#if TK_VEC_WIDTH == 16
    const __m512i tt = _mm512_broadcast_i64x4(t);  // t in both halves
    const __m512i lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(12));
    const __m512i mask = _mm512_set1_epi32(63);
    w[0] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(tt, lo), mask));
    w[1] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(tt, hi), mask));
#else
    const vu tv = __builtin_bit_cast(vu, t);
    for (int j = 0; j < 4; ++j) {
      w[j] = __builtin_convertvector((tv >> (6u * j)) & 63u, vf);
    }
#endif
#else
    uint32_t t[8];
    for (int i = 0; i < 8; ++i) {
      t[i] = uint32_t(p[3 * i]) | uint32_t(p[3 * i + 1]) << 8 | uint32_t(p[3 * i + 2]) << 16;
    }
    for (int v = 0; v < BV; ++v) {  // position v*VW + l: column 4i + j, j = pos / 8, i = pos % 8
      for (int l = 0; l < VW; ++l) {
        const int pos = v * VW + l;
        w[v][l] = float((t[pos % 8] >> (6 * (pos / 8))) & 63u);
      }
    }
#endif
  }
}

// Column of x stored at position p of a block (the inverse of load_block's order).
inline int64_t block_column(WeightKind kind, int64_t p) {
  if (kind == WeightKind::q4) {
    return p < 16 ? 2 * p : 2 * (p - 16) + 1;
  }
  if (kind == WeightKind::q6) {
    return 4 * (p % 8) + p / 8;
  }
  return p;
}

template <Dtype D>
inline float load_at(const void* p, int64_t i) {
  return load<D>(static_cast<const typename Storage<D>::type*>(p)[i]);
}

inline float load_any(Dtype d, const void* p, int64_t i) {
  switch (d) {
    case Dtype::f16:
      return load_at<Dtype::f16>(p, i);
    case Dtype::bf16:
      return load_at<Dtype::bf16>(p, i);
    default:
      return load_at<Dtype::f32>(p, i);
  }
}

inline void store_any(Dtype d, void* p, int64_t i, float v) {
  switch (d) {
    case Dtype::f16:
      static_cast<uint16_t*>(p)[i] = store<Dtype::f16>(v);
      return;
    case Dtype::bf16:
      static_cast<uint16_t*>(p)[i] = store<Dtype::bf16>(v);
      return;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// Outputs [at, at + n) of the output from the lanes of v, each rounded once:
// a whole vector at once (the prefill GEMM's last K block). One element at a
// time through store_any took ~4 % of a bf16 512-row GEMM; measured on Zen 4
// (2 cores, bf16 w and x, M = 512, vdpbf16ps GEMM, processes alternated, 5
// rounds, medians, with the zeroing in gemm_tile_dot below): 385 -> 406
// GFLOP/s at 5120 -> 15360, 387 -> 409 at 5120 -> 27392, 382 -> 397 at
// 13696 -> 5120; the fp32 GEMM on v3 within noise.
inline void store_out(const LinearArgs& a, int64_t at, vf v, int64_t n) {
  if (n >= VW) {
    switch (a.out_dtype) {
      case Dtype::f16:
        return vstore_as<Dtype::f16>(static_cast<uint16_t*>(a.out) + at, v);
      case Dtype::bf16:
        return vstore_as<Dtype::bf16>(static_cast<uint16_t*>(a.out) + at, v);
      default:
        return vstore(static_cast<float*>(a.out) + at, v);
    }
  }
  for (int64_t l = 0; l < n; ++l) {
    store_any(a.out_dtype, a.out, at + l, v[l]);
  }
}

// sum over i < n of a[i]·b[i] in fp32, in independent lanes (vectorizable).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) {
      acc[j] += a[i + j] * b[i + j];
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) {
    s += a[i] * b[i];
  }
  for (int j = 0; j < 16; ++j) {
    s += acc[j];
  }
  return s;
}

// n elements of a float array from element `at` on, as fp32 (one dtype
// switch, then a loop the compiler vectorizes).
inline void to_float(Dtype d, const void* p, int64_t at, int64_t n, float* out) {
  switch (d) {
    case Dtype::f16:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = load_at<Dtype::f16>(p, at + i);
      }
      return;
    case Dtype::bf16:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = load_at<Dtype::bf16>(p, at + i);
      }
      return;
    default:
      for (int64_t i = 0; i < n; ++i) {
        out[i] = load_at<Dtype::f32>(p, at + i);
      }
  }
}

// Per-thread fp32 working memory that grows to the largest request and stays.
inline float* thread_scratch(int which, int64_t floats) {
  thread_local std::vector<float> kept[2];
  if (int64_t(kept[which].size()) < floats) {
    kept[which].resize(floats);
  }
  return kept[which].data();
}

// The weights of NR consecutive rows starting at n0, as the loops walk them.
// Quantized rows' scales and biases are converted to fp32 once per row block
// (vectorized), so the group loop reads each with one broadcast.
template <WeightKind W, int NR>
struct RowBlock {
  const uint8_t* row[NR];
  const float* scale[NR];
  const float* bias[NR];
  int64_t groups = 0;

  int64_t ahead;  // bytes from a row block to the next one

  RowBlock(const LinearArgs& a, int64_t n0) {
    const int64_t rb = row_bytes<W>(a.K);
    ahead = NR * rb;
    for (int r = 0; r < NR; ++r) {
      row[r] = static_cast<const uint8_t*>(a.w) + (n0 + r) * rb;
    }
    if constexpr (quantized(W)) {
      groups = a.K / a.group_size;
      float* buf = thread_scratch(1, 2 * NR * groups);
      for (int r = 0; r < NR; ++r) {
        float* sc = buf + 2 * r * groups;
        float* bi = sc + groups;
        to_float(a.scale_dtype, a.scales, (n0 + r) * groups, groups, sc);
        to_float(a.bias_dtype, a.biases, (n0 + r) * groups, groups, bi);
        scale[r] = sc;
        bias[r] = bi;
      }
    }
  }

  // Asks for the bytes of block kb of the *next* row block, one request per
  // cache line. The rows of a block are read side by side, and with short rows
  // (K = 512: 2 KB) the hardware prefetcher keeps restarting its streams; so
  // decode, which only streams, reads about half as fast without this. Each
  // row of the block tests its own target (first_in_line): rows of one
  // block need not share an alignment. Into L2 (prefetcht1), as the integer
  // decode's requests (linear_int8.cpp): a row block ahead is 40 KB at K 5120
  // (bf16), more than L1 holds, so prefetcht0 filled L1 with lines evicted
  // before their use. Measured on Zen 4 (2 cores, bf16 w in 2 MiB pages, M =
  // 1, 5120 -> 27392, vdpbf16ps loop, C++ harness, 12 interleaved rounds):
  // 1.15x (12 of 12), 97 % of a plain streaming read.
  inline void prefetch_next(int64_t kb) const {
    constexpr int64_t bb = row_bytes<W>(kLinearBlock);
    for (int r = 0; r < NR; ++r) {
      const uint8_t* target = row[r] + ahead + kb * bb;
      if (first_in_line(target, bb)) {
        for (int64_t line = 0; line < bb; line += 64) {
          __builtin_prefetch(target + line, 0, 2);
        }
      }
    }
  }

  // Scale and bias of group g of row r (dense: 1 and 0, unused).
  inline void group(int r, int64_t g, float& s, float& b) const {
    if constexpr (quantized(W)) {
      s = scale[r][g];
      b = bias[r][g];
    }
  }

  // sum_g bias[r][g]·xs[g] (the factored forms' bias term for one row of x).
  inline float bias_dot(int r, const float* xs) const {
    return dot(bias[r], xs, groups);
  }

  // Block kb of row r, dequantized with its group's s, b: w = s·q + b (fp32, one FMA).
  inline void block(int r, int64_t kb, float s, float b, vf* w) const {
    load_block<W>(row[r], kb, w);
    if constexpr (quantized(W)) {
      for (int j = 0; j < BV; ++j) {
        w[j] = w[j] * s + b;
      }
    }
  }

  // Dense kinds: column k (k >= the last whole block) of row r.
  inline float tail(int r, int64_t k) const {
    if constexpr (W == WeightKind::f32) {
      return reinterpret_cast<const float*>(row[r])[k];
    } else if constexpr (W == WeightKind::f16) {
      return load<Dtype::f16>(reinterpret_cast<const uint16_t*>(row[r])[k]);
    } else {
      return load<Dtype::bf16>(reinterpret_cast<const uint16_t*>(row[r])[k]);
    }
  }
};

// ---- decode: MR (<= 4) rows of x, NR rows of w, weights straight from memory

// Rows of w read side by side: each is a stream of its own, and decode is
// bound by how many reads are in flight. With AVX2 the NR blocks of 32
// columns no longer all fit in 16 registers, but each loaded vector feeds
// its MR FMAs at once, so the compiler keeps only a few live. Measured on
// Zen 4 with AVX2 (2 cores, bf16 w from DRAM, interleaved builds, 6-8
// rounds), 4 rows against 2: 1.09-1.25x at M = 1 (5120->5120 / 15360 /
// 65540, 13696->5120), 1.24-1.32x at M = 2-7, fp32 w 1.17x; quantized w
// with fp32 x (arithmetic-bound) q4 0.97-1.0x, q8 1.16x; the baseline
// x86-64 build 1.03-1.11x. Unmeasured on Zen 3.
constexpr int kDecodeNR = 4;
constexpr int kDecodeMR = 4;
// Dense row length (bytes) from which decode reads kDecodeNR rows side by side.
constexpr int64_t kSideBySideMinBytes = 4096;

template <WeightKind W, int MR, int NR>
void decode_tile(const LinearArgs& a, int64_t n0, int64_t m0) {
  const RowBlock<W, NR> rows(a, n0);
  const int64_t whole = a.K / kLinearBlock;
  // Dense weights are one group of every whole block.
  const int64_t bpg = quantized(W) ? a.group_size / kLinearBlock : whole;
  const int64_t groups = quantized(W) ? a.K / a.group_size : 1;
  // One row at a time has no other rows' FMAs to hide a chain's latency:
  // then each vector of a block accumulates on its own.
  constexpr int AS = NR == 1 ? BV : 1;
  vf acc[MR][NR][AS] = {};
  for (int64_t g = 0; g < groups; ++g) {
    float s[NR] = {}, b[NR] = {};
    for (int r = 0; r < NR; ++r) {
      rows.group(r, g, s[r], b[r]);
    }
    if (quantized(W) && MR <= 2 && a.factored) {
      // Few rows of x: y += s·(q·x_g) + b·Σx_g, so the codes meet x without
      // a dequantizing FMA per vector; one FMA per group scales the sum.
      vf qx[MR][NR][AS] = {};
      for (int64_t kb = g * bpg; kb < (g + 1) * bpg; ++kb) {
        rows.prefetch_next(kb);
        vf q[NR][BV];
        for (int r = 0; r < NR; ++r) {
          load_block<W>(rows.row[r], kb, q[r]);
        }
        for (int m = 0; m < MR; ++m) {
          const float* xr = a.x + (m0 + m) * a.Kp + kb * kLinearBlock;
          for (int j = 0; j < BV; ++j) {
            const vf xv = vload<vf>(xr + j * VW);
            for (int r = 0; r < NR; ++r) {
              qx[m][r][j % AS] += q[r][j] * xv;
            }
          }
        }
      }
      for (int m = 0; m < MR; ++m) {
        for (int r = 0; r < NR; ++r) {
          for (int h = 0; h < AS; ++h) {
            acc[m][r][h] += qx[m][r][h] * s[r];
          }
        }
      }
      continue;
    }
    for (int64_t kb = g * bpg; kb < (g + 1) * bpg; ++kb) {
      rows.prefetch_next(kb);
      vf w[NR][BV];
      for (int r = 0; r < NR; ++r) {
        rows.block(r, kb, s[r], b[r], w[r]);
      }
      for (int m = 0; m < MR; ++m) {
        const float* xr = a.x + (m0 + m) * a.Kp + kb * kLinearBlock;
        for (int j = 0; j < BV; ++j) {
          const vf xv = vload<vf>(xr + j * VW);
          for (int r = 0; r < NR; ++r) {
            acc[m][r][j % AS] += w[r][j] * xv;
          }
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    const float* xr = a.x + (m0 + m) * a.Kp;
    for (int r = 0; r < NR; ++r) {
      vf sum = acc[m][r][0];
      for (int h = 1; h < AS; ++h) {
        sum += acc[m][r][h];
      }
      float v = hsum(sum);
      if (quantized(W) && MR <= 2 && a.factored) {
        v += rows.bias_dot(r, a.xsum + (m0 + m) * groups);
      }
      if constexpr (!quantized(W)) {  // dense K need not be a multiple of 32
        for (int64_t k = whole * kLinearBlock; k < a.K; ++k) {
          v += rows.tail(r, k) * xr[k];
        }
      }
      store_any(a.out_dtype, a.out, (m0 + m) * a.N + n0 + r, v);
    }
  }
}

// The rows of x in tiles of kDecodeMR (the last one shorter):
// tile(std::integral_constant<int, MR>{}, m0) for each, MR a compile-time
// row count for the decode tiles' register blocks.
template <class F>
void x_tiles(const LinearArgs& a, F&& tile) {
  for (int64_t m0 = 0; m0 < a.M; m0 += kDecodeMR) {
    switch (a.M - m0 < kDecodeMR ? a.M - m0 : kDecodeMR) {
      case 1:
        tile(std::integral_constant<int, 1>{}, m0);
        break;
      case 2:
        tile(std::integral_constant<int, 2>{}, m0);
        break;
      case 3:
        tile(std::integral_constant<int, 3>{}, m0);
        break;
      default:
        tile(std::integral_constant<int, 4>{}, m0);
    }
  }
}

template <WeightKind W, int NR>
void decode_rows(const LinearArgs& a, int64_t n0) {
  x_tiles(a, [&](auto mr, int64_t m0) { decode_tile<W, decltype(mr)::value, NR>(a, n0, m0); });
}

template <WeightKind W>
void linear_decode(const LinearArgs& a, int64_t begin, int64_t end) {
  int64_t n = begin;
  // Rows of w read side by side are separate streams for the hardware
  // prefetcher. Long rows: NR streams keep more reads in flight (measured on
  // Zen 4, K=4096 fp32: 18.6 GB/s with 4 rows, 13 with 1, one core). Short
  // dense rows: each stream ends after a few lines and the prefetcher keeps
  // retraining, while one row at a time is one sequential stream (K=512
  // bf16, two cores: 15.6 GB/s with 4 rows, 26.5 with 1). Quantized rows
  // need the shared loads of x more (q4, K=5120: 20.9 GB/s with 4, 12.4 with 1).
  if (quantized(W) || row_bytes<W>(a.K) >= kSideBySideMinBytes) {
    for (; n + kDecodeNR <= end; n += kDecodeNR) {
      decode_rows<W, kDecodeNR>(a, n);
    }
  }
  for (; n < end; ++n) {
    decode_rows<W, 1>(a, n);
  }
}

// ---- prefill: a GEMM over packed panels --------------------------------------
//
// Prefill does 2·M flops per weight element, so it is bound by arithmetic:
// the weights are dequantized once per call into packed fp32 panels and every
// vector FMA is kept fed from registers. For this thread's output columns
// [begin, end) (rows of w):
//   1. rows of x in blocks of MC, output columns in blocks of NC, K in blocks of KC;
//   2. pack the NC×KC block of w (dequantized, zero past N and K) as NC/NR
//      micro-panels, each KC steps of NR consecutive output columns;
//   3. per MR rows of x: copy their KC columns to a small buffer (L1), then
//      for each micro-panel (read from L2) accumulate the MR×NR outer products
//      acc[m][n] += x[m][k]·w[n][k] over the KC columns, k in order, in
//      MR×NR/VW vector registers (one broadcast of x, NR/VW loads of w and
//      MR·NR/VW FMAs per column);
//   4. the block's sums add to an fp32 MC×NC accumulator; the last K block
//      rounds acc + accumulator to the output, once.
// Every output's sum runs over the same K blocks in the same order whatever
// the column range, so 1 and 2 threads give the same bits.

// The register block: MR rows of x × NR = NV·VW columns, MR·NV accumulators
// plus NV vectors of w and one broadcast of x. AVX-512 (32 zmm): 6 × 64,
// 24 + 4 + 1 = 29. AVX2 (16 ymm): 6 × 16, 12 + 2 + 1 = 15. 12 or more
// independent accumulators cover two FMA ports × 4 cycles of latency. On
// AVX-512 the wider block loads 10 vectors per 24 FMAs where 14 × 32 loads
// 16 per 28; measured on a Sapphire-Rapids-class Xeon (2 cores, bf16 w,
// M = 512, K 5120 / 13696, interleaved): 14 × 32 284-295 GFLOP/s, 6 × 64
// 292-306, 7 × 64 280-288; one core 146-147 -> 151. On Zen 5 (2 cores,
// `talkie-kernels bench --linear-shapes`, runs a day apart, not
// interleaved) the worst 13B shape went from 64 % to 74 % of the FMA peak
// on v4, and on Zen 4 (512-bit FMAs as two halves; likewise) from 62 % to
// 80 %.
constexpr int kMR = 6;
constexpr int kNV = VW == 16 ? 4 : 2;
constexpr int kNR = kNV * VW;
// K block: a micro-panel is KC × NR fp32 (256 × 64 × 4 = 64 KB on AVX-512,
// 16 KB on AVX2, streamed from L2), the MR rows of x KC × MR (6 KB, in L1:
// 48 KB on Intel's and Zen 5's cores, 32 KB on Zen 3 and 4).
constexpr int64_t kKC = 256;
// Row stride of the copied rows of x: KC + 16 floats, so the MR rows do not
// fall into the same L1 sets (a stride that is a multiple of 4 KB would).
constexpr int64_t kKCP = kKC + 16;
// Output-column block: the packed w block NC × KC is 256 KB (fp32), and the
// fp32 accumulator MC × NC about 512 KB: both stay in a 2 MB L2 while all MC
// rows of x pass over them; in Zen 3's 512 KB the packed block stays (it is
// reread for every register block) and the accumulator streams from L3,
// touched once per tile.
constexpr int64_t kNC = 256;
static_assert(kNC % kNR == 0, "column blocks of whole micro-panels fit the kNC-wide scratch");
// Row block: about 512 rows (whole register blocks), so a 512-token prefill
// packs each weight once.
constexpr int64_t kMC = kMR * ((512 + kMR - 1) / kMR);

template <WeightKind W>
inline float dense_at(const uint8_t* row, int64_t k) {
  if constexpr (W == WeightKind::f32) {
    return reinterpret_cast<const float*>(row)[k];
  } else if constexpr (W == WeightKind::f16) {
    return load<Dtype::f16>(reinterpret_cast<const uint16_t*>(row)[k]);
  } else {
    return load<Dtype::bf16>(reinterpret_cast<const uint16_t*>(row)[k]);
  }
}

#if TK_VEC_WIDTH >= 8
// The in-lane steps of a transpose, one name per vector width.
#if TK_VEC_WIDTH == 16
typedef __m512 vreg;
inline vreg unpack_lo(vreg a, vreg b) { return _mm512_unpacklo_ps(a, b); }
inline vreg unpack_hi(vreg a, vreg b) { return _mm512_unpackhi_ps(a, b); }
template <int I>
inline vreg shuffle(vreg a, vreg b) { return _mm512_shuffle_ps(a, b, I); }
#else
typedef __m256 vreg;
inline vreg unpack_lo(vreg a, vreg b) { return _mm256_unpacklo_ps(a, b); }
inline vreg unpack_hi(vreg a, vreg b) { return _mm256_unpackhi_ps(a, b); }
template <int I>
inline vreg shuffle(vreg a, vreg b) { return _mm256_shuffle_ps(a, b, I); }
#endif
#endif

// In-place transpose of a VW × VW square: afterwards v[i][j] is the old v[j][i].
inline void transpose(vf* v) {
#if TK_VEC_WIDTH >= 8
  // 1. 4 × 4 transposes within each 128-bit lane: afterwards lane L of
  //    u[4g + c] holds rows 4g..4g+3 of column 4L + c.
  vreg t[VW], u[VW];
  for (int i = 0; i < VW / 2; ++i) {
    t[2 * i] = unpack_lo(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = unpack_hi(v[2 * i], v[2 * i + 1]);
  }
  for (int g = 0; g < VW / 4; ++g) {
    u[4 * g] = shuffle<0x44>(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = shuffle<0xEE>(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = shuffle<0x44>(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = shuffle<0xEE>(t[4 * g + 1], t[4 * g + 3]);
  }
  // 2. Whole 128-bit lanes: column 4L + c gathers lane L of every u[4g + c].
  for (int c = 0; c < 4; ++c) {
#if TK_VEC_WIDTH == 16
    const __m512 lo01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), hi01 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 lo23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44),
                 hi23 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    v[c] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    v[4 + c] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
    v[8 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    v[12 + c] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
#else
    v[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    v[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
#endif
  }
#else
  for (int i = 0; i < VW; ++i) {
    for (int j = i + 1; j < VW; ++j) {
      const float x = v[i][j];
      v[i][j] = v[j][i];
      v[j][i] = x;
    }
  }
#endif
}

// Block kb of weight row n as BV vectors (dequantized, zero past K).
template <WeightKind W>
inline void weight_block(const LinearArgs& a, int64_t n, int64_t kb, vf* v) {
  const uint8_t* row = static_cast<const uint8_t*>(a.w) + n * row_bytes<W>(a.K);
  if (kb < a.K / kLinearBlock) {
    load_block<W>(row, kb, v);
    if constexpr (quantized(W)) {
      // (group_size is a power of two: shifts, not two divisions per block.)
      const int gs_log2 = __builtin_ctzll(uint64_t(a.group_size));
      const int64_t g = n * (a.K >> gs_log2) + ((kb * kLinearBlock) >> gs_log2);
      const float s = load_any(a.scale_dtype, a.scales, g), b = load_any(a.bias_dtype, a.biases, g);
      for (int i = 0; i < BV; ++i) {
        v[i] = v[i] * s + b;
      }
    }
  } else {  // the dense tail block
    for (int64_t q = 0; q < kLinearBlock; ++q) {
      const int64_t k = kb * kLinearBlock + q;
      v[q / VW][q % VW] = k < a.K ? dense_at<W>(row, k) : 0.0f;
    }
  }
}

// Step 2: rows [n0, n0 + nc) × columns [k0, k0 + kc) of w into bp as
// micro-panels: bp[p·kc·NR + k·NR + j] = w[n0 + p·NR + j][k0 + k] (fp32, in
// the block order of x; zero for rows past n0 + nc and columns past K).
// VW rows' blocks at a time, transposed VW × VW in registers, so every store
// is a whole vector.
template <WeightKind W>
void pack_w(const LinearArgs& a, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* bp) {
  constexpr int64_t bb = row_bytes<W>(kLinearBlock);
  for (int64_t p = 0; p * kNR < nc; ++p) {
    float* panel = bp + p * kc * kNR;
    for (int64_t kb = k0 / kLinearBlock; kb < (k0 + kc) / kLinearBlock; ++kb) {
      float* dst = panel + (kb * kLinearBlock - k0) * kNR;
      for (int h = 0; h < kNV; ++h) {
        vf t[BV][VW];  // t[i][r]: columns i·VW.. of row r of these VW rows
        for (int r = 0; r < VW; ++r) {
          const int64_t n = n0 + p * kNR + h * VW + r;
          vf v[BV];  // (not `= {}`: a rep stos, 40 % of packing on Zen 3; 86 -> 88.5 GFLOP/s below)
          if (n < n0 + nc) {
            // The row's bytes 8 blocks on (rows are separate streams).
            __builtin_prefetch(static_cast<const uint8_t*>(a.w) + n * row_bytes<W>(a.K) + (kb + 8) * bb);
            weight_block<W>(a, n, kb, v);
          } else {
            for (int i = 0; i < BV; ++i) {
              v[i] = vf{};
            }
          }
          for (int i = 0; i < BV; ++i) {
            t[i][r] = v[i];
          }
        }
        for (int i = 0; i < BV; ++i) {
          transpose(t[i]);
          for (int q = 0; q < VW; ++q) {
            std::memcpy(dst + (i * VW + q) * kNR + h * VW, &t[i][q], sizeof(vf));
          }
        }
      }
    }
  }
}

// Step 4 for one register block's sums acc: c is the block's fp32
// accumulator (row stride NC). The first K block sets c, later ones add to
// it, the last one writes round(c + acc) for the mr × nr valid outputs from
// (m0, n0) instead.
inline void tile_out(const vf (&acc)[kMR][kNV], float* c, bool first, bool last, const LinearArgs& a, int64_t m0,
                     int64_t n0, int mr, int nr) {
  for (int m = 0; m < kMR; ++m) {
    for (int j = 0; j < kNV; ++j) {
      float* cv = c + m * kNC + j * VW;
      vf v = acc[m][j];
      if (!first) {
        v += vload<vf>(cv);
      }
      if (!last) {
        vstore(cv, v);
      } else if (m < mr && j * VW < nr) {
        store_out(a, (m0 + m) * a.N + n0 + j * VW, v, nr - j * VW);
      }
    }
  }
}

// Step 3 for one register block: x rows xp[m·KCP + k] (m < MR), the
// micro-panel bp, kc columns; then step 4 (tile_out).
inline void gemm_tile(const float* xp, const float* bp, int64_t kc, float* c, bool first, bool last,
                      const LinearArgs& a, int64_t m0, int64_t n0, int mr, int nr) {
  // Column 0 sets the accumulators (zeroing them first compiled to a rep stos
  // through the stack, ~3 % of the tile's time on Zen 3).
  vf acc[kMR][kNV];
  for (int m = 0; m < kMR; ++m) {
    for (int j = 0; j < kNV; ++j) {
      acc[m][j] = xp[m * kKCP] * vload<vf>(bp + j * VW);
    }
  }
  // (Unrolled: fewer loop instructions between the FMAs; 86 -> 90% of the
  // peak for AVX-512 with the micro-panel in L2, in a standalone loop.)
#pragma GCC unroll 4
  for (int64_t k = 1; k < kc; ++k) {
    vf w[kNV];
    for (int j = 0; j < kNV; ++j) {
      w[j] = vload<vf>(bp + k * kNR + j * VW);
    }
    for (int m = 0; m < kMR; ++m) {
      const float xv = xp[m * kKCP + k];
      for (int j = 0; j < kNV; ++j) {
        acc[m][j] += xv * w[j];
      }
    }
  }
  tile_out(acc, c, first, last, a, m0, n0, mr, nr);
}

#if defined(__AVX512BF16__)
// The bf16 dot-product loops (linear_bf16: bf16 w, bf16 x; the GEMM, then
// decode_dot below). vdpbf16ps takes 32-bit words that each hold two bf16
// values and adds both products (exact in fp32: 8-bit significands) to each
// fp32 lane, twice the flops of an FMA per instruction. The GEMM's loop nest
// is linear_gemm's with every k step a pair of columns (k, k + 1): a
// micro-panel word holds w[n][k], w[n][k + 1], which is word k/2 of w's row
// as it lies in memory, and the broadcast is x's word k/2. So packing is a
// transpose of 32-bit words with no conversion, and the panel and x's rows
// are half their fp32 size. x is bf16 already (the activations of a bf16
// model): nothing is rounded that was not.
#define TK_BF16_DOT 1

// pack_w for the dot GEMM: bp[p·(kc/2)·NR + i·NR + j] = word i of columns
// [k0, k0 + kc) of row n0 + p·NR + j (zero past K and past n0 + nc). A
// 32-column block of VW = 16 rows is a 16 × 16 square of words: one
// transpose.
void pack_w_dot(const LinearArgs& a, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t* bp) {
  const int64_t rb = a.K * 2;  // row bytes (bf16)
  const int64_t whole = a.K / kLinearBlock;
  for (int64_t p = 0; p * kNR < nc; ++p) {
    uint32_t* panel = bp + p * (kc / 2) * kNR;
    for (int64_t kb = k0 / kLinearBlock; kb < (k0 + kc) / kLinearBlock; ++kb) {
      uint32_t* dst = panel + (kb * kLinearBlock - k0) / 2 * kNR;
      for (int h = 0; h < kNV; ++h) {
        vf t[VW];  // t[r]: the block's 16 words of row r (bits, not floats)
        for (int r = 0; r < VW; ++r) {
          const int64_t n = n0 + p * kNR + h * VW + r;
          const uint8_t* row = static_cast<const uint8_t*>(a.w) + n * rb;
          if (n >= n0 + nc) {
            t[r] = vf{};
          } else if (kb < whole) {
            __builtin_prefetch(row + (kb + 8) * 64);  // (as pack_w)
            t[r] = vload<vf>(row + kb * 64);
          } else {  // the tail block: columns past K are zero
            uint16_t v[kLinearBlock] = {};
            std::memcpy(v, row + kb * 64, (a.K - kb * kLinearBlock) * 2);
            t[r] = vload<vf>(v);
          }
        }
        transpose(t);
        for (int q = 0; q < VW; ++q) {
          std::memcpy(dst + q * kNR + h * VW, &t[q], sizeof(vf));
        }
      }
    }
  }
}

// gemm_tile for the dot GEMM: xp[m·KCP + i] holds word i of x's row (pairs
// of columns), kp = kc/2 words.
inline void gemm_tile_dot(const uint32_t* xp, const uint32_t* bp, int64_t kp, float* c, bool first, bool last,
                          const LinearArgs& a, int64_t m0, int64_t n0, int mr, int nr) {
  // Held as vf for tile_out, a bit cast around each vdpbf16ps; zeroed one
  // by one (`= {}` compiled to a rep stos, ~1 % of the tile on Zen 4).
  vf acc[kMR][kNV];
  for (int m = 0; m < kMR; ++m) {
    for (int j = 0; j < kNV; ++j) {
      acc[m][j] = __builtin_bit_cast(vf, _mm512_setzero_ps());
    }
  }
#pragma GCC unroll 4
  for (int64_t i = 0; i < kp; ++i) {
    __m512bh w[kNV];
    for (int j = 0; j < kNV; ++j) {
      w[j] = (__m512bh)_mm512_loadu_si512(bp + i * kNR + j * VW);
    }
    for (int m = 0; m < kMR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(int(xp[m * kKCP + i]));
      for (int j = 0; j < kNV; ++j) {
        acc[m][j] = __builtin_bit_cast(vf, _mm512_dpbf16_ps(__builtin_bit_cast(__m512, acc[m][j]), xv, w[j]));
      }
    }
  }
  tile_out(acc, c, first, last, a, m0, n0, mr, nr);
}

// Decode (M < kLinearGemmMinM) for the dot path: DNR rows of w read side by
// side against MR rows of x (a.xb), each 32-column block of a row one 64-byte
// load and one vdpbf16ps per row of x (the fp32 loop converts and FMAs it in
// six instructions). The tail block (K % 32) is a masked load, zeros past K.
template <int MR, int DNR>
void decode_dot_tile(const LinearArgs& a, int64_t n0, int64_t m0) {
  const RowBlock<WeightKind::bf16, DNR> rows(a, n0);
  const int64_t whole = a.K / kLinearBlock, blocks = a.Kp / kLinearBlock;
  // One row at a time: two accumulators (even and odd blocks), else the
  // one chain's latency bounds the loop.
  constexpr int AS = DNR == 1 ? 2 : 1;
  __m512 acc[MR][DNR][AS];
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < DNR; ++r) {
      for (int h = 0; h < AS; ++h) {
        acc[m][r][h] = _mm512_setzero_ps();
      }
    }
  }
  for (int64_t kb = 0; kb < blocks; ++kb) {
    rows.prefetch_next(kb);
    __m512bh w[DNR];
    for (int r = 0; r < DNR; ++r) {
      const uint8_t* p = rows.row[r] + kb * 64;
      w[r] = (__m512bh)(kb < whole ? _mm512_loadu_si512(p)
                                   : _mm512_maskz_loadu_epi16(__mmask32((1ull << (a.K - kb * kLinearBlock)) - 1), p));
    }
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(a.xb + (m0 + m) * a.Kp + kb * kLinearBlock);
      for (int r = 0; r < DNR; ++r) {
        acc[m][r][kb % AS] = _mm512_dpbf16_ps(acc[m][r][kb % AS], xv, w[r]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < DNR; ++r) {
      __m512 sum = acc[m][r][0];
      for (int h = 1; h < AS; ++h) {
        sum = _mm512_add_ps(sum, acc[m][r][h]);
      }
      store_any(a.out_dtype, a.out, (m0 + m) * a.N + n0 + r, _mm512_reduce_add_ps(sum));
    }
  }
}

template <int DNR>
void decode_dot_rows(const LinearArgs& a, int64_t n0) {
  x_tiles(a, [&](auto mr, int64_t m0) { decode_dot_tile<decltype(mr)::value, DNR>(a, n0, m0); });
}

// Rows of w side by side, as the fp32 loop (kDecodeNR). Measured on Zen 4
// (2 cores, bf16 w from DRAM, M = 1, interleaved in one process, 8 rounds
// each): against the fp32 loop 1.06-1.11x at 5120->15360 / 5120 / 27392 /
// 65540 and 13696->5120 (39 of 40 rounds; M = 4 1.03x); one row at a time
// (llama.cpp's way) 0.60-0.92x of four (interleaved builds, 0 of 18).
constexpr int kDotDecodeNR = 4;

void decode_dot(const LinearArgs& a, int64_t begin, int64_t end) {
  int64_t n = begin;
  // Short rows one at a time, as the fp32 loop (linear_decode): Zen 4, 2
  // cores, interleaved builds, K = 512 (talkie-8l-512's rows): 1.16x at
  // N = 1536, 1.22x at 2736 (12 of 12 rounds); K = 1368 1.02x.
  for (; n + kDotDecodeNR <= end && a.K * 2 >= kSideBySideMinBytes; n += kDotDecodeNR) {
    decode_dot_rows<kDotDecodeNR>(a, n);
  }
  for (; n < end; ++n) {
    decode_dot_rows<1>(a, n);
  }
}
#else
#define TK_BF16_DOT 0
#endif

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// The GEMM (steps 1-4). DOT: the bf16 dot-product variant (TK_BF16_DOT;
// W is bf16, x is a.xb): its panels and copied rows of x hold words, pairs
// of columns, where the fp32 GEMM's hold floats.
template <WeightKind W, bool DOT = false>
void linear_gemm(const LinearArgs& a, int64_t begin, int64_t end) {
  float* bp = align64(thread_scratch(0, kNC * kKC + kMR * kKCP + kMC * kNC + 16));
  float* xp = bp + kNC * kKC;
  float* c = xp + kMR * kKCP;
  // The dot GEMM's K blocks are twice as long: its panels and rows of x take
  // the same bytes, the accumulator c is passed half as often (Zen 4, 2
  // cores, M = 512, interleaved builds: 1.045-1.06x at 5120 -> 15360, 13696
  // -> 5120 and 5120 -> 5120, 16 of 18 rounds).
  const int64_t kc_max = DOT ? 2 * kKC : kKC;
  // Row blocks of equal size (whole register blocks), at most kMC.
  const int64_t mblocks = (a.M + kMC - 1) / kMC;
  const int64_t mc_rows = ((a.M + mblocks - 1) / mblocks + kMR - 1) / kMR * kMR;
  // Column blocks likewise (whole micro-panels, at most kNC): 320 columns are
  // two blocks of 160, not 256 and a thin 64 whose rows of x are copied for
  // few register blocks.
  const int64_t nblocks = (end - begin + kNC - 1) / kNC;
  const int64_t nc_cols = ((end - begin + nblocks - 1) / nblocks + kNR - 1) / kNR * kNR;
  for (int64_t m0 = 0; m0 < a.M; m0 += mc_rows) {
    const int64_t mc = min64(mc_rows, a.M - m0);
    for (int64_t n0 = begin; n0 < end; n0 += nc_cols) {
      const int64_t nc = min64(nc_cols, end - n0);
      for (int64_t k0 = 0; k0 < a.Kp; k0 += kc_max) {
        const int64_t kc = min64(kc_max, a.Kp - k0);
#if TK_BF16_DOT
        if constexpr (DOT) {
          pack_w_dot(a, n0, nc, k0, kc, reinterpret_cast<uint32_t*>(bp));
        } else
#endif
        {
          pack_w<W>(a, n0, nc, k0, kc, bp);
        }
        const int64_t share = (nc + (mc + kMR - 1) / kMR - 1) / ((mc + kMR - 1) / kMR);  // rows per register block
        for (int64_t i = 0; i < mc; i += kMR) {
          const int mr = int(min64(kMR, mc - i));
          // While these rows compute, ask for a share of the next K block's
          // weight bytes (into L2), so packing it does not wait on memory.
          if (k0 + kc < a.K) {
            const int64_t lo = row_bytes<W>(k0 + kc), hi = row_bytes<W>(min64(k0 + 2 * kc, a.K));
            for (int64_t r = i / kMR * share; r < min64(i / kMR * share + share, nc); ++r) {
              const uint8_t* row = static_cast<const uint8_t*>(a.w) + (n0 + r) * row_bytes<W>(a.K);
              for (int64_t b = lo; b < hi; b += 64) {
                __builtin_prefetch(row + b, 0, 2);
              }
            }
          }
          // (A vector loop: memcpy compiled to rep movsq, slower for 1 KB.)
          // The dot GEMM's rows are bf16, kc/2 words, read as floats' bits.
          const int64_t xk = DOT ? kc / 2 : kc;
          for (int m = 0; m < kMR; ++m) {  // rows past mc: zeros, computed and dropped
            const float* src = DOT ? reinterpret_cast<const float*>(a.xb + (m0 + i + m) * a.Kp + k0)
                                   : a.x + (m0 + i + m) * a.Kp + k0;
            for (int64_t k = 0; k < xk; k += VW) {
              const vf v = m < mr ? vload<vf>(src + k) : vf{};
              std::memcpy(xp + m * kKCP + k, &v, sizeof(v));
            }
          }
          // x (M·K fp32) is read from L3: the last micro-panels ask for the
          // next register block's rows of x (into L2), row r with the r-th
          // from the end, so the copy above does not wait on them. (Zen 3,
          // one core, bf16 w, 512×5120→2048: 81-83 -> 86-87 GFLOP/s with
          // this, the vector copy and column 0 setting the accumulators;
          // asking during the first micro-panels instead gave 86.)
          const int64_t tiles = (nc + kNR - 1) / kNR;
          for (int64_t j = 0, t = 0; j < nc; j += kNR, ++t) {
            for (int64_t r = tiles - 1 - t; r < kMR && i + kMR + r < mc; r += tiles) {
              const int64_t at = (m0 + i + kMR + r) * a.Kp + k0;
              const char* ahead = DOT ? reinterpret_cast<const char*>(a.xb + at) : reinterpret_cast<const char*>(a.x + at);
              for (int64_t b = 0; b < xk * 4; b += 64) {
                __builtin_prefetch(ahead + b, 0, 2);
              }
            }
#if TK_BF16_DOT
            if constexpr (DOT) {
              gemm_tile_dot(reinterpret_cast<const uint32_t*>(xp), reinterpret_cast<const uint32_t*>(bp) + j * kc / 2,
                            kc / 2, c + i * kNC + j, k0 == 0, k0 + kc == a.Kp, a, m0 + i, n0 + j, mr,
                            int(min64(kNR, nc - j)));
              continue;
            }
#endif
            gemm_tile(xp, bp + j * kc, kc, c + i * kNC + j, k0 == 0, k0 + kc == a.Kp, a, m0 + i, n0 + j, mr,
                      int(min64(kNR, nc - j)));
          }
        }
      }
    }
  }
}

template <WeightKind W>
void linear_kind(const LinearArgs& a, int64_t begin, int64_t end) {
  if (a.M >= kLinearGemmMinM) {
    linear_gemm<W>(a, begin, end);
  } else {
    linear_decode<W>(a, begin, end);
  }
}

} // namespace

void linear_prepare_x(const LinearX& x, WeightKind kind, float* dst, int64_t begin, int64_t end) {
  const int64_t Kp = (x.K + kLinearBlock - 1) / kLinearBlock * kLinearBlock;
  int64_t col[kLinearBlock];
  bool in_order = x.col_stride == 1;
  for (int64_t p = 0; p < kLinearBlock; ++p) {
    col[p] = block_column(kind, p);
    in_order = in_order && col[p] == p;
  }
  for (int64_t m = begin; m < end; ++m) {
    float* d = dst + m * Kp;
    const int64_t row = m * x.row_stride;
    if (in_order) {
      // The kind's block order is x's own (dense weights, q8) and x's columns
      // are contiguous: one vectorized conversion (the gather below is
      // scalar, ~4 % of a 512-row bf16 prefill).
      to_float(x.dtype, x.ptr, row, x.K, d);
      std::fill(d + x.K, d + Kp, 0.0f);
      continue;
    }
    for (int64_t k0 = 0; k0 < Kp; k0 += kLinearBlock) {
      for (int64_t p = 0; p < kLinearBlock; ++p) {
        const int64_t k = k0 + col[p];
        d[k0 + p] = k < x.K ? load_any(x.dtype, x.ptr, row + k * x.col_stride) : 0.0f;
      }
    }
  }
}

#if TK_BF16_DOT
void linear_bf16(const LinearArgs& a, int64_t begin, int64_t end) {
  if (a.M >= kLinearGemmMinM) {
    linear_gemm<WeightKind::bf16, true>(a, begin, end);
  } else {
    decode_dot(a, begin, end);
  }
}
#endif

void linear(const LinearArgs& a, int64_t begin, int64_t end) {
  switch (a.kind) {
    case WeightKind::f32:
      return linear_kind<WeightKind::f32>(a, begin, end);
    case WeightKind::f16:
      return linear_kind<WeightKind::f16>(a, begin, end);
    case WeightKind::bf16:
      return linear_kind<WeightKind::bf16>(a, begin, end);
    case WeightKind::q4:
      return linear_kind<WeightKind::q4>(a, begin, end);
    case WeightKind::q6:
      return linear_kind<WeightKind::q6>(a, begin, end);
    case WeightKind::q8:
      return linear_kind<WeightKind::q8>(a, begin, end);
  }
}

} // namespace tk::kern::TK_ISA
