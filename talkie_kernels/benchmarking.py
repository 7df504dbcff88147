"""Benchmark machinery shared by ``talkie-kernels bench`` and ``benchmarks/``.

One place for: the timing loop (warm-up, interleaved rounds, p20/p50/p80), the
per-op inputs at Talkie's shapes, the per-op step functions of each
implementation, the random-weight model builder (mlx-lm's plain model and the
fused model get the same weights, float or quantized as ``mlx_lm.convert -q``
quantizes them), the prefill/decode workloads, the decode floor (weight bytes
per token and the machine's read bandwidth), and the run metadata (versions,
device, backend). The per-shape ``linear`` benchmark is ``bench_linear.py``.

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

#: The models of ``benchmarks/test_bench_model.py`` and their prefill prompt
#: lengths (``talkie-kernels bench`` runs talkie-8l-512 at several formats
#: instead). The 8-layer model's 512-token prefill takes ~13 s per forward
#: with the reference BLAS of MLX's Linux CPU wheel, so it is measured on 64
#: tokens.
DEFAULT_MODELS = (("talkie-2l-256", 512), ("talkie-8l-512", 64))
#: How the model phases are driven: prefill is one forward with a fresh cache;
#: decode is our synchronous greedy loop (``decode_case``) and mlx-lm's own
#: pipelined ``generate_step`` (``generate_step_case``).
MODEL_WORKLOADS = (("prefill", "forward"), ("decode", "step_loop"), ("decode", "generate_step"))
#: Decode: this many greedy steps per sample, after a prompt of this length.
#: Samples continue the same sequence (see ``decode_case``), so a run decodes
#: positions 16 to 16 + 32 × (warm-up + rounds).
DECODE_TOKENS, DECODE_PROMPT = 32, 16
#: The same for quantized weights: MLX's CPU quantized matmul takes ~0.2 s per
#: talkie-8l-512 token here (and ~0.2 s per prompt token), so fewer of both.
QUANTIZED_DECODE_TOKENS, QUANTIZED_DECODE_PROMPT = 4, 4

#: Weight formats of the random-weight models: a float dtype, or affine
#: quantization as ``mlx_lm.convert -q`` writes it (a bf16 model quantized with
#: group size 64; scales and biases in bf16): format -> (dtype, bits or None).
WEIGHT_FORMATS = {
    "float32": (mx.float32, None),
    "bfloat16": (mx.bfloat16, None),
    "float16": (mx.float16, None),
    "q4": (mx.bfloat16, 4),
    "q6": (mx.bfloat16, 6),
    "q8": (mx.bfloat16, 8),
}
QUANT_GROUP_SIZE = 64

#: The read bandwidth is measured on a buffer this large: far past any cache.
READ_BANDWIDTH_BYTES = 1 << 29

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
        k = r % len(live)
        for name in live[k:] + live[:k]:
            per = work[name] if isinstance(work, dict) else work
            run = cases[name]()
            results[name].samples_ms.append(timed_ms(run) / per)
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
    t = min(timed_ms(op_thunk(step, state, 4)) for _ in range(3)) / 4
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


def weight_format(name: str) -> tuple[Any, int | None]:
    """``WEIGHT_FORMATS[name]``: (float dtype, bits or None); a clear error otherwise."""
    try:
        return WEIGHT_FORMATS[name]
    except KeyError:
        raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, got {name!r}") from None


def _quantizable(path: str, module) -> bool:
    # mlx_lm.utils.quantize_model's rule: every layer that can be quantized and
    # whose input size the group size divides (the bare lm_head is no layer).
    return hasattr(module, "to_quantized") and module.weight.shape[-1] % QUANT_GROUP_SIZE == 0


def build_reference_model(config: str | dict, weights: str = "float32", seed: int = 0):
    """mlx-lm's plain Talkie model with random weights in one of ``WEIGHT_FORMATS``.

    Quantized formats are drawn in bf16 and quantized as ``mlx_lm.convert -q``
    does (``nn.quantize`` with ``mlx_lm.utils.quantize_model``'s predicate, group
    size 64): embedding and projections become affine-quantized with bf16
    scales and biases; the bare ``lm_head`` stays bf16.
    """
    import mlx.nn as nn
    from mlx_lm.models import talkie

    dtype, bits = weight_format(weights)
    model = talkie.Model(talkie.ModelArgs.from_dict(config_args(config)))
    model.load_weights(list(model.sanitize(random_weights(model, dtype, seed)).items()))
    if bits:
        nn.quantize(model, QUANT_GROUP_SIZE, bits, class_predicate=_quantizable)
    model.eval()
    mx.eval(model.parameters())
    return model


def build_fused_model(config: str | dict, weights: dict[str, mx.array], quantization: dict | None = None):
    """This project's model holding ``weights`` (checkpoint keys, e.g. the reference model's parameters).

    Loaded as ``mlx_lm.utils.load_model`` loads a checkpoint: ``sanitize``, then,
    with ``quantization`` (``{"group_size", "bits"}``), every layer that has
    scales is quantized, then the strict ``load_weights``.
    """
    import mlx.nn as nn

    from .models.talkie import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config_args(config)))
    weights = model.sanitize(dict(weights))
    if quantization:
        nn.quantize(
            model, quantization["group_size"], quantization["bits"],
            class_predicate=lambda path, m: hasattr(m, "to_quantized") and f"{path}.scales" in weights,
        )
    model.load_weights(list(weights.items()))
    model.eval()
    mx.eval(model.parameters())
    return model


def build_models(config: str | dict, weights: str = "float32", seed: int = 0) -> dict[str, Any]:
    """``{"reference": model, "fused": model or the exception that stopped it}``, same weights.

    ``weights`` is a ``WEIGHT_FORMATS`` name; the fused model is loaded from
    the reference model's own (possibly quantized) parameters, so both hold the
    same quantized weights.
    """
    from mlx.utils import tree_flatten

    ref = build_reference_model(config, weights, seed)
    bits = weight_format(weights)[1]
    quantization = {"group_size": QUANT_GROUP_SIZE, "bits": bits} if bits else None
    try:
        require_fused_backend()
        fused = build_fused_model(config, dict(tree_flatten(ref.parameters())), quantization)
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


def generate_step_case(model, prompt, n_tokens: int, impl: str) -> Callable[[], Callable[[], Any]]:
    """Greedy decoding through ``mlx_lm.generate.generate_step``, ``n_tokens`` tokens per sample.

    Unlike ``decode_case`` this is mlx-lm's own loop, as ``mlx_lm.generate``
    runs it: a generation stream and ``mx.async_eval``, so building step n+1's
    graph overlaps computing step n. One endless generator per implementation:
    the first ``prepare()`` runs the prompt and the first token (untimed);
    each sample takes the next ``n_tokens`` tokens, then waits for the step
    already in flight, whose token opens the next sample -- so each sample
    computes ``n_tokens`` steps. Call ``prepare.close()`` when done.
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

    def close():
        # Finish mlx-lm's generator in this thread: left to the garbage
        # collector, it may be finalized on another thread (a progress bar's),
        # where leaving its mx.stream context raises.
        if state:
            state.pop("tokens").close()

    prepare.close = close
    return prepare


