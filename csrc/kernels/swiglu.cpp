// swiglu: the CPU loop (see kernels.h for the interface).
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

// ---- swiglu -----------------------------------------------------------------

// silu(g) = g / (1 + e^-g) in fp32 (fp16 and bf16 rows): vexp on whole
// vectors, expf on the tail.
// (At g = -inf, -inf / inf is NaN, as MLX's g * sigmoid(g) gives.)
inline fvec silu(Whole, fvec g) {
  return g / (1.0f + vexp(-g));
}
inline float silu(One, float g) {
  return g / (1.0f + __builtin_expf(-g));
}

// fp32 rows: g / (1 + e^-g) · x in double, rounded once to fp32. (The fp32
// arithmetic above, some 3 ulp, measured up to 1.4x plain MLX's error on
// fp32 outputs; for fp16 / bf16 outputs it is far below their rounding.)
// D is double (U uint64_t) or a vector of them (dvec, uvec64), written with
// selects, no branches, so both compile to the same vector code:
// 1. t = -g clamped to ±700 (e^t stays a normal double; past it 1 + e^t is
//    1 or g / (1 + e^t) rounds to ±0 in fp32 alike), n = round(t / ln 2),
//    r = t − n·ln 2 (two-part ln 2, |r| <= ln2/2).
// 2. e^r by its degree-11 Taylor polynomial (truncation < 1e-14), times 2^n
//    (n added to the exponent field); e = +inf for t > 709, so g = -inf gives
//    NaN, as MLX's g·sigmoid(g) does.
typedef double dvec __attribute__((vector_size(kVec * 4)));  // kVec / 2 doubles
typedef uint64_t uvec64 __attribute__((vector_size(kVec * 4)));
typedef float hfvec __attribute__((vector_size(kVec * 2)));  // kVec / 2 floats

template <class D, class U>
inline D silu_mul_f64(D g, D x) {
  const D zero{}, t = -g;
  const D tc = t < -700.0 ? zero - 700.0 : (t > 700.0 ? zero + 700.0 : t);
  constexpr double shift = 0x1.8p52;  // adding it rounds to an integer
  const D k = tc * 1.4426950408889634 + shift;
  const D n = k - shift;
  const D r = (tc - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  D p = zero + 1.0 / 39916800;
  p = p * r + 1.0 / 3628800;
  p = p * r + 1.0 / 362880;
  p = p * r + 1.0 / 40320;
  p = p * r + 1.0 / 5040;
  p = p * r + 1.0 / 720;
  p = p * r + 1.0 / 120;
  p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // The low bits of k hold n: (k's bits + 1023) << 52 is the double 2^n.
  const D two_n = __builtin_bit_cast(D, (__builtin_bit_cast(U, k) + 1023) << 52);
  const D e = t > 709.0 ? zero + __builtin_inf() : p * two_n;
  return g / (1.0 + e) * x;
}

inline void swiglu_f32(const float* g, const float* x, float* out, int64_t D) {
  constexpr int H = kVec / 2;
  int64_t i = 0;
  for (; i + H <= D; i += H) {
    const dvec y = silu_mul_f64<dvec, uvec64>(__builtin_convertvector(vload<hfvec>(g + i), dvec),
                                              __builtin_convertvector(vload<hfvec>(x + i), dvec));
    const hfvec o = __builtin_convertvector(y, hfvec);
    std::memcpy(out + i, &o, sizeof(o));
  }
  for (; i < D; ++i) {
    out[i] = float(silu_mul_f64<double, uint64_t>(g[i], x[i]));
  }
}

template <Dtype K>
void swiglu_rows(const SwigluArgs& a, int64_t begin, int64_t end) {
  using S = typename Storage<K>::type;
  const int64_t D = a.D;
  for (int64_t r = begin; r < end; ++r) {
    const S* g = at<S>(a.gate.ptr, row_offset(a.gate, r));
    const S* x = at<S>(a.x.ptr, row_offset(a.x, r));
    S* out = at<S>(a.out, r * D);
    if constexpr (K == Dtype::f32) {
      swiglu_f32(g, x, out, D);
    } else {
      // out = round(silu(g) · x), one rounding.
      for_vectors(D, [&](auto w, int64_t i) { vput<K>(w, out + i, silu(w, vget<K>(w, g + i)) * vget<K>(w, x + i)); });
    }
  }
}

} // namespace

void swiglu(const SwigluArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { swiglu_rows<decltype(t)::value>(a, begin, end); });
}

} // namespace tk::kern::TK_ISA
