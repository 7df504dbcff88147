// talkie_kernels native CPU ops (placeholder header; see csrc/ops.cpp).
#pragma once
#include "mlx/mlx.h"
