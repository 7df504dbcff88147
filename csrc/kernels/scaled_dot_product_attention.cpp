// The CPU loops of scaled_dot_product_attention: see kernels.h (AttentionArgs)
// for the interface.
//
// out[b, h, l] = Σ_s softmax_s(scale · q[b,h,l] · k[b,h/G,s] + mask) · v[b,h/G,s],
// G = Hq / Hkv query heads per K/V head. Everything is fp32; each output
// element is rounded once.
//
// Why this shape.
// * Decode (L <= kAttnDecodeMaxL): each query row meets each key once, two
//   flops per K/V element, so the loop is bound by reading K and V. The keys
//   of each (b, kv head) are cut into pieces of kAttnSplit (a function of S
//   only: 1 and 2 threads give the same bits); a work item is one piece for
//   the G·L query rows that share the kv head, so each K/V byte is read once,
//   in two sequential passes over the piece: the scores (each K row
//   converted or dequantized in registers, dot products for blocks of up
//   to 4 rows; a single row takes 4 keys at a time), then, after the
//   piece's max m and sum l (vectorized over its keys, in fp32),
//   acc = Σ e^(s − m)·v with register-blocked accumulators (each V row read
//   once for a row's 8 vectors of columns). attention_merge
//   combines the pieces of each row: M = max m_i,
//   out = Σ e^(m_i − M)·acc_i / Σ e^(m_i − M)·l_i. Nothing is copied: at
//   S = 4096 (40 heads × 128, bf16) one core reads ~9 GB/s of K/V, about its
//   streaming-read rate; a panel copy of each block first, or software
//   prefetch, measured 6-7 GB/s.
// * Prefill: bound by arithmetic (2·L·S·D flops per head, halved by the
//   causal mask). A work item is a tile of kAttnRows query rows (G heads ×
//   kAttnRows/G positions, one kv head) against blocks of kAttnBlock keys
//   (converted into fp32 panels), with an online softmax (running max,
//   sum and a rescaled accumulator per row); q is held transposed (D × rows),
//   so every product is vectorized over query rows: S^T = K_blk·Q^T with a
//   4 keys × 2 vectors register block, the softmax statistics per row are
//   plain vector max/exp/sum over the keys, and O^T += V_blkᵀ·P^T with a
//   4 columns × 2 vectors block. Nothing of size L × S is ever stored.
// * Masks: a masked score is the lowest fp32, as MLX's where(mask, s,
//   finfo.min): a fully masked row averages all values, like MLX's.
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

constexpr float kLowest = -3.40282346638528859812e+38f;
constexpr int64_t kBlk = kAttnBlock;
static_assert(kBlk % kVec == 0 && kBlk % 4 == 0);
static_assert(kAttnRows % (2 * kVec) == 0);

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// ---- K/V rows, read kVec elements at a time as fp32 -----------------------------

// A row reader gives chunk(i) = elements [i, i + kVec) of a row as fp32 (i a
// multiple of kVec, i + kVec <= n) and at(i) = element i. Dense: the storage
// type converted in registers. Quantized (MLX affine, element i at bit
// i·bits of the row): scale·q + bias of its group, in fp32, never stored.
template <Dtype K>
struct DenseRows {
  using T = typename Storage<K>::type;
  Strided3 x;
  struct Row {
    const T* p;
    fvec chunk(int64_t i) const {
      return vload_float<K>(p + i);
    }
    float at(int64_t i) const {
      return load<K>(p[i]);
    }
  };
  Row row(int64_t b, int64_t h, int64_t s) const {
    return {static_cast<const T*>(x.ptr) + b * x.b + h * x.h + s * x.s};
  }
};

