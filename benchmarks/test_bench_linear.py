"""``linear``: MLX's own matmul / quantized_matmul vs the fused op, dense bf16 and affine 4-bit.

``x (M, K) @ W.T`` for a random W (N, K): bf16, or q4 (group 64, bf16 scales
and biases, as ``mlx_lm.convert -q`` writes). Decode (M = 1) at two of
Talkie 13B's projection shapes, prefill (M = 64) at talkie-8l-512's, where
MLX's 4-bit CPU matmul still takes well under a second per call. The baseline
is ``talkie_kernels.reference.linear``; the fused op is ``talkie_kernels.linear``
(dispatched to the current backend, recorded in extra_info, with the weight
GB/s and GFLOP/s per call); and the prefill GEMM (M = 512) at attn_resid's
13B shape, fused only. ``talkie-kernels bench --linear-shapes`` times all
five 13B decode shapes, interleaved, against the machine's read bandwidth, and
the prefill GEMM at the same shapes against the FMA peak.
"""

import pytest

from talkie_kernels.bench.linear import IMPLS

CASES = (
    ("decode", 1, 5120, 5120),  # attn_resid
    ("decode", 1, 13696, 5120),  # mlp_resid
    ("prefill", 64, 512, 1536),  # talkie-8l-512 attn_qkv
    ("prefill", 64, 1408, 512),  # talkie-8l-512 mlp_resid
)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", ("bfloat16", "q4"))
@pytest.mark.parametrize("phase, M, K, N", CASES, ids=[f"{p}-{M}x{K}x{N}" for p, M, K, N in CASES])
def test_linear(linear_bench, phase, M, K, N, fmt, impl):
    linear_bench(phase, M, K, N, fmt, impl)


#: The prefill GEMM at one of Talkie 13B's shapes (attn_resid, M = 512): fused
#: only, as ``talkie-kernels bench --linear-shapes`` times it (MLX's q4 matmul
#: takes ~100 s per call here). extra_info's gflops reads against
#: ``tk.native.ops.fma_peak_gflops()``.
PREFILL_13B = (512, 5120, 5120)


@pytest.mark.parametrize("fmt", ("bfloat16", "q4"))
def test_linear_prefill_13b(linear_bench, fmt):
    linear_bench("prefill", *PREFILL_13B, fmt, "fused")
