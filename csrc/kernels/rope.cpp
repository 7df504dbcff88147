// rope and rope_qk_norm: the CPU loops (see kernels.h for the interface).
//
// Compiled once per instruction set into tk::kern::TK_ISA (see kernels.h and
// common.inc for the rules these files follow).
#include <cstring>

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

// ---- RoPE angles ------------------------------------------------------------

// cos/sin(pos * inv_freq[i]) to fp32 accuracy for any int32 position.
// 1. t = pos * inv_freq[i] in double (relative error ~1e-16, so ~1e-10
//    absolute even at pos ~ 1e6; plain MLX's fp32 product is off by
//    ~pos * 6e-8).
// 2. n = round(t * 2/pi) (the 1.5 * 2^52 trick rounds to nearest in the FPU
//    and leaves n mod 4 in the low mantissa bits), r = t - n * pi/2 in
//    [-pi/4, pi/4].
// 3. sin r, cos r by their Taylor series to r^11 / r^12 in double (truncation
//    < 1e-11), then the quadrant n mod 4 swaps/negates them; one rounding to
//    fp32 each.
void rope_table_rows(const RopeTableArgs& a, int64_t begin, int64_t end) {
  const int64_t D2 = a.D2;
  const double* inv = a.inv_freq;
  const double two_over_pi = 0.636619772367581343075535053490;
  const double pi_over_2 = 1.57079632679489661923132169164;
  const double round_magic = 6755399441055744.0;  // 1.5 * 2^52
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tb = item / a.L, l = item % a.L;
    const double pos = double(int64_t(a.offset[tb]) + l);
    float* c_out = a.cos + item * D2;
    float* s_out = a.sin + item * D2;
    for (int64_t i = 0; i < D2; ++i) {
      double t = pos * inv[i];
      double shifted = t * two_over_pi + round_magic;
      uint64_t quadrant = __builtin_bit_cast(uint64_t, shifted) & 3u;
      double n = shifted - round_magic;
      double r = t - n * pi_over_2;
      double r2 = r * r;
      double s = r *
          (1.0 +
           r2 *
               (-1.0 / 6 +
                r2 *
                    (1.0 / 120 +
                     r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (-1.0 / 39916800))))));
      double c = 1.0 +
          r2 *
              (-1.0 / 2 +
               r2 *
                   (1.0 / 24 +
                    r2 *
                        (-1.0 / 720 +
                         r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800 + r2 * (1.0 / 479001600))))));
      // quadrant 0: (s, c); 1: (c, -s); 2: (-s, -c); 3: (-c, s).
      double sin_v = (quadrant & 1u) ? c : s;
      double cos_v = (quadrant & 1u) ? s : c;
      sin_v = (quadrant & 2u) ? -sin_v : sin_v;
      cos_v = ((quadrant + 1u) & 2u) ? -cos_v : cos_v;
      c_out[i] = float(cos_v);
      s_out[i] = float(sin_v);
    }
  }
}

// ---- RoPE (+ RMSNorm + head gain) -------------------------------------------

// RoPE on rows of length D = 2 * D2, x1 = x[:D2], x2 = x[D2:]:
// 1. y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin   (Talkie's inverse rotation)
// 2. if norm: y *= rsqrt(mean(y^2) + eps) * gain  (fp32 throughout)
// 3. out = round(y), once.
// Rows are walked in output order with running (b, h, l) counters. With
// norm they go kRowBlock at a time (see inv_rms), rotated into `scratch`.
//
// Transposed (B, L, H, D) views (q, k sliced from the QKV projection) put
// consecutive positions of a head a whole 3 H D elements apart, a new page
// per row, where the hardware prefetcher does not follow: each row is
// prefetched kPrefetchRows rows ahead (harmless for contiguous inputs;
// prefetches never fault, so running past the end is fine). This made
// transposed prefill ~1.6x faster than without, and faster than walking
// the rows in the views' memory order (which scatters the writes instead).
constexpr int64_t kPrefetchRows = 8;

