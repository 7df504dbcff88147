// The integer prefill GEMM of `linear` for quantized weights and bf16 x
// (kernels.h: linear_quantize_x8, linear_gemm8), many rows of x.
//
// Why. The fp32 prefill GEMM (linear.cpp) dequantizes the codes into fp32
// panels, so q4 / q8 prefill runs at the dense rate at best: one FMA per two
// flops. Integer dot products do four byte products per 32-bit lane per
// instruction (vpdpbusd with VNNI; vpmaddubsw pair sums without), so a GEMM
// over int8 x and u8 codes has up to four times the multiply rate:
//
//   1. x (M, K) -> int8 per 32-column block b, as the decode path
//      (linear_int8.cpp): dx_b = max|x_b| / 127, x8 = round(x / dx_b),
//      Σx̂_g per quantization group g; here in column order, rows padded by
//      kGemm8PadRows zero rows (the register block's last rows).
//   2. Per NC output columns and KC columns of K: the codes as u8 micro-panels
//      of NR columns, each 4-column step ("quad") of a column in one 32-bit
//      lane (panel[quad][column][4 bytes]); the scales and biases as fp32
//      panels [group][column].
//   3. Register block MR rows × NR columns: per 32-column block, int32 sums
//      I = Σ q·x8 over its 8 quads (one broadcast of 4 bytes of x per row,
//      one load of NR columns' codes per quad), then once per block
//      F += float(I)·s_g·dx_b, and at each group's end F += b_g·Σx̂_g; the
//      fp32 F add to an MC × NC accumulator per K block; the last K block
//      rounds it to bf16 / fp16, once.
//
// The multiply step, per table (see Mode): VNNI: vpdpbusd. Without VNNI:
// q4 codes (< 16) give pair sums of at most 2·15·127, so a whole block's
// vpmaddubsw results add up in int16 and one vpmaddwd per block widens them;
// q6 codes (< 64) widen each quad's pair sums (vpmaddwd) into int32. q8
// codes (< 256) against x8 in ±127 could saturate vpmaddubsw's pair sums
// (2·255·127 > 32767), and the decode path's sign trick (|q - 128| ×
// x8·sign) costs four instructions per quad, no faster than the fp32 GEMM.
// So for q8 without VNNI each block of x is scaled by its largest sum of
// two adjacent |x| instead of its largest |x| (quantize_block's `pairs`):
// every pair of x8 then sums to at most 128 in magnitude and every pair sum
// to at most 255·128 < 32767, exact, and q8 runs the q6 loop. So every
// table with AVX2 runs q4, q6 and q8 here (the measured rates: table.cpp).
//
// Accuracy: as the decode path (its file comment): the products and sums
// are exact, the one loss is x's rounding to int8 per block: at most 1/254
// of each block's largest |x|; for q8 without VNNI 1/254 of its largest
// adjacent pair, up to twice that (tests/test_linear.py states the errors).
//
// Every output's sum runs over the same blocks, groups and K blocks in the
// same order whatever the column range, so 1 and 2 threads give the same bits.
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

// ---- one vector of int32 lanes / fp32 lanes, 512-bit with AVX-512 ----------