template <Dtype SB, int Bits>
struct QuantizedRows {
  using T = typename Storage<SB>::type;
  Strided3 x, scales, biases;
  int shift;  // log2(group size)
  struct Row {
    const uint8_t* codes;
    const T* sc;
    const T* bi;
    int shift;
    fvec chunk(int64_t i) const {
      uvec q;
      if constexpr (Bits == 8) {
        q = vwiden_bytes(codes + i);
      } else {
        q = vload_nibbles(codes + i / 2);
      }
      const int64_t g = i >> shift;
      return __builtin_convertvector(q, fvec) * load<SB>(sc[g]) + load<SB>(bi[g]);
    }
    float at(int64_t i) const {
      const uint32_t q = Bits == 8 ? codes[i] : (codes[i / 2] >> (4 * (i & 1))) & 15u;
      return float(q) * load<SB>(sc[i >> shift]) + load<SB>(bi[i >> shift]);
    }
  };
  Row row(int64_t b, int64_t h, int64_t s) const {
    const auto* w = static_cast<const uint32_t*>(x.ptr) + b * x.b + h * x.h + s * x.s;
    return {reinterpret_cast<const uint8_t*>(w),
            static_cast<const T*>(scales.ptr) + b * scales.b + h * scales.h + s * scales.s,
            static_cast<const T*>(biases.ptr) + b * biases.b + h * biases.h + s * biases.s, shift};
  }
};

// Calls f(K rows, V rows) with the readers of a's K/V format (K and V share it).
template <class F>
inline void with_kv(const AttentionArgs& a, F&& f) {
  if (a.k.bits == 0) {
    with_dtype(a.k.dtype, [&](auto t) {
      constexpr Dtype K = decltype(t)::value;
      f(DenseRows<K>{a.k.x}, DenseRows<K>{a.v.x});
    });
    return;
  }
  const int shift = __builtin_ctzll(uint64_t(a.group_size));
  with_dtype(a.k.dtype, [&](auto t) {
    constexpr Dtype SB = decltype(t)::value;
    if (a.k.bits == 8) {
      f(QuantizedRows<SB, 8>{a.k.x, a.k.scales, a.k.biases, shift},
        QuantizedRows<SB, 8>{a.v.x, a.v.scales, a.v.biases, shift});
    } else {
      f(QuantizedRows<SB, 4>{a.k.x, a.k.scales, a.k.biases, shift},
        QuantizedRows<SB, 4>{a.v.x, a.v.scales, a.v.biases, shift});
    }
  });
}

// Elements [i, n) of a row (n - i < kVec) as a zero-padded vector.
template <class Row>
inline fvec partial_chunk(const Row& row, int64_t i, int64_t n) {
  fvec v{};
  for (int64_t j = 0; i + j < n; ++j) {
    v[j] = row.at(i + j);
  }
  return v;
}

// Rows [s0, s0 + rows) of (b, h) into panel (kBlk × ld) for the prefill tiles;
// rows past `rows` and columns past n are zero.
template <class Rows>
inline void load_panel(const Rows& rows_of, int64_t b, int64_t h, int64_t s0, int64_t rows, int64_t n, int64_t ld, float* panel) {
  const int64_t full = n / kVec * kVec;
  for (int64_t j = 0; j < rows; ++j) {
    const auto row = rows_of.row(b, h, s0 + j);
    float* dst = panel + j * ld;
    for (int64_t i = 0; i < full; i += kVec) {
      vstore(dst + i, row.chunk(i));
    }
    for (int64_t i = full; i < ld; i += kVec) {
      vstore(dst + i, partial_chunk(row, i, n));
    }
  }
  std::memset(panel + rows * ld, 0, sizeof(float) * (kBlk - rows) * ld);
}

// ---- masks --------------------------------------------------------------------

// Mask element (b, h, l, s): a keep flag (1 byte) or an additive term.
inline const char* mask_at(const AttentionArgs& a, int64_t b, int64_t h, int64_t l, int64_t s) {
  const int64_t size = a.mask == AttnMask::boolean ? 1 : a.mask_dtype == Dtype::f32 ? 4 : 2;
  return static_cast<const char*>(a.mask_ptr) +
         size * (b * a.mask_strides[0] + h * a.mask_strides[1] + l * a.mask_strides[2] + s * a.mask_strides[3]);
}

