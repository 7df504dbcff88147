"""``scaled_dot_product_attention``: MLX's CPU ``mx.fast.scaled_dot_product_attention`` vs the fused op, bf16.

Talkie 13B's heads (1, 40, L, 128): decode (L = 1) against S = 512 and 2048
cached positions read as KVCache views (``[..., :S, :]`` of a buffer grown in
steps of 256), and a causal 512-token prefill. The baseline is
``talkie_kernels.reference.scaled_dot_product_attention`` (MLX's op, its
composed CPU fallback); extra_info records the K/V GB/s of each call.
``talkie-kernels bench --depths`` times them interleaved, with floors.
"""

import mlx.core as mx
import pytest

import talkie_kernels as tk

H, D = 40, 128
CASES = (("decode", 1, 512), ("decode", 1, 2048), ("prefill", 512, 512))
IMPLS = {"reference": tk.reference.scaled_dot_product_attention, "fused": tk.scaled_dot_product_attention}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase, L, S", CASES, ids=[f"{p}-L{L}-S{S}" for p, L, S in CASES])
def test_scaled_dot_product_attention(benchmark, phase, L, S, impl):
    key = mx.random.split(mx.random.key(0), 3)
    size = (S + 255) // 256 * 256
    k = mx.random.normal((1, H, size, D), key=key[0]).astype(mx.bfloat16)[..., :S, :]
    v = mx.random.normal((1, H, size, D), key=key[1]).astype(mx.bfloat16)[..., :S, :]
    q = mx.random.normal((1, H, L, D), key=key[2]).astype(mx.bfloat16)
    mx.eval(q, k, v)
    mask = "causal" if phase == "prefill" else None
    fn = IMPLS[impl]
    benchmark.group = f"scaled_dot_product_attention {phase} L={L} S={S}"
    benchmark.extra_info.update(backend=tk.backend() if impl == "fused" else "reference", shape=[1, H, L, D], S=S)
    benchmark.pedantic(lambda: mx.eval(fn(q, k, v, scale=D**-0.5, mask=mask)), rounds=5, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a smoke run)
        benchmark.extra_info["kv_gbps"] = 2 * H * S * D * 2 / benchmark.stats.stats.median / 1e9
