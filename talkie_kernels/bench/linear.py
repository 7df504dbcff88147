"""The per-shape ``linear`` benchmark: Talkie 13B's projections, one weight at a time.

``x (M, K) @ W.T`` for a random ``W (N, K)``, dense or affine-quantized as
``mlx_lm.convert -q`` writes it (group size 64, bf16 scales and biases), by
``talkie_kernels.linear`` (``fused``) and ``talkie_kernels.reference.linear``
(``reference``: MLX's own ``matmul`` / ``quantized_matmul``). A decode call
(M = 1) reads every weight byte once, so its measure is GB/s of weight +
scales + biases, and the share of the machine's read bandwidth that is. A
prefill call (M = 512) does 2·M flops per weight element, so its measure is
GFLOP/s, and the share of the machine's fp32 FMA peak that is (``time_prefill``).

Shared by ``talkie-kernels bench --linear-shapes`` and
``benchmarks/test_bench_linear.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx

from .. import reference
from ..huge_pages import huge_pages
from .models import QUANT_GROUP_SIZE, weight_format
from .timing import interleaved, timed_ms

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
#: The prefill table's rows of x (a 512-token prompt; 64 for the ``--quick`` stand-ins) and formats.
PREFILL_M = 512
QUICK_PREFILL_M = 64
PREFILL_FORMATS = ("bfloat16", "q4", "q8")

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
    huge_pages(copies)  # in 2 MiB pages, as talkie_kernels.load leaves weights
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


def flops(M: int, K: int, N: int) -> int:
    """Flops of ``x (M, K) @ W.T`` for W (N, K): a multiply and an add per weight element per row of x."""
    return 2 * M * K * N


def time_prefill(shapes, M: int, rounds: int, min_rounds: int, budget_s: float | None, seed: int = 0,
                 progress: Callable[[str], None] = lambda desc: None,
                 probe=None) -> Iterator[tuple[dict, object]]:
    """``(record base, Stats or exception)`` of the fused ``linear`` at M rows of x, per shape and format.

    Only the fused op is timed: MLX's own 4-bit ``quantized_matmul`` takes
    ~100 s per call at (512, 5120) @ (5120, 5120).T on two Sapphire Rapids
    cores (its bf16 ``matmul`` 3.6 s, the fused op 0.2 s). One weight is
    alive at a time and no copies rotate: a prefill call reuses each weight
    M times, so where it sits (cache or memory) hardly matters. Samples as
    ``timing.interleaved``: ``rounds``, cut to ``budget_s`` but at
    least ``min_rounds``. ``probe``: another case for ``interleaved`` (a
    ``probes.RoundProbe``'s ``case``, or the exception that stopped it), run
    in the same rounds.
    """
    for name, K, N in shapes:
        x = activation(M, K, seed)
        for fmt, arrays, kwargs in weights(K, N, PREFILL_FORMATS, seed):
            progress(f"prefill linear {name} ({M}, {K}) @ ({N}, {K}).T {fmt}")
            run = thunk("fused", x, [arrays], kwargs, 1)
            cases = {"fused": lambda run=run: run} | ({} if probe is None else {"probe": probe})
            res = interleaved(cases, rounds=rounds, min_rounds=min_rounds, budget_s=budget_s,
                              companions=("probe",))["fused"]
            yield {"kind": "linear_prefill", "op": "linear", "name": name, "phase": "prefill", "shape": [M, K, N],
                   "dtype": fmt, "weight_bytes": nbytes(arrays)}, res
            del run
        del x
        mx.clear_cache()