#if defined(__AVX512F__) && defined(__AVX512BW__)
typedef __m512i vi;
typedef __m512 vf;
constexpr int L = 16;  // 32-bit lanes per vector
inline vi loadi(const void* p) { return _mm512_loadu_si512(p); }
inline vi bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
inline vi zeroi() { return _mm512_setzero_si512(); }
inline vi maddubs(vi u, vi s) { return _mm512_maddubs_epi16(u, s); }
inline vi add16(vi a, vi b) { return _mm512_add_epi16(a, b); }
inline vi add32(vi a, vi b) { return _mm512_add_epi32(a, b); }
inline vi widen16(vi a) { return _mm512_madd_epi16(a, _mm512_set1_epi16(1)); }
// (Not _mm512_cvtepi32_ps: GCC 12 warns of its undefined pass-through operand.)
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
inline vf cvt(vi a) { return vf(__builtin_convertvector(v16i(a), v16f)); }
inline vf loadf(const float* p) { return _mm512_loadu_ps(p); }
inline vf set1(float f) { return _mm512_set1_ps(f); }
inline vf fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf mulf(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf addf(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf zerof() { return _mm512_setzero_ps(); }
inline void storef(float* p, vf v) { _mm512_storeu_ps(p, v); }
#if defined(__AVX512VNNI__)
#define TK_GEMM8_VNNI 1
inline vi dot4(vi acc, vi u, vi s) { return _mm512_dpbusd_epi32(acc, u, s); }
#else
#define TK_GEMM8_VNNI 0
#endif
#else
typedef __m256i vi;
typedef __m256 vf;
constexpr int L = 8;
inline vi loadi(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline vi bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
inline vi zeroi() { return _mm256_setzero_si256(); }
inline vi maddubs(vi u, vi s) { return _mm256_maddubs_epi16(u, s); }
inline vi add16(vi a, vi b) { return _mm256_add_epi16(a, b); }
inline vi add32(vi a, vi b) { return _mm256_add_epi32(a, b); }
inline vi widen16(vi a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
inline vf cvt(vi a) { return _mm256_cvtepi32_ps(a); }
inline vf loadf(const float* p) { return _mm256_loadu_ps(p); }
inline vf set1(float f) { return _mm256_set1_ps(f); }
inline vf fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf mulf(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf addf(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf zerof() { return _mm256_setzero_ps(); }
inline void storef(float* p, vf v) { _mm256_storeu_ps(p, v); }
#if defined(__AVXVNNI__)
#define TK_GEMM8_VNNI 1
inline vi dot4(vi acc, vi u, vi s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
#else
#define TK_GEMM8_VNNI 0
#endif
#endif

// How a quad's byte products reach the int32 sums (file comment).
enum class Mode { vnni, int16_block, int16_quad };

template <WeightKind W>
constexpr Mode mode_of() {
  if (TK_GEMM8_VNNI) {
    return Mode::vnni;
  }
  return W == WeightKind::q4 ? Mode::int16_block : Mode::int16_quad;
}

template <WeightKind W>
constexpr int64_t bits_of() {
  return W == WeightKind::q4 ? 4 : W == WeightKind::q6 ? 6 : 8;
}

// The register block: MR rows × NV vectors of columns, MR·NV int32 sums and
// MR·NV fp32 accumulators plus NV vectors of codes, NV of scales and one
// broadcast of x. AVX-512 (32 registers): 6 × 2, 24 + 2 + 2 + 1. AVX2 (16)
// with VNNI: 6 × 1, 12 + 1 + 1 + 1. AVX2 without VNNI: 4 × 2, 8 sums + 2
// codes + x + the widening constant; the 8 fp32 accumulators go to L1 and
// back once per 32-column block, while each broadcast of x feeds two
// vpmaddubsw instead of one. Measured on Zen 3 (AMD EPYC, AVX2), one core,
// M = 512, 5120 -> 2048, GFLOP/s, best of 6 interleaved runs, the chains
// kept (quad): 6 × 1 (q6 5 × 1) q4 162, q6 112, q8 132; 4 × 2 q4 188, q6
// 120, q8 147 (3 × 2, in an earlier set of runs: 172 / 113 / 136 against
// 4 × 2's 183 / 117 / 143).
template <WeightKind W>
constexpr int mr_of() {
  return L == 8 && mode_of<W>() != Mode::vnni ? 4 : 6;
}
template <WeightKind W>
constexpr int nv_of() {
  return L == 8 && mode_of<W>() == Mode::vnni ? 1 : 2;
}
static_assert(kGemm8PadRows >= 6, "the register block's rows past M read padding rows of x");

// K block: a micro-panel is KC/4 quads × NR × 4 bytes (512 × 32 = 16 KB on
// AVX-512), the register block's rows of x MR × KC bytes (L1).
constexpr int64_t kKC = 512;
// Output-column block: the packed codes NC × KC bytes (128 KB) and the fp32
// accumulator MC × NC (512 KB at 512 rows) stay in L2 while all MC rows of x
// pass over them.
constexpr int64_t kNC = 256;
constexpr int64_t kMC = 512;

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Per-thread working memory that grows to the largest request and stays.
inline float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> kept;
  if (int64_t(kept.size()) < floats) {
    kept.resize(floats);
  }
  return kept.data();
}

// n elements of a float array from element `at` on, as fp32.
inline void to_float(Dtype d, const void* p, int64_t at, int64_t n, float* out) {
  with_dtype(d, [&](auto tag) {
    constexpr Dtype D = decltype(tag)::value;
    const auto* src = static_cast<const typename Storage<D>::type*>(p) + at;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = load<D>(src[i]);
    }
  });
}

// Codes k..k+15 of a weight row (bytes `row`) in column order, as 16 bytes.
template <WeightKind W>
inline __m128i codes16(const uint8_t* row, int64_t k) {
  __m128i c;
  if constexpr (W == WeightKind::q8) {
    c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
  } else if constexpr (W == WeightKind::q4) {
    // byte i holds column 2i (low nibble) and 2i + 1 (high nibble).
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2));
    const __m128i m = _mm_set1_epi8(0x0F);
    c = _mm_unpacklo_epi8(_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m));
  } else {  // q6: 4 codes per 3 bytes, code j at bit 6j
    const uint8_t* p = row + k / 4 * 3;
    alignas(16) uint8_t out[16];
    for (int i = 0; i < 4; ++i) {
      const uint32_t t = uint32_t(p[3 * i]) | uint32_t(p[3 * i + 1]) << 8 | uint32_t(p[3 * i + 2]) << 16;
      for (int j = 0; j < 4; ++j) {
        out[4 * i + j] = uint8_t((t >> (6 * j)) & 63);
      }
    }
    c = _mm_load_si128(reinterpret_cast<const __m128i*>(out));
  }
  return c;
}

// Step 2: rows [n0, n0 + nc) × columns [k0, k0 + kc) of w -> micro-panels
// wp (p·(kc/4)·NR·4 + (quad·NR + r)·4 bytes) and the scale / bias panels
// sp, bp (p·(kc/gs)·NR + g·NR + r); zero codes, scales and biases past nc.
// Four rows' 16 codes at a time: a 4 × 4 transpose of 32-bit quads puts
// each quad's four rows side by side.
template <WeightKind W>
void pack(const LinearArgs& a, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint8_t* wp, float* sp, float* bp) {
  constexpr int NR = nv_of<W>() * L;
  const int64_t rb = a.K * bits_of<W>() / 8, groups = a.K / a.group_size;
  const int64_t quads = kc / 4, kg = kc / a.group_size;
  for (int64_t p = 0; p * NR < nc; ++p) {
    uint8_t* panel = wp + p * quads * NR * 4;
    float* sp_p = sp + p * kg * NR;
    float* bp_p = bp + p * kg * NR;
    for (int r0 = 0; r0 < NR; r0 += 4) {
      const uint8_t* row[4];
      bool live[4];
      for (int i = 0; i < 4; ++i) {
        const int64_t n = n0 + p * NR + r0 + i;
        live[i] = n < n0 + nc;
        row[i] = static_cast<const uint8_t*>(a.w) + (live[i] ? n : n0) * rb;
      }
      for (int64_t k = 0; k < kc; k += 16) {
        __m128i c[4];
        for (int i = 0; i < 4; ++i) {
          c[i] = live[i] ? codes16<W>(row[i], k0 + k) : _mm_setzero_si128();
        }
        const __m128i t0 = _mm_unpacklo_epi32(c[0], c[1]), t1 = _mm_unpackhi_epi32(c[0], c[1]);
        const __m128i t2 = _mm_unpacklo_epi32(c[2], c[3]), t3 = _mm_unpackhi_epi32(c[2], c[3]);
        const __m128i q[4] = {_mm_unpacklo_epi64(t0, t2), _mm_unpackhi_epi64(t0, t2), _mm_unpacklo_epi64(t1, t3),
                              _mm_unpackhi_epi64(t1, t3)};
        for (int i = 0; i < 4; ++i) {  // quad k/4 + i of rows r0..r0+3
          _mm_storeu_si128(reinterpret_cast<__m128i*>(panel + ((k / 4 + i) * NR + r0) * 4), q[i]);
        }
      }
    }
    for (int r = 0; r < NR; ++r) {
      const int64_t n = n0 + p * NR + r;
      float sc[kKC / 32], bi[kKC / 32];
      if (n < n0 + nc) {
        to_float(a.scale_dtype, a.scales, n * groups + k0 / a.group_size, kg, sc);
        to_float(a.bias_dtype, a.biases, n * groups + k0 / a.group_size, kg, bi);
      } else {
        for (int64_t g = 0; g < kg; ++g) {
          sc[g] = bi[g] = 0.0f;
        }
      }
      for (int64_t g = 0; g < kg; ++g) {
        sp_p[g * NR + r] = sc[g];
        bp_p[g * NR + r] = bi[g];
      }
    }
  }
}

// One quad of one row against NV vectors of codes: the int32 (int16 for
// int16_block) sums I[j] of the mode.
template <Mode MD, int NV>
__attribute__((always_inline)) inline void quad(vi (&I)[NV], const vi (&w)[NV], vi xb) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    if constexpr (MD == Mode::vnni) {
#if TK_GEMM8_VNNI
      I[j] = dot4(I[j], w[j], xb);
#endif
    } else if constexpr (MD == Mode::int16_block) {
      I[j] = add16(I[j], maddubs(w[j], xb));
    } else {
      I[j] = add32(I[j], widen16(maddubs(w[j], xb)));
    }
    // Integer adds reassociate: GCC turns each block's 8-step chain into a
    // tree of products held at once, which spills the AVX2 block's registers
    // to the stack. The empty asm keeps the chain (1 cycle a link, MR·NV
    // chains side by side). Zen 3, one core, M = 512, 5120 -> 2048, the
    // 6 × 1 block (q6 5 × 1): q4 123 -> 162 GFLOP/s, q6 97 -> 112, q8
    // 113 -> 132; same bits.
    if constexpr (MD != Mode::vnni) {
      asm("" : "+v"(I[j]));
    }
  }
}

