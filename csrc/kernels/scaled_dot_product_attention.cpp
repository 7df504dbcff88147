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
//   the G·L query rows that share the kv head, so each K/V byte is read once.
//   Per block of kAttnBlock keys: the K and V rows are converted (or
//   dequantized) once into fp32 panels in L1, the scores are dot products
//   along D, then an online softmax (running max m, sum l, rescaled fp32
//   accumulator) in fp32. attention_merge then combines the pieces of each
//   row: M = max m_i, out = Σ e^(m_i − M)·acc_i / Σ e^(m_i − M)·l_i.
// * Prefill: bound by arithmetic (2·L·S·D flops per head, halved by the
//   causal mask). A work item is a tile of kAttnRows query rows (G heads ×
//   kAttnRows/G positions, one kv head); q is held transposed (D × rows),
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

// ---- K/V rows into fp32 panels ------------------------------------------------

// Row s of (b, h) of a K or V input as `ld` fp32 values (n real, the rest 0).
template <Dtype K>
inline void dense_row(const KVArgs& a, int64_t b, int64_t h, int64_t s, int64_t n, int64_t ld, float* dst) {
  using T = typename Storage<K>::type;
  const T* p = static_cast<const T*>(a.x.ptr) + b * a.x.b + h * a.x.h + s * a.x.s;
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    vstore(dst + i, vload_float<K>(p + i));
  }
  for (; i < n; ++i) {
    dst[i] = load<K>(p[i]);
  }
  for (; i < ld; ++i) {
    dst[i] = 0.0f;
  }
}

// The same for MLX affine codes (4 or 8 bits, element i at bit i·bits of the
// row): w = scale·q + bias per group, in fp32.
template <Dtype SB, int Bits>
inline void quantized_row(const KVArgs& a, int64_t gs, int64_t b, int64_t h, int64_t s, int64_t n, int64_t ld, float* dst) {
  using T = typename Storage<SB>::type;
  const uint8_t* codes = reinterpret_cast<const uint8_t*>(static_cast<const uint32_t*>(a.x.ptr) + b * a.x.b + h * a.x.h + s * a.x.s);
  const T* sc = static_cast<const T*>(a.scales.ptr) + b * a.scales.b + h * a.scales.h + s * a.scales.s;
  const T* bi = static_cast<const T*>(a.biases.ptr) + b * a.biases.b + h * a.biases.h + s * a.biases.s;
  for (int64_t g = 0; g * gs < n; ++g) {
    const fvec scale = vsplat(load<SB>(sc[g])), bias = vsplat(load<SB>(bi[g]));
    for (int64_t i = g * gs; i < (g + 1) * gs; i += kVec) {
      uvec q;
      if constexpr (Bits == 8) {
        q = vwiden_bytes(codes + i);
      } else {
        // Lane j holds element i + j: byte (i + j)/2, low nibble for even j.
        uint8_t dup[kVec];
        for (int j = 0; j < kVec; ++j) {
          dup[j] = codes[(i + j) / 2];
        }
        uvec shift;
        for (int j = 0; j < kVec; ++j) {
          shift[j] = 4 * (j & 1);
        }
        q = (vwiden_bytes(dup) >> shift) & 15u;
      }
      vstore(dst + i, __builtin_convertvector(q, fvec) * scale + bias);
    }
  }
  for (int64_t i = n; i < ld; ++i) {
    dst[i] = 0.0f;
  }
}