// Score `s` of row (b, h, l) against key `key` after the mask.
inline float masked(const AttentionArgs& a, float s, int64_t b, int64_t h, int64_t l, int64_t key) {
  switch (a.mask) {
    case AttnMask::causal:
      return key <= l + a.S - a.L ? s : kLowest;
    case AttnMask::boolean:
      return *mask_at(a, b, h, l, key) ? s : kLowest;
    case AttnMask::additive: {
      const char* p = mask_at(a, b, h, l, key);
      float add;
      if (a.mask_dtype == Dtype::f32) {
        std::memcpy(&add, p, 4);
      } else {
        uint16_t u;
        std::memcpy(&u, p, 2);
        add = a.mask_dtype == Dtype::bf16 ? load<Dtype::bf16>(u) : load<Dtype::f16>(u);
      }
      return s + add;
    }
    default:
      return s;
  }
}

// q row (b, h, l) · scale as `ld` fp32 values (zero padded).
inline void q_row(const AttentionArgs& a, int64_t b, int64_t h, int64_t l, int64_t ld, float* dst) {
  with_dtype(a.q_dtype, [&](auto t) {
    constexpr Dtype K = decltype(t)::value;
    using T = typename Storage<K>::type;
    const T* p = static_cast<const T*>(a.q.ptr) + b * a.q.b + h * a.q.h + l * a.q.s;
    for (int64_t i = 0; i < ld; ++i) {
      dst[i] = i < a.D ? load<K>(p[i]) * a.scale : 0.0f;
    }
  });
}

inline void store_out(const AttentionArgs& a, int64_t b, int64_t h, int64_t l, int64_t d, float v) {
  const int64_t i = ((b * a.Hq + h) * a.L + l) * a.Dv + d;
  with_dtype(a.out_dtype, [&](auto t) {
    constexpr Dtype K = decltype(t)::value;
    static_cast<typename Storage<K>::type*>(a.out)[i] = store<K>(v);
  });
}

// ---- decode: one piece of keys for the G·L rows of a kv head -------------------

// out[r] = q[r] · row for RB rows of q (stride ldq, zero padded to ldq).
template <int RB, class Row>
inline void dot_rows(const float* q, int64_t ldq, const Row& row, int64_t n, float* out, int64_t out_stride) {
  fvec d[RB] = {};
  const int64_t full = n / kVec * kVec;
  for (int64_t i = 0; i < full; i += kVec) {
    const fvec k = row.chunk(i);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      d[r] += vload<fvec>(q + r * ldq + i) * k;
    }
  }
  if (full < n) {
    const fvec k = partial_chunk(row, full, n);
    for (int r = 0; r < RB; ++r) {
      d[r] += vload<fvec>(q + r * ldq + full) * k;
    }
  }
  for (int r = 0; r < RB; ++r) {
    out[r * out_stride] = vsum(d[r]);
  }
}

// out[j] = q · K row s + j for four keys and one row of q: dot_rows<1>'s sums,
// bit for bit, as four independent chains instead of one chain of FMAs and
// a horizontal sum per key. Measured on Zen 4 (1 thread, 4 heads × 2048
// bf16 positions in cache, interleaved builds, 3 rounds): v4-bf16 21-25 ->
// 25-30 GB/s, v3 20-23 -> 23-28. From DRAM on 2 cores (40 heads) the two
// were level within this VM's noise (0.80 / 0.79 of the read probe): the
// headroom is for memory faster than a core's loop.
template <class Rows>
inline void dot_keys4(const float* q, const Rows& K, int64_t b, int64_t h, int64_t s, int64_t n, float* out) {
  const auto r0 = K.row(b, h, s), r1 = K.row(b, h, s + 1), r2 = K.row(b, h, s + 2), r3 = K.row(b, h, s + 3);
  fvec d0{}, d1{}, d2{}, d3{};
  const int64_t full = n / kVec * kVec;
  for (int64_t i = 0; i < full; i += kVec) {
    const fvec qv = vload<fvec>(q + i);
    d0 += qv * r0.chunk(i);
    d1 += qv * r1.chunk(i);
    d2 += qv * r2.chunk(i);
    d3 += qv * r3.chunk(i);
  }
  if (full < n) {
    const fvec qv = vload<fvec>(q + full);
    d0 += qv * partial_chunk(r0, full, n);
    d1 += qv * partial_chunk(r1, full, n);
    d2 += qv * partial_chunk(r2, full, n);
    d3 += qv * partial_chunk(r3, full, n);
  }
  out[0] = vsum(d0);
  out[1] = vsum(d1);
  out[2] = vsum(d2);
  out[3] = vsum(d3);
}

