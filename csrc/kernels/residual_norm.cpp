// residual_norm: the CPU loop (see kernels.h for the interface).
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

// ---- residual_norm ----------------------------------------------------------

template <Dtype K, bool kSkip>
void residual_norm_rows_impl(const ResidualNormArgs& a, int64_t begin, int64_t end) {
  using S = typename Storage<K>::type;
  const int64_t D = a.D;
  const float g = a.gain, sg = a.skip_gain;
  for (int64_t r = begin; r < end; ++r) {
    const S* x = at<S>(a.x.ptr, row_offset(a.x, r));
    const S* y = at<S>(a.y.ptr, row_offset(a.y, r));
    const S* s = kSkip ? at<S>(a.skip.ptr, row_offset(a.skip, r)) : nullptr;
    S* xn = at<S>(a.x_new, r * D);
    S* nr = at<S>(a.normed, r * D);
    // 1. x_new = round(x + g*y [+ sg*skip]), the sum in fp32, rounded once.
    for_vectors(D, [&](auto w, int64_t i) {
      auto v = vget<K>(w, x + i) + g * vget<K>(w, y + i);
      if constexpr (kSkip) {
        v += sg * vget<K>(w, s + i);
      }
      vput<K>(w, xn + i, v);
    });
    // 2. ss = sum(x_new^2) over the *stored* (rounded) x_new, in fp32; x_new
    // is hot in L1.
    const float ss = sum_vectors(D, [&](auto w, int64_t i) {
      const auto v = vget<K>(w, xn + i);
      return v * v;
    });
    // 3. normed = round(x_new * rsqrt(ss / D + eps)).
    // (Rows here are long, so one row at a time is fine.)
    float scale;
    inv_rms(&ss, &scale, 1, D, a.eps);
    for_vectors(D, [&](auto w, int64_t i) { vput<K>(w, nr + i, vget<K>(w, xn + i) * scale); });
  }
}

template <Dtype K>
void residual_norm_rows(const ResidualNormArgs& a, int64_t begin, int64_t end) {
  if (a.skip.ptr) {
    residual_norm_rows_impl<K, true>(a, begin, end);
  } else {
    residual_norm_rows_impl<K, false>(a, begin, end);
  }
}

} // namespace

void residual_norm(const ResidualNormArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { residual_norm_rows<decltype(t)::value>(a, begin, end); });
}

} // namespace tk::kern::TK_ISA