// Step 3 for one register block: rows of x from x (row stride ldx, block
// scales dx row stride ldd, Σx̂ xs row stride lds), the micro-panel wp / sp /
// bp over kc columns; c is the block's fp32 accumulator (row stride NC). The
// first K block sets c, later ones add to it, the last one writes round(c + F)
// for the mr × nr valid outputs at (m0, n0) instead.
template <WeightKind W, int MR>
void tile(const LinearArgs& a, const int8_t* x, int64_t ldx, const float* dx, int64_t ldd, const float* xs,
          int64_t lds, const uint8_t* wp, const float* sp, const float* bp, int64_t kc, float* c, bool first,
          bool last, int64_t m0, int64_t n0, int mr, int nr) {
  constexpr Mode MD = mode_of<W>();
  constexpr int NV = nv_of<W>(), NR = NV * L;
  const int bpg = int(a.group_size / kLinearBlock);
  vf F[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NV; ++j) {
      F[m][j] = zerof();
    }
  }
  for (int64_t g = 0; g < kc / a.group_size; ++g) {
    vf s[NV];
    for (int j = 0; j < NV; ++j) {
      s[j] = loadf(sp + g * NR + j * L);
    }
    for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {
      vi I[MR][NV];
      for (int m = 0; m < MR; ++m) {
        for (int j = 0; j < NV; ++j) {
          I[m][j] = zeroi();
        }
      }
      const uint8_t* wb = wp + b * 8 * NR * 4;
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
        vi w[NV];
        for (int j = 0; j < NV; ++j) {
          w[j] = loadi(wb + (q * NR + j * L) * 4);
        }
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          quad<MD, NV>(I[m], w, bcast4(x + m * ldx + b * kLinearBlock + 4 * q));
        }
      }
      for (int m = 0; m < MR; ++m) {
        const vf d = set1(dx[m * ldd + b]);
        for (int j = 0; j < NV; ++j) {
          const vi sum = MD == Mode::int16_block ? widen16(I[m][j]) : I[m][j];
          F[m][j] = fmadd(mulf(cvt(sum), s[j]), d, F[m][j]);
        }
      }
    }
    for (int m = 0; m < MR; ++m) {
      const vf xg = set1(xs[m * lds + g]);
      for (int j = 0; j < NV; ++j) {
        F[m][j] = fmadd(loadf(bp + g * NR + j * L), xg, F[m][j]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NV; ++j) {
      float* cv = c + m * kNC + j * L;
      vf v = F[m][j];
      if (!first) {
        v = addf(loadf(cv), v);
      }
      if (!last) {
        storef(cv, v);
      } else if (m < mr) {
        alignas(64) float o[L];
        storef(o, v);
        for (int l = 0; l < L && j * L + l < nr; ++l) {
          const int64_t at = (m0 + m) * a.N + n0 + j * L + l;
          if (a.out_dtype == Dtype::bf16) {
            static_cast<uint16_t*>(a.out)[at] = store<Dtype::bf16>(o[l]);
          } else {
            static_cast<uint16_t*>(a.out)[at] = store<Dtype::f16>(o[l]);
          }
        }
      }
    }
  }
}