// acc[r][c0 .. c0 + NC·kVec) += Σ_j p[r][j] · v_j over the piece's keys, for RB
// rows, in registers; sums of 32 keys are added to acc (error ~ n/32 + 32
// roundings rather than n). `partial`: the last, short chunk of the row.
template <int RB, int NC, bool Partial, class Rows>
inline void accumulate_values(const Rows& V, int64_t b, int64_t h, int64_t k0, int64_t n, const float* p,
                              int64_t ldp, int64_t c0, int64_t Dv, float* acc, int64_t lda) {
  for (int64_t j0 = 0; j0 < n; j0 += 32) {
    const int64_t j1 = j0 + 32 < n ? j0 + 32 : n;
    fvec o[RB][NC] = {};
    for (int64_t j = j0; j < j1; ++j) {
      const auto row = V.row(b, h, k0 + j);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) {
        const fvec v = Partial ? partial_chunk(row, c0, Dv) : row.chunk(c0 + c * kVec);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          o[r][c] += p[r * ldp + j] * v;
        }
      }
    }
    for (int r = 0; r < RB; ++r) {
      for (int c = 0; c < NC; ++c) {
        float* dst = acc + r * lda + c0 + c * kVec;
        vstore(dst, vload<fvec>(dst) + o[r][c]);
      }
    }
  }
}

// All of acc's columns for RB rows: register blocks of 8/RB vectors, then single ones.
template <int RB, class Rows>
inline void values_rows(const Rows& V, int64_t b, int64_t h, int64_t k0, int64_t n, const float* p, int64_t ldp,
                        int64_t Dv, float* acc, int64_t lda) {
  constexpr int NC = 8 / RB;
  const int64_t full = Dv / kVec * kVec;
  int64_t c0 = 0;
  for (; c0 + NC * kVec <= full; c0 += NC * kVec) {
    accumulate_values<RB, NC, false>(V, b, h, k0, n, p, ldp, c0, Dv, acc, lda);
  }
  for (; c0 < full; c0 += kVec) {
    accumulate_values<RB, 1, false>(V, b, h, k0, n, p, ldp, c0, Dv, acc, lda);
  }
  if (full < Dv) {
    accumulate_values<RB, 1, true>(V, b, h, k0, n, p, ldp, full, Dv, acc, lda);
  }
}

// Rows [0, R) in blocks of 4, 2, 1: f.template operator()<RB>(r).
template <class F>
inline void row_blocks(int64_t R, F&& f) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    f.template operator()<4>(r);
  }
  for (; r + 2 <= R; r += 2) {
    f.template operator()<2>(r);
  }
  for (; r < R; ++r) {
    f.template operator()<1>(r);
  }
}

