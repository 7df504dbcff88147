"""Benchmark machinery shared by ``talkie-kernels bench`` and ``benchmarks/``.

One place for: the timing loop (warm-up, interleaved rounds, p20/p50/p80), the
per-op inputs at Talkie's shapes, the per-op step functions of each
implementation, the random-weight model builder (mlx-lm's plain model and the
fused model get the same weights), the prefill/decode workloads, and the run
metadata (versions, device, backend).

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

from . import reference
from .configs import CONFIGS, TALKIE_HEAD_DIM, TALKIE_HEADS, TALKIE_HIDDEN

IMPLS = ("reference", "reference_compiled", "fused")
#: The extra decode row: the fused model's matmuls alone (``matmuls_only_case``).
MATMULS_ONLY = "fused_matmuls_only"
PHASES = ("prefill", "decode")
OPS = ("rms_norm", "rope", "rope_qk_norm", "residual_norm")

#: Why there is no ``reference_compiled`` decode number. mlx-lm's KVCache keeps
#: its offset as a Python int and slices its buffers by it, so the traced graph
#: depends on the position: a compiled step either retraces every token (the
#: fetched keys change shape) or, with the buffers passed as state, replays a
#: frozen position. mlx-lm does not compile its decode step either.
COMPILED_DECODE_NA = (
    "mx.compile does not apply: mlx-lm's KVCache slices by a Python-int offset, "
    "so a compiled step would retrace every token or replay a stale position"
)

#: The default models and their prefill prompt lengths (``talkie-kernels bench``
#: and ``benchmarks/test_bench_model.py``). The 8-layer model's 512-token
#: prefill takes ~13 s per forward with the reference BLAS of MLX's Linux CPU
#: wheel (×3 implementations × warm-up and rounds), so it is measured on 64
#: tokens by default to keep the whole run under two minutes on a 2-core
#: machine; ``--prompt-len 512`` measures it at 512.
DEFAULT_MODELS = (("talkie-2l-256", 512), ("talkie-8l-512", 64))
#: How the model phases are driven: prefill is one forward with a fresh cache;
#: decode is our synchronous greedy loop (``decode_case``) and mlx-lm's own
#: pipelined ``generate_step`` (``generate_step_case``).
MODEL_WORKLOADS = (("prefill", "forward"), ("decode", "step_loop"), ("decode", "generate_step"))
#: Decode: this many greedy steps per sample, after a prompt of this length.
#: Samples continue the same sequence (see ``decode_case``), so a run decodes
#: positions 16 to 16 + 32 × (warm-up + rounds).
DECODE_TOKENS, DECODE_PROMPT = 32, 16

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


def _timed(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    mx.synchronize()
    return (time.perf_counter() - t0) * 1e3


def interleaved(
    cases: dict[str, Callable[[], Callable[[], Any]] | BaseException],
    *,
    rounds: int,
    min_rounds: int = 3,
    budget_s: float | None = None,
    warmup: int = 1,
    work: float = 1.0,
) -> dict[str, Stats | BaseException]:
    """Time several implementations of one workload in interleaved rounds.

    ``cases[name]()`` prepares one sample (untimed: e.g. a fresh KV cache and its
    prompt) and returns the thunk to time; the thunk must ``mx.eval`` all the
    work it does. Each round runs every case once, rotating the order (A B C,
    B C A, C A B, ...) so drift on a noisy machine hits all of them alike.

    After ``warmup`` untimed runs each, the number of rounds is ``rounds``, cut
    down to fit ``budget_s`` (estimated from the last warm-up) but never below
    ``min_rounds``. Each sample is divided by ``work`` (e.g. ops per thunk).
    A case given as an exception, or that raises, is reported by its
    exception and never timed (``NotApplicable`` included).
    """
    results: dict[str, Stats | BaseException] = {}
    live: list[str] = []
    estimate = 0.0
    for name, prepare in cases.items():
        if isinstance(prepare, BaseException):
            results[name] = prepare
            continue
        try:
            for _ in range(warmup):
                t = _timed(prepare())
            estimate += t / 1e3
            live.append(name)
            results[name] = Stats()
        except Exception as e:  # reported in the table / JSON, never timed
            results[name] = e
    n = rounds
    if budget_s is not None and estimate > 0:
        n = max(min_rounds, min(rounds, int(budget_s / estimate)))
    for r in range(n):
        k = r % len(live) if live else 0
        for name in live[k:] + live[:k]:
            run = cases[name]()
            results[name].samples_ms.append(_timed(run) / work)
    return results


# --------------------------------------------------------------------------- ops


def op_shape(op: str, phase: str, seq_len: int | None = None) -> tuple[int, ...]:
    """Talkie's real shape for one op: (1, 40, L, 128) for rope*, (1, L, 5120) for the norms."""
    L = OP_SEQ_LEN[phase] if seq_len is None else seq_len
    if op in ("rope", "rope_qk_norm"):
        return (1, TALKIE_HEADS, L, TALKIE_HEAD_DIM)
    return (1, L, TALKIE_HIDDEN)