def model_for(models: dict[str, Any], impl: str):
    """The model object behind an impl (compiled uses the reference model); raises the fused model's build error."""
    m = models["fused" if impl == "fused" else "reference"]
    if isinstance(m, BaseException):
        raise RuntimeError(f"fused model unavailable: {type(m).__name__}: {m}") from m
    return m


def decode_weight_bytes(model) -> int:
    """Weight bytes one decoded token reads: every parameter but the embedding table.

    Projections with their scales and biases, ``lm_head`` and the gains (of the
    embedding, one row per token is read). KV cache and activations are not
    counted.
    """
    from mlx.utils import tree_flatten

    return sum(p.nbytes for name, p in tree_flatten(model.parameters()) if not name.startswith("model.embed."))


def read_bandwidth(nbytes: int = READ_BANDWIDTH_BYTES, repeats: int = 5) -> dict[str, Any]:
    """The machine's read bandwidth: the native ops' streaming read of ``nbytes``, median GB/s.

    Measured by ``talkie_kernels.native.ops.memory_read_gbps`` with the native
    ops' thread count (both cores here), so the floor of a decode step is the
    weight bytes it reads divided by what the kernels' own threads can read.
    """
    from . import native

    measure = getattr(native.ops, "memory_read_gbps", None)
    if measure is None:
        why = native.load_error or "the built extension has no memory_read_gbps; rebuild it"
        raise RuntimeError(f"read bandwidth unmeasured: talkie_kernels.native.ops.memory_read_gbps unavailable ({why})")
    gbps = float(measure(nbytes, repeats))
    return {"gbps": gbps, "nbytes": nbytes, "repeats": repeats, "threads": native.ops.num_threads()}


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
    "COMPILED_DECODE_NA", "DECODE_PROMPT", "DECODE_TOKENS", "QUANTIZED_DECODE_PROMPT", "QUANTIZED_DECODE_TOKENS", "DEFAULT_MODELS", "IMPLS", "MODEL_WORKLOADS", "OPS", "PHASES",
    "QUANT_GROUP_SIZE", "READ_BANDWIDTH_BYTES", "WEIGHT_FORMATS", "NotApplicable", "Stats",
    "build_fused_model", "build_models", "build_reference_model", "calibrate_inner",
    "decode_case", "decode_nodes", "decode_weight_bytes", "generate_step_case", "interleaved", "load_models",
    "logits_agreement", "metadata", "model_dtype", "model_for", "op_inputs", "op_shape", "op_step", "op_thunk",
    "prefill_case", "prompt_ids", "random_weights", "read_bandwidth", "require_fused_backend", "sync", "timed_ms", "vocab_size",
    "weight_format",
]