// One piece of keys [k0, k1) for the R = G·L rows of kv head (b, hkv), in
// three passes: 1. the scores (K read once, row by row); 2. per row, its max
// m, p = e^(s − m) and l = Σ p, vectorized over the keys; 3. acc = Σ p·v
// (V read once). Writes (m, l, acc) per row to a.partial.
template <class Rows>
void decode_piece(const AttentionArgs& a, const Rows& K, const Rows& V, int64_t item, float* scratch) {
  const int64_t G = a.Hq / a.Hkv, R = G * a.L;
  const int64_t nsplit = attention_splits(a);
  const int64_t piece = item % nsplit, bh = item / nsplit, b = bh / a.Hkv, hkv = bh % a.Hkv;
  const int64_t k0 = piece * kAttnSplit, n = k0 + kAttnSplit < a.S ? kAttnSplit : a.S - k0;
  const int64_t ldk = round_up(a.D, 16), ldv = round_up(a.Dv, 16), stride = ldv + 2;
  float* q = scratch;  // R × ldk
  float* p = q + R * ldk;  // R × kAttnSplit
  float* part = a.partial + item * R * stride;  // per row: m, l, acc[ldv]
  for (int64_t r = 0; r < R; ++r) {  // row r = g·L + l
    q_row(a, b, hkv * G + r / a.L, r % a.L, ldk, q + r * ldk);
  }
  // 1. scores, masked.
  int64_t j0 = 0;
  if (R == 1) {  // (decode without GQA: Talkie's)
    for (; j0 + 4 <= n; j0 += 4) {
      dot_keys4(q, K, b, hkv, k0 + j0, a.D, p + j0);
    }
  }
  for (int64_t j = j0; j < n; ++j) {
    const auto row = K.row(b, hkv, k0 + j);
    row_blocks(R, [&]<int RB>(int64_t r) { dot_rows<RB>(q + r * ldk, ldk, row, a.D, p + r * kAttnSplit + j, kAttnSplit); });
  }
  if (a.mask != AttnMask::none) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        p[r * kAttnSplit + j] = masked(a, p[r * kAttnSplit + j], b, hkv * G + r / a.L, r % a.L, k0 + j);
      }
    }
  }
  // 2. softmax statistics of the piece (padding keys are -inf: weight 0).
  const int64_t np = round_up(n, kVec);
  for (int64_t r = 0; r < R; ++r) {
    float* pr = p + r * kAttnSplit;
    for (int64_t j = n; j < np; ++j) {
      pr[j] = -__builtin_inff();
    }
    fvec mv = vsplat(-__builtin_inff());
    for (int64_t j = 0; j < np; j += kVec) {
      mv = vmax(mv, vload<fvec>(pr + j));
    }
    const float m = vmax_lanes(mv);
    fvec lv{};
    for (int64_t j = 0; j < np; j += kVec) {
      const fvec e = vexp(vload<fvec>(pr + j) - m);
      vstore(pr + j, e);
      lv += e;
    }
    part[r * stride] = m;
    part[r * stride + 1] = vsum(lv);
    std::memset(part + r * stride + 2, 0, sizeof(float) * ldv);
  }
  // 3. values.
  row_blocks(R, [&]<int RB>(int64_t r) {
    values_rows<RB>(V, b, hkv, k0, n, p + r * kAttnSplit, kAttnSplit, a.Dv, part + r * stride + 2, stride);
  });
}

// ---- prefill: a tile of query rows against all the keys they see --------------

struct PrefillScratch {
  float *qt, *ot, *st, *kp, *vp, *m, *l, *pos, *alpha, *qrow;

  PrefillScratch(const AttentionArgs& a, float* s) {
    const int64_t Rp = attention_tile_rows(a), ldk = round_up(a.D, 16), ldv = round_up(a.Dv, 16);
    qt = s;
    ot = qt + a.D * Rp;
    st = ot + ldv * Rp;
    kp = st + kBlk * Rp;
    vp = kp + kBlk * ldk;
    m = vp + kBlk * ldv;
    l = m + Rp;
    pos = l + Rp;
    alpha = pos + Rp;
    qrow = alpha + Rp;
  }
};

// st (kBlk × Rp) = kp (kBlk × ldk) · qt (D × Rp): 4 keys × 2 vectors of rows per step.
inline void scores_tile(const float* kp, int64_t ldk, const float* qt, int64_t D, int64_t Rp, int64_t nb, float* st) {
  for (int64_t j0 = 0; j0 < nb; j0 += 4) {
    for (int64_t c = 0; c < Rp; c += 2 * kVec) {
      fvec acc[4][2] = {};
      for (int64_t d = 0; d < D; ++d) {
        const fvec q0 = vload<fvec>(qt + d * Rp + c), q1 = vload<fvec>(qt + d * Rp + c + kVec);
#pragma GCC unroll 4
        for (int jj = 0; jj < 4; ++jj) {
          const float k = kp[(j0 + jj) * ldk + d];
          acc[jj][0] += k * q0;
          acc[jj][1] += k * q1;
        }
      }
      for (int jj = 0; jj < 4; ++jj) {
        vstore(st + (j0 + jj) * Rp + c, acc[jj][0]);
        vstore(st + (j0 + jj) * Rp + c + kVec, acc[jj][1]);
      }
    }
  }
}

