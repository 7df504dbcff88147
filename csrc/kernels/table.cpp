// The table of one instruction set's entry points (compiled once per ISA
// like the kernel files; tk::kern::select() picks a table at run time).
//
// A VNNI table (-DTK_TABLE_FROM=v3 or v4) is its base table with the integer
// path of linear compiled for VNNI: only linear_int8.cpp uses it, so the
// other loops are taken from the base table, not compiled again.
#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {

#define TK_STR2(x) #x
#define TK_STR(x) TK_STR2(x)
#if defined(TK_TABLE_FROM)
#define TK_FROM(f) TK_TABLE_FROM::f
#define TK_NAME TK_STR(TK_TABLE_FROM) "-vnni"
#else
#define TK_FROM(f) f
#define TK_NAME TK_STR(TK_ISA)
#endif
extern const Table table = {
    TK_NAME,
    TK_FROM(rms_norm),
    TK_FROM(residual_norm),
    TK_FROM(rope_table),
    TK_FROM(rope),
    TK_FROM(linear_prepare_x),
    TK_FROM(linear),
#if defined(__AVX2__)
    linear_quantize_x,
    linear_int8,
#else
    nullptr,
    nullptr,
#endif
    TK_FROM(read_sum),
    TK_FROM(fma_chains),
    TK_FROM(attention_decode),
    TK_FROM(attention_merge),
    TK_FROM(attention_prefill),
};

} // namespace tk::kern::TK_ISA
