// The machine probes' loops (see kernels.h): a streaming read for the read
// bandwidth and independent FMA chains for the fp32 FMA peak, compiled once per
// instruction set like the other kernel files, so each table measures its own
// vector width (v4-bf16: its bf16 GEMM's vdpbf16ps instead of the FMA).
#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector
// 32 zmm registers: 24 chains, a few spare for the constants.
constexpr int kChains = 24;
#elif defined(__AVX2__)
constexpr int VW = 8;
// 16 ymm registers: 12 chains. Two FMA ports with a 4-cycle latency (Zen 3,
// Sapphire Rapids) keep 8 FMAs in flight; 12 leave slack.
constexpr int kChains = 12;
#else
constexpr int VW = 4;
constexpr int kChains = 12;
#endif

typedef float vf __attribute__((vector_size(VW * 4)));

} // namespace

uint64_t read_sum(const uint64_t* p, int64_t n) {
  constexpr int L = VW / 2;  // 64-bit lanes per vector
  typedef uint64_t vq __attribute__((vector_size(L * 8)));
  vq acc[4] = {};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    for (int j = 0; j < 4; ++j) {
      vq v;
      std::memcpy(&v, p + i + L * j, sizeof(v));
      acc[j] += v;
    }
  }
  uint64_t s = 0;
  for (; i < n; ++i) {
    s += p[i];
  }
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < L; ++l) {
      s += acc[j][l];
    }
  }
  return s;
}

int64_t fma_chains(int64_t flops, float* sink) {
#if defined(__AVX512BF16__)
  // v4-bf16, whose bf16 GEMM runs on vdpbf16ps: kChains independent chains
  // c += a0·b0 + a1·b1 (two products per lane, four flops), with a = (½, -½)
  // and b = (1, 1) in every word, so each c stays where it started (no
  // overflow, no denormals) at the instruction's throughput.
  constexpr int64_t per_iter = 4 * kChains * VW;
  const int64_t iters = (flops + per_iter - 1) / per_iter;
  const __m512bh a = (__m512bh)_mm512_set1_epi32(int(0xBF003F00u)), b = (__m512bh)_mm512_set1_epi32(0x3F803F80);
  __m512 c[kChains];
  for (int j = 0; j < kChains; ++j) {
    c[j] = _mm512_set1_ps(float(j + 1) * 0.1f);
  }
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < kChains; ++j) {
      c[j] = _mm512_dpbf16_ps(c[j], a, b);
    }
  }
  __m512 s = c[0];
  for (int j = 1; j < kChains; ++j) {
    s = _mm512_add_ps(s, c[j]);
  }
  *sink = _mm512_reduce_add_ps(s);
  return iters * per_iter;
#else
  // kChains independent chains c = c·a + b (one vector FMA each per
  // iteration); a < 1 and b > 0 keep every c near 1 (no overflow, no
  // denormals), so the loop runs at the FMA ports' throughput.
  constexpr int64_t per_iter = 2 * kChains * VW;
  const int64_t iters = (flops + per_iter - 1) / per_iter;
  vf a = vf{} + 0.999999f, b = vf{} + 1e-6f;
  vf c[kChains];
  for (int j = 0; j < kChains; ++j) {
    c[j] = vf{} + float(j + 1) * 0.1f;
  }
  for (int64_t i = 0; i < iters; ++i) {
    // (Unrolled, so every chain stays in its register.)
#pragma GCC unroll 32
    for (int j = 0; j < kChains; ++j) {
      c[j] = c[j] * a + b;
    }
  }
  vf s = c[0];
  for (int j = 1; j < kChains; ++j) {
    s += c[j];
  }
  float t = 0.0f;
  for (int l = 0; l < VW; ++l) {
    t += s[l];
  }
  *sink = t;
  return iters * per_iter;
#endif
}

} // namespace tk::kern::TK_ISA
