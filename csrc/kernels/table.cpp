// The table of one instruction set's entry points (compiled once per ISA
// like the kernel files; tk::kern::select() picks a table at run time).
//
// A table built on another (-DTK_TABLE_FROM=v3 or v4, named <from>-<suffix>
// by -DTK_TABLE_SUFFIX) takes its entries from that table except the loops
// that use its extra instructions, which are compiled again: VNNI, the
// integer paths of linear (linear_int8.cpp, linear_gemm8.cpp); BF16 (v4_bf16,
// with VNNI), also linear's bf16 dot-product loops (linear.cpp) and the peak
// probe of vdpbf16ps (probe.cpp).
#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {

#define TK_STR2(x) #x
#define TK_STR(x) TK_STR2(x)
#if defined(TK_TABLE_FROM)
#define TK_FROM(f) TK_TABLE_FROM::f
#define TK_NAME TK_STR(TK_TABLE_FROM) "-" TK_STR(TK_TABLE_SUFFIX)
#else
#define TK_FROM(f) f
#define TK_NAME TK_STR(TK_ISA)
#endif
// The integer prefill GEMM (linear_gemm8.cpp) runs q4, q6 and q8 on every
// table with AVX2, in place of the fp32 GEMM (linear.cpp). Measured on Zen 4
// (AMD EPYC), one core, M = 512, 5120 -> 15360 / 5120 -> 5120, GFLOP/s,
// interleaved medians on a shared machine (bf16 dense: 82-86): v4-vnni q4
// 256 / 252, q8 255 / 233 (fp32 GEMM: 83-86); v4 q4 132 / 139; v3 q4
// 122 / 128 (q8 by the sign trick, AVX2: 89 / 73 against the fp32 GEMM's
// 83 / 77, not taken). Since then, without VNNI: q8 with pair-scaled x
// (linear_gemm8.cpp) and, on AVX2, a 4 × 16 register block whose integer
// sums stay chains; Zen 3 (AMD EPYC, AVX2), 2 cores, M = 512, 5120 -> 15360
// / 5120 -> 5120 / 13696 -> 5120, interleaved medians: q4 303 / 315 / 314,
// q6 195 / 207 / 206, q8 236 / 231 / 273 against bf16's 161 / 153 / 156.
extern const Table table = {
    TK_NAME,
    TK_FROM(rms_norm),
    TK_FROM(residual_norm),
    TK_FROM(swiglu),
    TK_FROM(rope_table),
    TK_FROM(rope),
    TK_FROM(linear_prepare_x),
    TK_FROM(linear),
#if defined(__AVX2__)
    linear_quantize_x,
    linear_int8,
    linear_quantize_x8,
    linear_gemm8,
#else
    nullptr,
    nullptr,
    nullptr,
    nullptr,
#endif
#if defined(__AVX512BF16__)
    linear_bf16,
    TK_FROM(read_sum),
    fma_chains,
    "vdpbf16ps",
#else
    nullptr,
    TK_FROM(read_sum),
    TK_FROM(fma_chains),
    "fp32 FMA",
#endif
    TK_FROM(attention_decode),
    TK_FROM(attention_merge),
    TK_FROM(attention_prefill),
};

} // namespace tk::kern::TK_ISA