template <WeightKind W>
void gemm(const LinearArgs& a, int64_t begin, int64_t end) {
  constexpr int MR = mr_of<W>(), NR = nv_of<W>() * L;
  const int64_t ldx = gemm8_ldx(a.K), ldd = a.K / kLinearBlock, lds = a.K / a.group_size;
  // Scratch: codes kNC × kKC bytes, scale and bias panels, the accumulator.
  const int64_t pg = kKC / kLinearBlock * kNC;  // panel floats at most (group size 32)
  // (Row blocks are whole register blocks: up to kMC + MR - 1 rows.)
  float* buf = align64(thread_scratch(kNC * kKC / 4 + 2 * pg + (kMC + MR) * kNC + 16));
  uint8_t* wp = reinterpret_cast<uint8_t*>(buf);
  float* sp = buf + kNC * kKC / 4;
  float* bp = sp + pg;
  float* c = bp + pg;
  // Row blocks of equal size (whole register blocks), at most kMC; column
  // blocks likewise (whole micro-panels, at most kNC).
  const int64_t mblocks = (a.M + kMC - 1) / kMC;
  const int64_t mc_rows = ((a.M + mblocks - 1) / mblocks + MR - 1) / MR * MR;
  const int64_t nblocks = (end - begin + kNC - 1) / kNC;
  const int64_t nc_cols = ((end - begin + nblocks - 1) / nblocks + NR - 1) / NR * NR;
  for (int64_t m0 = 0; m0 < a.M; m0 += mc_rows) {
    const int64_t mc = min64(mc_rows, a.M - m0);
    for (int64_t n0 = begin; n0 < end; n0 += nc_cols) {
      const int64_t nc = min64(nc_cols, end - n0);
      for (int64_t k0 = 0; k0 < a.K; k0 += kKC) {
        const int64_t kc = min64(kKC, a.K - k0);
        const int64_t kg = kc / a.group_size;
        pack<W>(a, n0, nc, k0, kc, wp, sp, bp);
        for (int64_t i = 0; i < mc; i += MR) {
          const int64_t m = m0 + i;
          for (int64_t j = 0; j < nc; j += NR) {
            const int64_t p = j / NR;
            tile<W, MR>(a, a.x8 + m * ldx + k0, ldx, a.dx + m * ldd + k0 / kLinearBlock, ldd,
                        a.xsum + m * lds + k0 / a.group_size, lds, wp + p * kc * NR, sp + p * kg * NR,
                        bp + p * kg * NR, kc, c + i * kNC + j, k0 == 0, k0 + kc == a.K, m, n0 + j,
                        int(min64(MR, mc - i)), int(min64(NR, nc - j)));
          }
        }
      }
    }
  }
}

} // namespace

