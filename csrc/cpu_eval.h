// What the Primitives' eval_cpu share: the kernels' dtype and where to run.
#pragma once

#include "kernels.h"
#include "ops.h"

namespace tk {

// The op functions return their plain-MLX fallback on any stream but the CPU.
inline bool use_fallback(mx::Stream s) {
  return s.device != mx::Device::cpu;
}

// A float32/float16/bfloat16 dtype as the kernels name it.
inline kern::Dtype kernel_dtype(mx::Dtype d) {
  if (d == mx::float16) {
    return kern::Dtype::f16;
  }
  if (d == mx::bfloat16) {
    return kern::Dtype::bf16;
  }
  return kern::Dtype::f32;
}

} // namespace tk