def op_offset(phase: str) -> int:
    return DECODE_OFFSET if phase == "decode" else 0


def op_inputs(op: str, shape, dtype=mx.bfloat16, seed: int = 0) -> tuple:
    """Evaluated inputs for one op, as the state tuple its step function maps.

    rms_norm, rope: ``(x,)``; rope_qk_norm: ``(q, k, head_gain)``;
    residual_norm (with skip): ``(x, y, gain, skip, skip_gain)``.
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
        from . import native

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
    x, y), so a loop of steps is a dependent chain like a model's, and one
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
    else:
        raise ValueError(f"unknown op {op!r}")
    if impl == "reference_compiled":
        core = mx.compile(core)
    elif impl not in ("reference", "fused"):
        raise ValueError(f"unknown impl {impl!r}")

    if op in ("rms_norm", "rope"):
        return lambda s: (core(*s),)
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
    t = min(_timed(op_thunk(step, state, 4)) for _ in range(3)) / 4
    return int(max(1, min(max_inner, math.ceil(target_ms / max(t, 1e-3)))))


# --------------------------------------------------------------------------- models


def config_args(config: str | dict) -> dict:
    return dict(CONFIGS[config]) if isinstance(config, str) else dict(config)


def random_weights(model, dtype=mx.float32, seed: int = 0) -> dict[str, mx.array]:
    """Random Talkie weights in the checkpoint's key layout, for ``model``'s shapes.

    Realistic scales: embeddings N(0, 1) (they are normalized right away);
    projections and the bare ``lm_head`` N(0, 1/fan_in). Every gain is drawn
    away from its init, so each one matters: attn/mlp gains (2·layers)^-1/2 ×
    U(0.5, 2); embed_skip U(0.05, 0.3) (init 0); head gains and lm_head_gain
    U(0.5, 2).
    """
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    layers = len(model.layers)
    keys = mx.random.split(mx.random.key(seed), len(params))
    out = {}
    for (name, p), key in zip(sorted(params.items()), keys):
        if name.endswith("embed.weight"):
            w = mx.random.normal(p.shape, key=key)
        elif name == "lm_head" or name.endswith(".weight"):
            w = mx.random.normal(p.shape, key=key) * p.shape[-1] ** -0.5
        elif name.endswith(("attn_gain.a_g", "mlp_gain.a_g")):
            w = (2 * layers) ** -0.5 * mx.random.uniform(0.5, 2.0, p.shape, key=key)
        elif name.endswith("embed_skip.a_g"):
            w = mx.random.uniform(0.05, 0.3, p.shape, key=key)
        elif name.endswith(("head_gain.head_g", "lm_head_gain.w_g")):
            w = mx.random.uniform(0.5, 2.0, p.shape, key=key)
        else:
            raise ValueError(f"random_weights: no rule for parameter {name!r} {p.shape}")
        out[name] = w.astype(dtype)
    mx.eval(out)
    return out


def build_reference_model(config: str | dict, dtype=mx.float32, seed: int = 0):
    """mlx-lm's plain Talkie model with random weights -> (model, weights)."""
    from mlx_lm.models import talkie

    model = talkie.Model(talkie.ModelArgs.from_dict(config_args(config)))
    weights = random_weights(model, dtype, seed)
    model.load_weights(list(model.sanitize(dict(weights)).items()))
    model.eval()
    mx.eval(model.parameters())
    return model, weights


