// The table of one instruction set's entry points (compiled once per ISA
// like the kernel files; tk::kern::select() picks a table at run time).
#include "kernels.h"

#ifndef TK_ISA
#error "compile with -DTK_ISA=<namespace>"
#endif

namespace tk::kern::TK_ISA {

#define TK_STR2(x) #x
#define TK_STR(x) TK_STR2(x)
extern const Table table = {
    TK_STR(TK_ISA),
    rms_norm,
    residual_norm,
    rope_table,
    rope,
    linear_prepare_x,
    linear,
    read_sum,
    fma_chains,
};

} // namespace tk::kern::TK_ISA