void linear_quantize_x8(const LinearX& x, WeightKind kind, int64_t group_size, int8_t* x8, float* dx, float* xsum,
                        int64_t begin, int64_t end) {
  const int64_t ldx = gemm8_ldx(x.K), blocks = x.K / kLinearBlock, groups = x.K / group_size;
  const bool pairs = pair_scaled(kind, TK_GEMM8_VNNI);
  const auto* src = static_cast<const uint16_t*>(x.ptr);  // bf16 (quantize_x.inc)
  uint16_t buf[kLinearBlock];
  for (int64_t m = begin; m < end; ++m) {
    const uint16_t* xr = src + m * x.row_stride;
    int8_t* q = x8 + m * ldx;
    float* xs = xsum + m * groups;
    for (int64_t g = 0; g < groups; ++g) {
      xs[g] = 0.0f;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const uint16_t* v = bf16_run(xr + b * kLinearBlock * x.col_stride, x.col_stride, kLinearBlock, kLinearBlock, buf);
      int32_t sum;
      float d;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kLinearBlock), quantize_block(v, pairs, d, sum));
      xs[b * kLinearBlock / group_size] += d * float(sum);
      dx[m * blocks + b] = d;
    }
  }
}

void linear_gemm8(const LinearArgs& a, int64_t begin, int64_t end) {
  switch (a.kind) {
    case WeightKind::q4:
      return gemm<WeightKind::q4>(a, begin, end);
    case WeightKind::q6:
      return gemm<WeightKind::q6>(a, begin, end);
    default:
      return gemm<WeightKind::q8>(a, begin, end);
  }
}
#endif

} // namespace tk::kern::TK_ISA