def build_fused_model(config: str | dict, weights: dict[str, mx.array]):
    """This project's model with the same weights, through its ``sanitize`` + ``load_weights``."""
    from .models.talkie import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config_args(config)))
    model.load_weights(list(model.sanitize(dict(weights)).items()))
    model.eval()
    mx.eval(model.parameters())
    return model


def build_models(config: str | dict, dtype=mx.float32, seed: int = 0) -> dict[str, Any]:
    """``{"reference": model, "fused": model or the exception that stopped it}``."""
    ref, weights = build_reference_model(config, dtype, seed)
    try:
        require_fused_backend()
        fused = build_fused_model(config, weights)
    except Exception as e:  # reported as the fused rows' error
        fused = e
    return {"reference": ref, "fused": fused}


def load_models(path: str | Path) -> dict[str, Any]:
    """A real checkpoint: reference via ``mlx_lm.load``, fused via ``talkie_kernels.load``."""
    import mlx_lm

    import talkie_kernels

    ref = mlx_lm.load(str(path))[0]
    try:
        require_fused_backend()
        fused = talkie_kernels.load(str(path))[0]
    except Exception as e:
        fused = e
    return {"reference": ref, "fused": fused}


def model_dtype(model) -> str:
    """The dtype of a model's embedding: its weights' dtype (quantized: scales dtype and bits)."""
    embed = model.model.embed
    if hasattr(embed, "scales"):
        return f"{dtype_name(embed.scales.dtype)} {embed.bits}-bit"
    return dtype_name(embed.weight.dtype)


def vocab_size(model) -> int:
    return model.args.vocab_size


def prompt_ids(vocab: int, length: int, seed: int = 0) -> mx.array:
    """(1, length) random token ids (the speed of a forward pass does not depend on them)."""
    ids = mx.random.randint(0, vocab, (1, length), key=mx.random.key(seed + 1))
    mx.eval(ids)
    return ids


def _prefill_fn(model):
    from mlx_lm.models.cache import make_prompt_cache

    def prefill(ids):
        # A fresh mlx-lm cache, as in generation: the work includes the K/V writes.
        cache = make_prompt_cache(model)
        logits = model(ids, cache=cache)
        return [logits[:, -1, :]] + [a for c in cache for a in (c.keys, c.values)]

    return prefill


def prefill_case(model, ids, impl: str) -> Callable[[], Callable[[], Any]]:
    """One prompt forward with a fresh KV cache; evaluates the last logits and the cache."""
    fn = _prefill_fn(model)
    if impl == "reference_compiled":
        fn = mx.compile(fn)
    return lambda: (lambda: mx.eval(fn(ids)))


def decode_case(model, prompt, n_tokens: int, impl: str) -> Callable[[], Callable[[], Any]]:
    """Greedy decoding with mlx-lm's KVCache, ``n_tokens`` steps per sample.

    The first ``prepare()`` prefills ``prompt`` into a fresh cache (untimed);
    every sample then continues the same sequence, so round r of every
    implementation decodes the same positions (interleaving stays fair) and no
    sample pays for a prefill. Each step is a whole generation step: forward
    one token, update the cache, argmax, ``mx.eval`` the token (which needs the
    cache writes).
    """
    if impl == "reference_compiled":
        raise NotApplicable(COMPILED_DECODE_NA)
    from mlx_lm.models.cache import make_prompt_cache

    state: dict[str, Any] = {}

    def run():
        tok, cache = state["tok"], state["cache"]
        for _ in range(n_tokens):
            logits = model(tok[:, None], cache=cache)
            tok = mx.argmax(logits[:, -1, :], axis=-1)
            mx.eval(tok)
        state["tok"] = tok

    def prepare():
        if not state:
            cache = make_prompt_cache(model)
            logits = model(prompt, cache=cache)
            tok = mx.argmax(logits[:, -1, :], axis=-1)
            sync(tok, [(c.keys, c.values) for c in cache])
            state.update(cache=cache, tok=tok)
        return run

    return prepare