template <Dtype K, bool kNorm, int64_t kD2>
void rope_rows_impl(const RopeArgs& a, int64_t begin, int64_t end, float* scratch) {
  using S = typename Storage<K>::type;
  const int64_t D2 = kD2 ? kD2 : a.D / 2, D = 2 * D2;
  const int64_t H = a.H, L = a.L;
  const int n_in = a.n_in;
  int64_t l = begin % L, h = (begin / L) % H, b = begin / (L * H);
  S* outs[kRowBlock * 2];
  float ss[kRowBlock * 2], scale[kRowBlock * 2], gain[kRowBlock * 2];
  for (int64_t r0 = begin; r0 < end; r0 += kRowBlock) {
    const int64_t nb = end - r0 < kRowBlock ? end - r0 : kRowBlock;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t trow = (a.table_per_batch ? b * L : 0) + l;
      const float* __restrict c = a.cos + trow * D2;
      const float* __restrict s = a.sin + trow * D2;
      for (int t = 0; t < n_in; ++t) {
        const int64_t* st = a.strides[t];
        const S* __restrict x = at<S>(a.in[t], b * st[0] + h * st[1] + l * st[2]);
        S* __restrict out = at<S>(a.out[t], ((b * H + h) * L + l) * D);
        // (Address arithmetic in integers: the row ahead may be past the end.)
        const uintptr_t ahead = reinterpret_cast<uintptr_t>(x) + kPrefetchRows * st[2] * sizeof(S);
        for (uintptr_t o = 0; o < D * sizeof(S); o += 64) {
          __builtin_prefetch(reinterpret_cast<const void*>(ahead + o));
        }
        if constexpr (!kNorm) {
          for_vectors(D2, [&](auto w, int64_t i) {
            const auto x1 = vget<K>(w, x + i), x2 = vget<K>(w, x + i + D2);
            const auto ci = vget<Dtype::f32>(w, c + i), si = vget<Dtype::f32>(w, s + i);
            vput<K>(w, out + i, x1 * ci + x2 * si);
            vput<K>(w, out + i + D2, x2 * ci - x1 * si);
          });
        } else {
          // Rotate into fp32 scratch, then sum its squares (the row is hot in
          // L1); the scaled, rounded store waits for the block's inv_rms.
          const int64_t k = j * n_in + t;
          float* __restrict y = scratch + k * D;
          for_vectors(D2, [&](auto w, int64_t i) {
            const auto x1 = vget<K>(w, x + i), x2 = vget<K>(w, x + i + D2);
            const auto ci = vget<Dtype::f32>(w, c + i), si = vget<Dtype::f32>(w, s + i);
            vput<Dtype::f32>(w, y + i, x1 * ci + x2 * si);
            vput<Dtype::f32>(w, y + i + D2, x2 * ci - x1 * si);
          });
          outs[k] = out;
          gain[k] = (t == 0 && a.head_gain) ? a.head_gain[h] : 1.0f;
          ss[k] = sum_vectors(D, [&](auto w, int64_t i) {
            const auto v = vget<Dtype::f32>(w, y + i);
            return v * v;
          });
        }
      }
      if (++l == L) {
        l = 0;
        if (++h == H) {
          h = 0;
          ++b;
        }
      }
    }
    if constexpr (kNorm) {
      const int64_t nk = nb * n_in;
      inv_rms(ss, scale, nk, D, a.eps);
      for (int64_t k = 0; k < nk; ++k) {
        const float sc = scale[k] * gain[k];
        const float* __restrict y = scratch + k * D;
        S* __restrict out = outs[k];
        for_vectors(D, [&](auto w, int64_t i) { vput<K>(w, out + i, vget<Dtype::f32>(w, y + i) * sc); });
      }
    }
  }
}

// Talkie's head_dim 128 (and 64) get loops with compile-time trip counts:
// fully unrolled, no remainder loops, the row sum reduced in registers.
template <Dtype K, bool kNorm>
void rope_rows_by_dim(const RopeArgs& a, int64_t begin, int64_t end, float* scratch) {
  switch (a.D) {
    case 128:
      return rope_rows_impl<K, kNorm, 64>(a, begin, end, scratch);
    case 64:
      return rope_rows_impl<K, kNorm, 32>(a, begin, end, scratch);
    default:
      return rope_rows_impl<K, kNorm, 0>(a, begin, end, scratch);
  }
}

template <Dtype K>
void rope_rows(const RopeArgs& a, int64_t begin, int64_t end, float* scratch) {
  if (a.norm) {
    rope_rows_by_dim<K, true>(a, begin, end, scratch);
  } else {
    rope_rows_by_dim<K, false>(a, begin, end, scratch);
  }
}

} // namespace

void rope_table(const RopeTableArgs& a, int64_t begin, int64_t end) {
  rope_table_rows(a, begin, end);
}

void rope(const RopeArgs& a, int64_t begin, int64_t end, float* scratch) {
  with_dtype(a.dtype, [&](auto t) { rope_rows<decltype(t)::value>(a, begin, end, scratch); });
}

} // namespace tk::kern::TK_ISA
