// rms_norm: the CPU loop (see kernels.h for the interface).
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

// ---- rms_norm ---------------------------------------------------------------

template <Dtype K>
void rms_norm_rows(const RmsNormArgs& a, int64_t begin, int64_t end) {
  using S = typename Storage<K>::type;
  const int64_t D = a.D;
  const S* x[kRowBlock];
  float ss[kRowBlock], scale[kRowBlock];
  for (int64_t r0 = begin; r0 < end; r0 += kRowBlock) {
    const int64_t nb = end - r0 < kRowBlock ? end - r0 : kRowBlock;
    // 1. ss = sum(x^2) per row, fp32.
    for (int64_t j = 0; j < nb; ++j) {
      const S* xr = x[j] = at<S>(a.x.ptr, row_offset(a.x, r0 + j));
      ss[j] = sum_vectors(D, [&](auto w, int64_t i) {
        const auto v = vget<K>(w, xr + i);
        return v * v;
      });
    }
    // 2. scale = 1 / sqrt(ss / D + eps).
    inv_rms(ss, scale, nb, D, a.eps);
    // 3. out = round(x * scale).
    for (int64_t j = 0; j < nb; ++j) {
      const S* xr = x[j];
      S* out = at<S>(a.out, (r0 + j) * D);
      const float sc = scale[j];
      for_vectors(D, [&](auto w, int64_t i) { vput<K>(w, out + i, vget<K>(w, xr + i) * sc); });
    }
  }
}

} // namespace

void rms_norm(const RmsNormArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { rms_norm_rows<decltype(t)::value>(a, begin, end); });
}

} // namespace tk::kern::TK_ISA