// ot (ldv × Rp) = ot · alpha + vpᵀ (ldv × nb) · st (nb × Rp): 4 columns × 2 vectors of rows per step.
inline void values_tile(const float* vp, int64_t ldv, const float* st, const float* alpha, int64_t Rp, int64_t nb, float* ot) {
  for (int64_t d0 = 0; d0 < ldv; d0 += 4) {
    for (int64_t c = 0; c < Rp; c += 2 * kVec) {
      const fvec a0 = vload<fvec>(alpha + c), a1 = vload<fvec>(alpha + c + kVec);
      fvec acc[4][2] = {};  // the block's own sum, added at the end (see decode_item)
      for (int64_t j = 0; j < nb; ++j) {
        const fvec p0 = vload<fvec>(st + j * Rp + c), p1 = vload<fvec>(st + j * Rp + c + kVec);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          const float v = vp[j * ldv + d0 + i];
          acc[i][0] += v * p0;
          acc[i][1] += v * p1;
        }
      }
      for (int i = 0; i < 4; ++i) {
        vstore(ot + (d0 + i) * Rp + c, vload<fvec>(ot + (d0 + i) * Rp + c) * a0 + acc[i][0]);
        vstore(ot + (d0 + i) * Rp + c + kVec, vload<fvec>(ot + (d0 + i) * Rp + c + kVec) * a1 + acc[i][1]);
      }
    }
  }
}

template <class Rows>
void prefill_item(const AttentionArgs& a, const Rows& K, const Rows& V, int64_t item, float* scratch) {
  const int64_t G = a.Hq / a.Hkv, Lb = attention_tile_positions(a), Rp = attention_tile_rows(a);
  const int64_t tiles = (a.L + Lb - 1) / Lb;
  const int64_t tile = item % tiles, bh = item / tiles, b = bh / a.Hkv, hkv = bh % a.Hkv;
  const int64_t l0 = tile * Lb, nl = a.L - l0 < Lb ? a.L - l0 : Lb, R = nl * G;
  const int64_t ldk = round_up(a.D, 16), ldv = round_up(a.Dv, 16);
  PrefillScratch sc(a, scratch);
  // 1. q^T (D × Rp), row r = li·G + g (rows of one position together, so the
  //    causal limit grows with r); padded rows are zero and see every key.
  std::memset(sc.qt, 0, sizeof(float) * a.D * Rp);
  for (int64_t r = 0; r < R; ++r) {
    q_row(a, b, hkv * G + r % G, l0 + r / G, a.D, sc.qrow);
    for (int64_t d = 0; d < a.D; ++d) {
      sc.qt[d * Rp + r] = sc.qrow[d];
    }
  }
  for (int64_t r = 0; r < Rp; ++r) {
    sc.m[r] = -__builtin_inff();
    sc.l[r] = 0.0f;
    sc.pos[r] = r < R ? float(l0 + r / G + a.S - a.L) : 3e38f;
  }
  std::memset(sc.ot, 0, sizeof(float) * ldv * Rp);
  // 2. The keys the tile sees: under the causal mask up to its last row's
  //    position, unless a row sees none (L > S), which then averages all.
  int64_t kend = a.S;
  if (a.mask == AttnMask::causal && l0 + a.S - a.L >= 0) {
    const int64_t last = l0 + nl - 1 + a.S - a.L + 1;
    kend = last < a.S ? last : a.S;
  }
  const float first_pos = float(l0 + a.S - a.L);
  for (int64_t s0 = 0; s0 < kend; s0 += kBlk) {
    const int64_t nb = kend - s0 < kBlk ? kend - s0 : kBlk;
    load_panel(K, b, hkv, s0, nb, a.D, ldk, sc.kp);
    load_panel(V, b, hkv, s0, nb, a.Dv, ldv, sc.vp);
    scores_tile(sc.kp, ldk, sc.qt, a.D, Rp, round_up(nb, 4), sc.st);
    // 3. masks.
    if (a.mask == AttnMask::causal && float(s0 + nb - 1) > first_pos) {
      for (int64_t j = 0; j < nb; ++j) {
        const float key = float(s0 + j);
        for (int64_t c = 0; c < Rp; c += kVec) {
          const fvec s = vload<fvec>(sc.st + j * Rp + c);
          vstore(sc.st + j * Rp + c, key <= vload<fvec>(sc.pos + c) ? s : vsplat(kLowest));
        }
      }
    } else if (a.mask == AttnMask::boolean || a.mask == AttnMask::additive) {
      for (int64_t j = 0; j < nb; ++j) {
        for (int64_t r = 0; r < R; ++r) {
          float& s = sc.st[j * Rp + r];
          s = masked(a, s, b, hkv * G + r % G, l0 + r / G, s0 + j);
        }
      }
    }
    // 4. online softmax over the block, vectorized over rows.
    float* al = sc.alpha;
    for (int64_t c = 0; c < Rp; c += kVec) {
      const fvec m_old = vload<fvec>(sc.m + c);
      fvec mb = m_old;
      for (int64_t j = 0; j < nb; ++j) {
        mb = vmax(mb, vload<fvec>(sc.st + j * Rp + c));
      }
      fvec sum{};
      for (int64_t j = 0; j < nb; ++j) {
        const fvec p = vexp(vload<fvec>(sc.st + j * Rp + c) - mb);
        vstore(sc.st + j * Rp + c, p);
        sum += p;
      }
      const fvec al_c = vexp(m_old - mb);
      vstore(al + c, al_c);
      vstore(sc.m + c, mb);
      vstore(sc.l + c, vload<fvec>(sc.l + c) * al_c + sum);
    }
    // 5. O^T = alpha·O^T + V^T·P^T.
    values_tile(sc.vp, ldv, sc.st, al, Rp, nb, sc.ot);
  }
  // 6. out = O / l, rounded once.
  for (int64_t r = 0; r < R; ++r) {
    const float inv = 1.0f / sc.l[r];
    for (int64_t d = 0; d < a.Dv; ++d) {
      store_out(a, b, hkv * G + r % G, l0 + r / G, d, sc.ot[d * Rp + r] * inv);
    }
  }
}

} // namespace

