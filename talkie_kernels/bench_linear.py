"""The per-shape ``linear`` benchmark: Talkie 13B's projections, one weight at a time.

``x (M, K) @ W.T`` for a random ``W (N, K)``, dense or affine-quantized as
``mlx_lm.convert -q`` writes it (group size 64, bf16 scales and biases), by
``talkie_kernels.linear`` (``fused``) and ``talkie_kernels.reference.linear``
(``reference``: MLX's own ``matmul`` / ``quantized_matmul``). A decode call
(M = 1) reads every weight byte once, so its measure is GB/s of weight +
scales + biases, and the share of the machine's read bandwidth that is.

Shared by ``talkie-kernels bench --linear-shapes`` and
``benchmarks/test_bench_linear.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx

from . import reference
from .bench_models import QUANT_GROUP_SIZE, weight_format
from .benchmarking import timed_ms

IMPLS = ("reference", "fused")
#: Talkie 13B's projections as the fused model runs them: (name, K, N).
SHAPES_13B = (
    ("attn_qkv", 5120, 15360),
    ("attn_resid", 5120, 5120),
    ("mlp_gate_linear", 5120, 27392),
    ("mlp_resid", 13696, 5120),
    ("lm_head", 5120, 65540),
)
#: ``--quick``: tiny stand-ins, so the tests run the table in seconds.
QUICK_SHAPES = (("attn_qkv", 256, 768), ("lm_head", 256, 512))
FORMATS = ("bfloat16", "q4", "q6", "q8")

#: Copies of a weight are read in turn until their total is this many times the
#: last-level cache (see ``rotation``).
ROTATION_FACTOR = 4


def weights(K: int, N: int, formats, seed: int = 0) -> Iterator[tuple[str, tuple, dict]]:
    """``(format, arrays, kwargs)`` for each format of one random (N, K) weight, one at a time.

    The weight is drawn once, N(0, 1/K) in bf16 with ``mx.random``; float
    formats cast it, quantized ones quantize it (``arrays`` = weight, scales,
    biases; ``kwargs`` = group_size, bits for ``linear``). Only the bf16 draw
    and the format being yielded are alive at a time.
    """
    w = mx.random.normal((N, K), dtype=mx.bfloat16, scale=K**-0.5, key=mx.random.key(seed))
    mx.eval(w)
    for fmt in formats:
        dtype, bits = weight_format(fmt)
        if bits:
            arrays = tuple(mx.quantize(w.astype(dtype), QUANT_GROUP_SIZE, bits))
            kwargs = {"group_size": QUANT_GROUP_SIZE, "bits": bits}
        else:
            arrays, kwargs = (w.astype(dtype),), {}
        mx.eval(arrays)
        yield fmt, arrays, kwargs
        del arrays


def nbytes(arrays) -> int:
    return sum(a.nbytes for a in arrays)


def last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs); 32 MiB where it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=32 << 20)


def rotation(arrays: tuple) -> list[tuple]:
    """``arrays`` and enough copies of them to overflow the last-level cache when read in turn.

    A decode step reads each of its weights once per token, from DRAM (Talkie
    13B's are GBs); calling one weight that fits in the cache over and over
    would time the cache instead. Copies are distinct buffers (``a + 0``).
    """
    n = max(1, math.ceil(ROTATION_FACTOR * last_level_cache_bytes() / nbytes(arrays)))
    copies = [arrays] + [tuple(a + 0 for a in arrays) for _ in range(n - 1)]
    mx.eval(copies)
    return copies


def linear_fn(impl: str) -> Callable:
    if impl == "fused":
        import talkie_kernels

        return talkie_kernels.linear
    if impl == "reference":
        return reference.linear
    raise ValueError(f"unknown impl {impl!r}")


def thunk(impl: str, x: mx.array, copies: list[tuple], kwargs: dict, calls: int) -> Callable[[], None]:
    """``calls`` products ``x @ W.T``, cycling through the copies, evaluated once."""
    fn = linear_fn(impl)

    def run():
        mx.eval([fn(x, *copies[i % len(copies)], **kwargs) for i in range(calls)])

    return run


def calls_per_sample(impl: str, x, copies, kwargs, target_ms: float, max_calls: int = 1000) -> int:
    """Calls that make one sample of about ``target_ms`` (at least 1).

    Times one call, and a second only if the first was short: MLX's quantized
    matmul takes seconds per call at 13B shapes, and one call is sample enough.
    """
    run = thunk(impl, x, copies, kwargs, 1)
    t = timed_ms(run)
    if t < target_ms:
        t = timed_ms(run)
    return int(max(1, min(max_calls, math.ceil(target_ms / max(t, 1e-3)))))


def activation(M: int, K: int, seed: int = 0) -> mx.array:
    """x (M, K) in bf16, as the fused model's flat (B·L, hidden) activations."""
    x = mx.random.normal((M, K), dtype=mx.bfloat16, key=mx.random.key(seed + 1))
    mx.eval(x)
    return x
