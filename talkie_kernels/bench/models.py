"""The models of ``talkie-kernels bench`` and ``benchmarks/``: built in memory, and their workloads.

Random-weight Talkie-shaped models from ``talkie_kernels.configs`` (mlx-lm's
plain model and the fused model get the same weights, float or quantized as
``mlx_lm.convert -q`` quantizes them) or a real checkpoint; the prefill and
decode workloads timed by ``timing.interleaved``; the weight bytes a
decoded token reads (its floor, with the machine's read bandwidth); the graph
size of a decode step and the logits agreement of the two models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import mlx.core as mx

from .timing import NotApplicable, dtype_name, require_fused_backend, sync
from ..checkpoint import random_weights
from ..configs import CONFIGS
from ..huge_pages import huge_pages

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


def config_args(config: str | dict) -> dict:
    return dict(CONFIGS[config]) if isinstance(config, str) else dict(config)


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
    weights = random_weights(config_args(config), seed, dtype)  # the checkpoints' generator
    model.load_weights(list(model.sanitize(weights).items()))
    if bits:
        nn.quantize(model, QUANT_GROUP_SIZE, bits, class_predicate=_quantizable)
    model.eval()
    mx.eval(model.parameters())
    huge_pages(model.parameters())  # as talkie_kernels.load does
    return model


def build_fused_model(config: str | dict, weights: dict[str, mx.array], quantization: dict | None = None):
    """This project's model holding ``weights`` (checkpoint keys, e.g. the reference model's parameters).

    Loaded as ``mlx_lm.utils.load_model`` loads a checkpoint: ``sanitize``, then,
    with ``quantization`` (``{"group_size", "bits"}``), every layer that has
    scales is quantized, then the strict ``load_weights``.
    """
    import mlx.nn as nn

    from ..models.talkie import Model, ModelArgs

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
    huge_pages(model.parameters())  # as talkie_kernels.load does
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


class FusedOnly(NotApplicable):
    """The reference of a fused-only run (``build_fused_only``): why mlx-lm is not timed."""

    def __init__(self):
        super().__init__(
            "mlx-lm not timed: at this size its CPU matmuls take seconds per token (the one-block "
            "talkie-1l-13b-width rows of --block-13b compare the two)"
        )


def build_fused_only(config: str | dict, weights: str = "float32", seed: int = 0) -> dict[str, Any]:
    """``{"reference": NotApplicable, "fused": model}``: the fused model alone, no mlx-lm twin.

    The same random weights as ``build_models`` would draw, quantized as
    ``mlx_lm.convert -q`` does (every projection; the bare ``lm_head`` stays
    in the float dtype), so its decode rows read what the twin-built models
    read, in half the memory and without mlx-lm's seconds-long quantized calls.
    """
    import mlx.nn as nn

    from ..models.talkie import Model, ModelArgs

    dtype, bits = weight_format(weights)
    try:
        require_fused_backend()
        model = Model(ModelArgs.from_dict(config_args(config)))
        model.load_weights(list(model.sanitize(random_weights(config_args(config), seed, dtype)).items()))
        if bits:
            nn.quantize(model, QUANT_GROUP_SIZE, bits,
                        class_predicate=lambda path, m: path != "lm_head" and _quantizable(path, m))
        model.eval()
        mx.eval(model.parameters())
        huge_pages(model.parameters())
    except Exception as e:  # reported as the fused rows' error, as in build_models
        model = e
    return {"reference": FusedOnly(), "fused": model}


#: Weight names only the fused model has: a ``talkie-kernels convert`` output.
FUSED_KEY_PARTS = (".attn_qkv.", ".mlp_gate_linear.")


class CheckpointUnreadable(ValueError):
    """Neither ``mlx_lm.load`` nor ``talkie_kernels.load`` reads a ``--model`` checkpoint."""


def checkpoint_keys(path: str | Path) -> set[str]:
    """The weight names of a local checkpoint (from the safetensors headers; empty if none)."""
    import json
    import struct

    keys: set[str] = set()
    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                keys |= set(json.loads(fh.read(n))) - {"__metadata__"}
        except (OSError, ValueError, struct.error):
            continue
    return keys


def no_reference_reason(path: str | Path, error: BaseException) -> str:
    """Why there is no mlx-lm comparison for a checkpoint ``mlx_lm.load`` failed on."""
    keys = checkpoint_keys(path)
    if any(part in k for k in keys for part in FUSED_KEY_PARTS) or "lm_head.weight" in keys:
        why = ("it is a talkie-kernels convert output: fused attn_qkv / mlp_gate_linear projections and "
               "lm_head.weight with its gain folded in (quantized with -q), which mlx-lm's Talkie model does not have")
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        why = f"{type(error).__name__}: {first}"
    return (f"no mlx-lm comparison possible for this checkpoint: mlx_lm.load cannot read it ({why}); "
            "the fused model is measured alone, against its floor")


def load_models(path: str | Path) -> dict[str, Any]:
    """A real checkpoint: reference via ``mlx_lm.load``, fused via ``talkie_kernels.load``.

    Every checkpoint the project writes loads: a Hugging Face layout
    (``init-checkpoint``) or an ``mlx_lm.convert`` output into both models; a
    ``talkie-kernels convert`` output (fused keys, quantized lm_head), which
    ``mlx_lm.load`` rejects, into the fused model only: the reference is then a
    ``NotApplicable`` saying why (its rows are n/a, the fused rows are
    measured against their floor). Raises ``CheckpointUnreadable`` when
    neither loads it.
    """
    import mlx_lm

    import talkie_kernels

    try:
        ref = mlx_lm.load(str(path))[0]
        huge_pages(ref.parameters())  # as talkie_kernels.load leaves the fused model's
    except Exception as e:
        ref = NotApplicable(no_reference_reason(path, e))
        ref.__cause__ = e
    try:
        require_fused_backend()
        fused = talkie_kernels.load(str(path))[0]
    except Exception as e:
        fused = e
    if isinstance(ref, BaseException) and isinstance(fused, BaseException):
        raise CheckpointUnreadable(
            f"{path}: neither mlx_lm.load ({type(ref.__cause__).__name__}: {ref.__cause__}) nor "
            f"talkie_kernels.load ({type(fused).__name__}: {fused}) reads it"
        )
    return {"reference": ref, "fused": fused}


def base_model(models: dict[str, Any]):
    """The model whose shape (vocab, dtype) a run reports: the reference, else the fused one."""
    ref = models["reference"]
    return models["fused"] if isinstance(ref, BaseException) else ref


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
    if isinstance(m, FusedOnly):
        raise m
    if isinstance(m, NotApplicable):  # the note of the run says why
        raise NotApplicable("mlx_lm.load cannot read this checkpoint: no mlx-lm comparison (see the note)")
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


def decode_nodes(models: dict[str, Any]) -> dict[str, int]:
    """Primitive nodes of one decode step, reference and fused (``talkie_kernels.graph``)."""
    from ..graph import decode_step_nodes

    return {impl: sum(decode_step_nodes(models[impl]).values()) for impl in ("reference", "fused")}


def logits_agreement(models: dict[str, Any], ids) -> float | None:
    """max |fused − reference| / max |reference| of the prompt's logits (None without a fused model)."""
    if isinstance(models.get("fused"), BaseException) or isinstance(models.get("reference"), BaseException):
        return None
    a = models["reference"](ids).astype(mx.float32)
    b = models["fused"](ids).astype(mx.float32)
    return float(mx.abs(a - b).max() / mx.maximum(mx.abs(a).max(), 1e-30))
