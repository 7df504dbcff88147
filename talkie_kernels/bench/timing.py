"""Benchmark machinery shared by ``talkie-kernels bench`` and ``benchmarks/``.

One place for: the timing loop (warm-up, interleaved rounds, p20/p50/p80), the
per-op inputs at Talkie's shapes, the per-op step functions of each
implementation, and the run metadata (versions, device, backend). The
machine's read bandwidth and FMA peak are ``probes.py``; the models and their
workloads ``models.py``; the per-shape ``linear`` benchmark ``linear.py``.

Implementations compared everywhere:

* ``reference`` -- plain MLX, eager: ``talkie_kernels.reference`` for the ops,
  mlx-lm 0.32.2's ``models/talkie.py`` for the model;
* ``reference_compiled`` -- the same under ``mx.compile`` where it applies;
* ``fused`` -- this project: the top-level ops (``talkie_kernels.rms_norm`` ...,
  which dispatch by backend) and ``talkie_kernels.models.talkie.Model``.

MLX is lazy, so every timed region ends in ``mx.eval`` of everything the work
produced, followed by ``mx.synchronize()``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from .. import reference
from ..configs import TALKIE_HEAD_DIM, TALKIE_HEADS, TALKIE_HIDDEN, TALKIE_INTERMEDIATE

@dataclass(frozen=True)
class Defaults:
    """The sampling a bench starts from, in one place: ``talkie-kernels bench``
    (``bench.settings.Settings``, which flags override) and the pytest-benchmark suites
    (``benchmarks/conftest.py``) both read it."""

    #: Timed samples per implementation of an op, model workload or linear shape.
    rounds: int = 7
    #: The fewest samples a time budget may cut a workload to.
    min_rounds: int = 3
    #: A sample of chained op calls lasts about this long for the eager reference.
    op_sample_ms: float = 25.0
    #: A sample of linear calls lasts about this long (each implementation on itself).
    linear_sample_ms: float = 25.0
    #: dtype of the per-op inputs (Talkie's weights are bf16).
    op_dtype: str = "bfloat16"


DEFAULTS = Defaults()
#: ``talkie-kernels bench --quick``: seconds, for a smoke test.
QUICK = Defaults(rounds=2, min_rounds=2, op_sample_ms=1.0, linear_sample_ms=1.0)

IMPLS = ("reference", "reference_compiled", "fused")
PHASES = ("prefill", "decode")
OPS = ("rms_norm", "rope", "rope_qk_norm", "residual_norm", "swiglu")

#: Per-op sequence lengths: decode is one token, prefill a 512-token prompt.
OP_SEQ_LEN = {"decode": 1, "prefill": 512}
#: Decode ops run at the position after a 512-token prompt.
DECODE_OFFSET = 512


class NotApplicable(Exception):
    """An implementation that does not apply to a workload (reported as n/a, not an error)."""


# --------------------------------------------------------------------------- timing


@dataclass
class Stats:
    """Per-sample times in ms (each sample already divided by its work count)."""

    samples_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p20(self) -> float:
        return self.pct(20)

    @property
    def median(self) -> float:
        return self.pct(50)

    @property
    def p80(self) -> float:
        return self.pct(80)


def sync(*outputs) -> None:
    """Evaluate everything given and wait for the device."""
    mx.eval(*outputs)
    mx.synchronize()


def timed_ms(run: Callable[[], Any]) -> float:
    """Milliseconds of ``run()`` (which evaluates its work) until the device is idle."""
    t0 = time.perf_counter()
    run()
    mx.synchronize()
    return (time.perf_counter() - t0) * 1e3


#: A slow case (see ``interleaved``) takes at most this many samples.
SLOW_SAMPLES = 2


def interleaved(
    cases: dict[str, Callable[[], Callable[[], Any]] | BaseException],
    *,
    rounds: int,
    min_rounds: int = 3,
    budget_s: float | None = None,
    slow_s: float | None = None,
    reuse_warmup: tuple[str, ...] = (),
    work: float | dict[str, float] = 1.0,
    companions: tuple[str, ...] = (),
) -> dict[str, Stats | BaseException]:
    """Time several implementations of one workload in interleaved rounds.

    ``cases[name]()`` prepares one sample (untimed: e.g. a fresh KV cache and its
    prompt) and returns the thunk to time; the thunk must ``mx.eval`` all the
    work it does. Each case first runs once (warm-up). Each round then runs
    every case that still takes samples once, rotating the order (A B C,
    B C A, C A B, ...) so drift on a noisy machine hits all of them alike.

    Samples per case: ``rounds``, cut so that the case's own samples fit
    ``budget_s`` (estimated from its warm-up) but never below ``min_rounds``;
    without a budget, exactly ``rounds``. A slow case, whose warm-up took at
    least ``slow_s`` seconds (MLX's CPU quantized matmul), takes one or two
    (``SLOW_SAMPLES``) samples instead; if it is named in ``reuse_warmup``, its
    warm-up run is its first sample. Only name eager cases whose kernels are
    already built (e.g. by an earlier untimed run of the same model): their
    first-call costs are milliseconds, where an ``mx.compile``'d case's first
    call compiles. Each sample is divided by ``work`` (e.g. calls per thunk; a
    number, or one per case). A case given as an exception, or that raises, is
    reported by its exception and never timed (``NotApplicable`` included).
    Cases named in ``companions`` (a ``RoundProbe``) run only in rounds where
    another case still takes samples, so their reads are all interleaved.
    """
    results: dict[str, Stats | BaseException] = {}
    todo: dict[str, int] = {}
    for name, prepare in cases.items():
        if isinstance(prepare, BaseException):
            results[name] = prepare
            continue
        per = work[name] if isinstance(work, dict) else work
        try:
            t = timed_ms(prepare()) / 1e3
        except Exception as e:  # reported in the table / JSON, never timed
            results[name] = e
            continue
        stats = results[name] = Stats()
        if budget_s is None:
            todo[name] = rounds
            continue
        fit = int(budget_s / max(t, 1e-9))
        if slow_s is not None and t >= slow_s:
            todo[name] = max(1, min(SLOW_SAMPLES, fit))
            if name in reuse_warmup:
                stats.samples_ms.append(t * 1e3 / per)
                todo[name] -= 1
        else:
            todo[name] = max(min_rounds, min(rounds, fit))
    for r in range(max(todo.values(), default=0)):
        live = [name for name, n in todo.items() if n > r]
        if all(name in companions for name in live):
            break
        k = r % len(live)
        for name in live[k:] + live[:k]:
            per = work[name] if isinstance(work, dict) else work
            run = cases[name]()
            results[name].samples_ms.append(timed_ms(run) / per)
    return results


# --------------------------------------------------------------------------- ops


def op_shape(op: str, phase: str, seq_len: int | None = None) -> tuple[int, ...]:
    """Talkie's real shape for one op: (1, 40, L, 128) for rope*, (1, L, 5120) for the
    norms, (1, L, 13696) (the MLP's width) for swiglu."""
    L = OP_SEQ_LEN[phase] if seq_len is None else seq_len
    if op in ("rope", "rope_qk_norm"):
        return (1, TALKIE_HEADS, L, TALKIE_HEAD_DIM)
    if op == "swiglu":
        return (1, L, TALKIE_INTERMEDIATE)
    return (1, L, TALKIE_HIDDEN)


def op_offset(phase: str) -> int:
    return DECODE_OFFSET if phase == "decode" else 0


def op_inputs(op: str, shape, dtype=mx.bfloat16, seed: int = 0) -> tuple:
    """Evaluated inputs for one op, as the state tuple its step function maps.

    rms_norm, rope: ``(x,)``; rope_qk_norm: ``(q, k, head_gain)``;
    residual_norm (with skip): ``(x, y, gain, skip, skip_gain)``; swiglu:
    ``(gate, x)``, the two halves of one (…, 2·D) array as the model's MLP
    splits its projection, with ``x = 1 + e^-gate`` so that ``silu(gate)·x``
    is ``gate`` again (to rounding): chained steps keep their values instead
    of growing to inf or shrinking into subnormals.
    """
    key = mx.random.key(seed)
    k = mx.random.split(key, 5)
    normal = lambda i: mx.random.normal(shape, key=k[i]).astype(dtype)  # noqa: E731
    if op in ("rms_norm", "rope"):
        args = (normal(0),)
    elif op == "rope_qk_norm":
        gain = mx.random.uniform(0.5, 2.0, (shape[1],), key=k[2]).astype(dtype)
        args = (normal(0), normal(1), gain)
    elif op == "residual_norm":
        args = (normal(0), normal(1), mx.array([0.3], dtype), normal(2), mx.array([0.2], dtype))
    elif op == "swiglu":
        gate = normal(0)
        args = tuple(mx.split(mx.concatenate([gate, 1 + mx.exp(-gate)], axis=-1), 2, axis=-1))
    else:
        raise ValueError(f"unknown op {op!r}")
    sync(*args)
    return args


def require_fused_backend() -> str:
    """The backend the fused ops run on; raises if they would fall back to the reference.

    Without the native extension (CPU) the top-level ops run the plain-MLX
    reference: timing that as "fused" would be a fake number.
    """
    import talkie_kernels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        name = talkie_kernels.backend()
    if name == "reference":
        from .. import native

        why = native.load_error or f"no kernels for device {mx.default_device()}"
        raise RuntimeError(f"fused ops unavailable: talkie_kernels dispatches to the plain-MLX reference here ({why})")
    return name


def _fused_op(op: str):
    import talkie_kernels

    require_fused_backend()
    return getattr(talkie_kernels, op)


def op_step(op: str, impl: str, phase: str) -> Callable[[tuple], tuple]:
    """One application of ``op`` by ``impl``, as a map from the state tuple to the next.

    Outputs feed the next application (x -> x; q, k -> q, k; x_new, normed ->
    x, y; swiglu's output -> gate), so a loop of steps is a dependent chain like a model's, and one
    ``mx.eval`` of the final state computes every step.
    """
    offset = op_offset(phase)
    fn = getattr(reference, op) if impl != "fused" else _fused_op(op)
    if op == "rms_norm":
        core = lambda x: fn(x)  # noqa: E731
    elif op == "rope":
        core = lambda x: fn(x, offset)  # noqa: E731
    elif op == "rope_qk_norm":
        core = lambda q, k, g: fn(q, k, g, offset)  # noqa: E731
    elif op == "residual_norm":
        core = lambda x, y, g, s, sg: fn(x, y, g, s, sg)  # noqa: E731
    elif op == "swiglu":
        core = lambda g, x: fn(g, x)  # noqa: E731
    else:
        raise ValueError(f"unknown op {op!r}")
    if impl == "reference_compiled":
        core = mx.compile(core)
    elif impl not in ("reference", "fused"):
        raise ValueError(f"unknown impl {impl!r}")

    if op in ("rms_norm", "rope"):
        return lambda s: (core(*s),)
    if op == "swiglu":
        return lambda s: (core(*s), s[1])
    if op == "rope_qk_norm":
        return lambda s: (*core(*s), s[2])
    return lambda s: (*core(*s), s[2], s[3], s[4])


def op_thunk(step: Callable[[tuple], tuple], state: tuple, inner: int) -> Callable[[], None]:
    """``inner`` chained applications of ``step``, evaluated once at the end."""

    def run():
        s = state
        for _ in range(inner):
            s = step(s)
        mx.eval(s)

    return run


def calibrate_inner(step, state, target_ms: float, max_inner: int = 2000) -> int:
    """How many chained steps make one sample of about ``target_ms`` (at least 1)."""
    op_thunk(step, state, 1)()  # warm-up (compiles, allocates)
    t = min(timed_ms(op_thunk(step, state, 4)) for _ in range(3)) / 4
    return int(max(1, min(max_inner, math.ceil(target_ms / max(t, 1e-3)))))


# --------------------------------------------------------------------------- metadata


def _git_describe() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def metadata() -> dict[str, Any]:
    """Versions, device, backend and date of this run."""
    import mlx_lm

    import talkie_kernels

    device = mx.default_device()
    gpu = bool(mx.metal.is_available())
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "talkie_kernels": talkie_kernels.__version__,
        "git": _git_describe(),
        "backend": talkie_kernels.backend(),
        "native_available": talkie_kernels.native_available(),
        "device": str(device),
        "metal_available": gpu,
        "machine": f"{platform.system()} {platform.machine()}",
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews the timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def parse_dtype(name: str):
    try:
        return {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {name!r}") from None


__all__ = [
    "IMPLS", "OPS", "PHASES", "SLOW_SAMPLES", "NotApplicable", "Stats",
    "calibrate_inner", "dtype_name", "interleaved", "load_average", "metadata", "op_inputs", "op_offset",
    "op_shape", "op_step", "op_thunk", "parse_dtype", "require_fused_backend", "sync", "timed_ms",
]
