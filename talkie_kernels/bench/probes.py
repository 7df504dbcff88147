"""The machine's limits that the bench reads shares against: the read bandwidth
(``read_bandwidth``, and ``ReadProbe`` in a row's own rounds) and the fp32 FMA
peak (``fma_peak``, ``FmaProbe``), both measured by the native ops
(``csrc/cpu/probe.cpp``) on the kernels' own threads and instruction set.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import mlx.core as mx

from ..huge_pages import huge_pages

#: The read bandwidth is measured on a buffer this large: far past any cache.
READ_BANDWIDTH_BYTES = 1 << 29
#: fp32 flops per thread per FMA-peak sample (~10 ms on one core).
FMA_PEAK_FLOPS = 1 << 30


def _native_probe(name: str, what: str) -> Callable:
    """``talkie_kernels.native.ops.<name>``, or RuntimeError saying ``what`` is unmeasured and why."""
    from .. import native

    measure = getattr(native.ops, name, None)
    if measure is None:
        why = native.load_error or f"the built extension has no {name}; rebuild it"
        raise RuntimeError(f"{what} unmeasured: talkie_kernels.native.ops.{name} unavailable ({why})")
    return measure


def ones_in_huge_pages(nbytes: int) -> mx.array:
    """The read probes' buffer: ``nbytes`` of uint64 ones, evaluated, in 2 MiB pages as the
    loaded weights are (``huge_pages``), so the kernels are read against what a read of
    such pages gets."""
    buffer = mx.ones((nbytes // 8,), dtype=mx.uint64)
    mx.eval(buffer)
    huge_pages(buffer)
    return buffer


def read_bandwidth(nbytes: int = READ_BANDWIDTH_BYTES, repeats: int = 5) -> dict[str, Any]:
    """The machine's read bandwidth: the native ops' streaming read of ``nbytes``, median GB/s.

    Measured by ``talkie_kernels.native.ops.memory_read_gbps_of`` over
    ``ones_in_huge_pages(nbytes)`` with the native ops' thread count (both
    cores here), so the floor of a decode step is the weight bytes it reads
    divided by what the kernels' own threads can read.
    """
    from .. import native

    gbps = float(_native_probe("memory_read_gbps_of", "read bandwidth")(ones_in_huge_pages(nbytes), repeats))
    return {"gbps": gbps, "nbytes": nbytes, "repeats": repeats, "threads": native.ops.num_threads()}


class RoundProbe:
    """A machine probe as a case of ``interleaved``: each round's read of ``measure()``
    (a rate: GB/s, GFLOP/s) appended to ``values``, in order.

    ``case()`` is the prepare function ``interleaved`` takes. A row's share of
    the machine's limit is then its median over ``take_median()``, the median
    of the probe's reads between the row's samples, in the same rounds, rather
    than against reads before and after it: this VM's read bandwidth moves by
    a third within a row's few seconds, and its FMA peak by half (110-211
    GFLOP/s within 20 s on a Zen 3 guest).
    """

    def __init__(self, measure: Callable[[], float]):
        self.measure = measure
        self.values: list[float] = []

    def case(self) -> Callable[[], None]:
        return lambda: self.values.append(float(self.measure()))

    def take_median(self) -> float | None:
        """The median of the reads since the last call, less the first (``interleaved``'s
        warm-up, before the row's samples), or None; the next row starts afresh."""
        rounds, self.values = self.values[1:], []
        return statistics.median(rounds) if rounds else None


class ReadProbe(RoundProbe):
    """``read_bandwidth``'s read (GB/s) as a ``RoundProbe``: one read of a kept buffer of
    ones (``nbytes``, the run's probe size) per round."""

    def __init__(self, nbytes: int = READ_BANDWIDTH_BYTES):
        read = _native_probe("memory_read_gbps_of", "read bandwidth")
        self.buffer = ones_in_huge_pages(nbytes)
        super().__init__(lambda: read(self.buffer, 1))


class FmaProbe(RoundProbe):
    """``fma_peak``'s chains (GFLOP/s, the current ISA's width and threads) as a
    ``RoundProbe``: one run of ``flops_per_thread`` per round (~10 ms here)."""

    def __init__(self, flops_per_thread: int = FMA_PEAK_FLOPS):
        peak = _native_probe("fma_peak_gflops", "FMA peak")
        super().__init__(lambda: peak(flops_per_thread, 1))


def round_probe(make: Callable[[], RoundProbe]) -> tuple[RoundProbe | None, Any]:
    """``(probe, its case for interleaved)`` of a ``RoundProbe`` class, or ``(None, the
    exception)`` where its native measure is unavailable: the rows' shares then fall back to the
    run's own probe, whose header and JSON say why it failed."""
    try:
        probe = make()
    except Exception as e:
        return None, e
    return probe, probe.case


def fma_peak(flops_per_thread: int = FMA_PEAK_FLOPS, repeats: int = 5) -> dict[str, Any]:
    """The machine's fp32 FMA peak: the native ops' independent FMA chains, median GFLOP/s
    (on ``v4-bf16``, chains of ``vdpbf16ps``, the instruction of its bf16 GEMM: ``instruction``,
    from ``talkie_kernels.native.ops.fma_peak_instruction``).

    Measured by ``talkie_kernels.native.ops.fma_peak_gflops`` with the native
    ops' threads and instruction set (``isa``: AVX2's peak under v3, AVX-512's
    under v4), so a prefill GEMM's GFLOP/s reads as a share of what the same
    threads can do at the same vector width.
    """
    from .. import native

    gflops = float(_native_probe("fma_peak_gflops", "FMA peak")(flops_per_thread, repeats))
    return {"gflops": gflops, "flops_per_thread": flops_per_thread, "repeats": repeats,
            "threads": native.ops.num_threads(), "isa": native.ops.isa(),
            "instruction": native.ops.fma_peak_instruction()}


__all__ = ["FMA_PEAK_FLOPS", "FmaProbe", "READ_BANDWIDTH_BYTES", "ReadProbe", "RoundProbe", "fma_peak",
           "ones_in_huge_pages", "read_bandwidth", "round_probe"]