// Rows [s0, s0 + rows) of (b, h) into panel (kBlk × ld); rows past `rows` are zero.
inline void load_panel(const KVArgs& a, int64_t gs, int64_t b, int64_t h, int64_t s0, int64_t rows, int64_t n, int64_t ld, float* panel) {
  auto each = [&](auto row) {
    for (int64_t j = 0; j < rows; ++j) {
      row(s0 + j, panel + j * ld);
    }
  };
  if (a.bits == 0) {
    with_dtype(a.dtype, [&](auto t) {
      each([&](int64_t s, float* dst) { dense_row<decltype(t)::value>(a, b, h, s, n, ld, dst); });
    });
  } else {
    with_dtype(a.dtype, [&](auto t) {
      constexpr Dtype SB = decltype(t)::value;
      if (a.bits == 8) {
        each([&](int64_t s, float* dst) { quantized_row<SB, 8>(a, gs, b, h, s, n, ld, dst); });
      } else {
        each([&](int64_t s, float* dst) { quantized_row<SB, 4>(a, gs, b, h, s, n, ld, dst); });
      }
    });
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

struct DecodeScratch {
  float *q, *acc, *kp, *vp, *p;

  DecodeScratch(const AttentionArgs& a, float* s) {
    const int64_t R = attention_rows(a), ldk = round_up(a.D, 16), ldv = round_up(a.Dv, 16);
    q = s;
    acc = q + R * ldk;
    kp = acc + R * ldv;
    vp = kp + kBlk * ldk;
    p = vp + kBlk * ldv;
  }
};

void decode_item(const AttentionArgs& a, int64_t item, float* scratch) {
  const int64_t G = a.Hq / a.Hkv, R = G * a.L;
  const int64_t nsplit = attention_splits(a);
  const int64_t piece = item % nsplit, bh = item / nsplit, b = bh / a.Hkv, hkv = bh % a.Hkv;
  const int64_t k0 = piece * kAttnSplit, k1 = k0 + kAttnSplit < a.S ? k0 + kAttnSplit : a.S;
  const int64_t ldk = round_up(a.D, 16), ldv = round_up(a.Dv, 16);
  DecodeScratch sc(a, scratch);
  float* part = a.partial + item * R * (ldv + 2);  // per row: m, l, acc[ldv]
  for (int64_t r = 0; r < R; ++r) {  // row r = g·L + l
    q_row(a, b, hkv * G + r / a.L, r % a.L, ldk, sc.q + r * ldk);
    part[r * (ldv + 2)] = -__builtin_inff();
    part[r * (ldv + 2) + 1] = 0.0f;
  }
  std::memset(sc.acc, 0, sizeof(float) * R * ldv);
  for (int64_t s0 = k0; s0 < k1; s0 += kBlk) {
    const int64_t nb = k1 - s0 < kBlk ? k1 - s0 : kBlk;
    load_panel(a.k, a.group_size, b, hkv, s0, nb, a.D, ldk, sc.kp);
    load_panel(a.v, a.group_size, b, hkv, s0, nb, a.Dv, ldv, sc.vp);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t h = hkv * G + r / a.L, l = r % a.L;
      const float* q = sc.q + r * ldk;
      float* p = sc.p;
      for (int64_t j = nb; j < kBlk; ++j) {
        p[j] = 0.0f;
      }
      // 1. scores of this block (dot products along D), masked.
      for (int64_t j = 0; j < nb; ++j) {
        const float* k = sc.kp + j * ldk;
        fvec d0{}, d1{};
        int64_t i = 0;
        for (; i + 2 * kVec <= ldk; i += 2 * kVec) {
          d0 += vload<fvec>(q + i) * vload<fvec>(k + i);
          d1 += vload<fvec>(q + i + kVec) * vload<fvec>(k + i + kVec);
        }
        for (; i < ldk; i += kVec) {
          d0 += vload<fvec>(q + i) * vload<fvec>(k + i);
        }
        p[j] = masked(a, vsum(d0 + d1), b, h, l, s0 + j);
      }
      // 2. online softmax: new max, rescale of the running sum and accumulator.
      float* st = part + r * (ldv + 2);
      float mb = st[0];
      for (int64_t j = 0; j < nb; ++j) {
        mb = mb > p[j] ? mb : p[j];
      }
      const float alpha = __builtin_expf(st[0] - mb);
      float lsum = 0.0f;
      for (int64_t j = 0; j < kBlk; j += kVec) {
        vstore(p + j, vexp(vload<fvec>(p + j) - mb));
      }
      for (int64_t j = 0; j < nb; ++j) {
        lsum += p[j];
      }
      st[0] = mb;
      st[1] = st[1] * alpha + lsum;
      // 3. acc = alpha·acc + Σ_j p_j·v_j.
      float* acc = sc.acc + r * ldv;
      // (The block's sum is formed on its own, then added: the error grows
      // with S/kBlk + kBlk rather than S.)
      for (int64_t i = 0; i < ldv; i += kVec) {
        fvec o{};
        for (int64_t j = 0; j < nb; ++j) {
          o += p[j] * vload<fvec>(sc.vp + j * ldv + i);
        }
        vstore(acc + i, vload<fvec>(acc + i) * alpha + o);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    std::memcpy(part + r * (ldv + 2) + 2, sc.acc + r * ldv, sizeof(float) * ldv);
  }
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

void prefill_item(const AttentionArgs& a, int64_t item, float* scratch) {
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
    load_panel(a.k, a.group_size, b, hkv, s0, nb, a.D, ldk, sc.kp);
    load_panel(a.v, a.group_size, b, hkv, s0, nb, a.Dv, ldv, sc.vp);
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
  for (int64_t item = begin; item < end; ++item) {
    decode_item(a, item, scratch);
  }
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
  for (int64_t item = begin; item < end; ++item) {
    prefill_item(a, item, scratch);
  }
}

} // namespace tk::kern::TK_ISA