void attention_decode(const AttentionArgs& a, int64_t begin, int64_t end, float* scratch) {
  with_kv(a, [&](const auto& K, const auto& V) {
    for (int64_t item = begin; item < end; ++item) {
      decode_piece(a, K, V, item, scratch);
    }
  });
}

void attention_merge(const AttentionArgs& a, int64_t begin, int64_t end) {
  const int64_t G = a.Hq / a.Hkv, R = G * a.L, nsplit = attention_splits(a), ldv = round_up(a.Dv, 16);
  const int64_t stride = ldv + 2;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / a.Hkv, hkv = bh % a.Hkv;
    float* parts = a.partial + bh * nsplit * R * stride;
    for (int64_t r = 0; r < R; ++r) {
      float M = -__builtin_inff();
      for (int64_t i = 0; i < nsplit; ++i) {
        const float m = parts[(i * R + r) * stride];
        M = M > m ? M : m;
      }
      // Pieces in order, summed into the first one's accumulator.
      float* acc = parts + r * stride + 2;
      const float w0 = __builtin_expf(acc[-2] - M);
      float lsum = w0 * acc[-1];
      for (int64_t d = 0; d < a.Dv; ++d) {
        acc[d] *= w0;
      }
      for (int64_t i = 1; i < nsplit; ++i) {
        const float* p = parts + (i * R + r) * stride;
        const float w = __builtin_expf(p[0] - M);
        lsum += w * p[1];
        for (int64_t d = 0; d < a.Dv; ++d) {
          acc[d] += w * p[2 + d];
        }
      }
      const float inv = 1.0f / lsum;
      for (int64_t d = 0; d < a.Dv; ++d) {
        store_out(a, b, hkv * G + r / a.L, r % a.L, d, acc[d] * inv);
      }
    }
  }
}

void attention_prefill(const AttentionArgs& a, int64_t begin, int64_t end, float* scratch) {
  with_kv(a, [&](const auto& K, const auto& V) {
    for (int64_t item = begin; item < end; ++item) {
      prefill_item(a, K, V, item, scratch);
    }
  });
}

} // namespace tk::kern::TK_ISA