def matmuls_only_case(model, n_tokens: int) -> Callable[[], Callable[[], Any]]:
    """The decode step's matmuls alone: a floor under any decode step of ``model``.

    Applies every ``nn.Linear`` / ``nn.QuantizedLinear`` of ``model`` (same
    weights, same order, one 1-token activation each) ``n_tokens`` times per
    sample, ``mx.eval`` per token as ``decode_case`` does. Nothing the fused ops
    do can make a step cheaper than this, so ``reference step / this`` bounds
    the decode speedup that fusion alone can reach on this machine.
    """
    import mlx.nn as nn

    linears = [m for _, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    dtype = parse_dtype(model_dtype(model).split()[0])  # "bfloat16 4-bit" -> activations in bf16
    # Input features: quantized weights pack 32 // bits values per uint32.
    sizes = [lin.weight.shape[1] * (32 // lin.bits if isinstance(lin, nn.QuantizedLinear) else 1) for lin in linears]
    inputs = {k: mx.random.normal((1, 1, k), key=mx.random.key(k)).astype(dtype) for k in set(sizes)}
    mx.eval(list(inputs.values()))

    def run():
        for _ in range(n_tokens):
            mx.eval([lin(inputs[k]) for lin, k in zip(linears, sizes)])

    return lambda: run


def generate_step_case(model, prompt, n_tokens: int, impl: str) -> Callable[[], Callable[[], Any]]:
    """Greedy decoding through ``mlx_lm.generate.generate_step``, ``n_tokens`` tokens per sample.

    Unlike ``decode_case`` this is mlx-lm's own loop, as ``mlx_lm.generate``
    runs it: a generation stream and ``mx.async_eval``, so building step n+1's
    graph overlaps computing step n. One endless generator per implementation:
    the first ``prepare()`` runs the prompt and the first token (untimed);
    each sample takes the next ``n_tokens`` tokens, then waits for the step
    already in flight, whose token opens the next sample -- so each sample
    computes ``n_tokens`` steps.
    """
    if impl == "reference_compiled":
        raise NotApplicable(COMPILED_DECODE_NA)
    from mlx_lm.generate import generate_step, generation_stream

    state: dict[str, Any] = {}

    def run():
        tokens = state["tokens"]
        for _ in range(n_tokens):
            next(tokens)
        mx.synchronize(generation_stream)

    def prepare():
        if not state:
            state["tokens"] = generate_step(prompt.reshape(-1), model, max_tokens=-1)
            next(state["tokens"])
            mx.synchronize(generation_stream)
        return run

    return prepare


def model_for(models: dict[str, Any], impl: str):
    """The model object behind an impl (compiled uses the reference model, matmuls-only the fused one); raises its build error."""
    m = models["fused" if impl in ("fused", MATMULS_ONLY) else "reference"]
    if isinstance(m, BaseException):
        raise RuntimeError(f"fused model unavailable: {type(m).__name__}: {m}") from m
    return m


def decode_nodes(models: dict[str, Any]) -> dict[str, int]:
    """Primitive nodes of one decode step, reference and fused (``talkie_kernels.graph``)."""
    from .graph import decode_step_nodes

    return {impl: sum(decode_step_nodes(models[impl]).values()) for impl in ("reference", "fused")}


def logits_agreement(models: dict[str, Any], ids) -> float | None:
    """max |fused − reference| / max |reference| of the prompt's logits (None without a fused model)."""
    if isinstance(models.get("fused"), BaseException):
        return None
    a = models["reference"](ids).astype(mx.float32)
    b = models["fused"](ids).astype(mx.float32)
    return float(mx.abs(a - b).max() / mx.maximum(mx.abs(a).max(), 1e-30))


# --------------------------------------------------------------------------- metadata


def _git_describe() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
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
    "COMPILED_DECODE_NA", "DECODE_PROMPT", "MATMULS_ONLY", "DECODE_TOKENS", "DEFAULT_MODELS", "MODEL_WORKLOADS", "IMPLS", "OPS", "PHASES", "NotApplicable", "Stats",
    "build_fused_model", "build_models", "build_reference_model", "calibrate_inner",
    "decode_case", "decode_nodes", "generate_step_case", "interleaved", "load_models", "logits_agreement", "metadata", "model_dtype",
    "model_for", "op_inputs", "op_shape", "op_step", "op_thunk", "prefill_case",
    "prompt_ids", "random_weights", "require_fused_backend", "sync", "vocab_size",
]
