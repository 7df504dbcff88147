"""``talkie-kernels convert``: mlx-lm's conversion, with the fused model — lm_head quantized too.

It runs ``mlx_lm.convert.convert`` (same flags: ``--hf-path``, ``--mlx-path``,
``-q``, ``--q-bits``, ``--q-group-size``, ``--q-mode``, ``--dtype``,
``--dequantize``, ...) with its model loading routed through
``talkie_kernels.load``. The loaded model has ``lm_head`` as an ``nn.Linear``
with ``lm_head_gain`` folded in, and fused ``attn_qkv`` / ``mlp_gate_linear``
projections, so mlx-lm's ``quantize_model`` quantizes the head like every
other linear layer and ``save`` writes the fused keys.

The output is read by ``talkie_kernels.load``. ``mlx_lm.load`` does not read
it: mlx-lm's plain Talkie expects the HF keys (bare ``lm_head`` plus
``lm_head_gain.w_g``, separate q/k/v and gate/linear) and its strict load
rejects ``lm_head.weight`` and the fused keys. To serve a checkpoint with
mlx-lm itself, convert with ``mlx_lm.convert`` (which leaves the head
unquantized); ``talkie_kernels.load`` reads that one too.

``-q`` on a quantized checkpoint dequantizes it first, then quantizes as
asked (``requantizing``).

mlx-lm's ``--quant-predicate`` recipes look for ``down_proj`` / ``v_proj``
names that Talkie does not have; ``--quant-predicate talkie_mixed``
is the recipe that works for Talkie: ``lm_head`` 8-bit, the embedding left
unquantized, blocks 14, 37 and 38 (of 40; proportionally for other depths)
8-bit, everything else at ``--q-bits`` (default 4).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

from mlx_lm.utils import dequantize_model

from .arg_checks import local_path_problem, uncreatable_dir
from .swap import loading_through_talkie, swapped

# `import mlx_lm.convert` would give the function mlx_lm/__init__ re-exports under that name.
_mlx_convert = importlib.import_module("mlx_lm.convert")


#: Blocks of the 40-layer released model that keep 8 bits in ``talkie_mixed``.
MIXED_8BIT_BLOCKS = (14, 37, 38)
RECIPES = ("talkie_mixed",)


def talkie_mixed_predicate(num_layers: int, group_size: int | None = None, bits: int | None = None):
    """The ``talkie_mixed`` quant predicate for mlx-lm's ``quantize_model``.

    Bare 4-bit quantization is weak on Talkie; keeping lm_head and three
    sensitive blocks at 8 bits and the embedding unquantized recovers quality.
    """
    group_size = group_size or 64
    low = {"group_size": group_size, "bits": bits or 4, "mode": "affine"}
    high = {"group_size": group_size, "bits": 8, "mode": "affine"}
    high_blocks = {i * num_layers // 40 for i in MIXED_8BIT_BLOCKS}

    def predicate(path: str, module) -> bool | dict:
        if path == "model.embed":
            return False
        if path == "lm_head":
            return high
        parts = path.split(".")
        if parts[:2] == ["model", "blocks"] and int(parts[2]) in high_blocks:
            return high
        return low

    return predicate


def _refusal(q_mode: str) -> str | None:
    # talkie_mixed quantizes affine whatever --q-mode says; mlx_lm.convert
    # refuses its own recipes with other modes, and so does this.
    if q_mode != "affine":
        return (
            f"--quant-predicate talkie_mixed is an affine recipe: it cannot quantize with "
            f"--q-mode {q_mode} (mlx_lm.convert's recipes likewise support 'affine' only)"
        )
    return None


#: mlx_lm.utils.quantize_model's (group size, bits) when -q gives neither.
MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}


def quantization_problem(mode: str, group_size: int | None, bits: int | None, recipe: str | None) -> str | None:
    """Why ``mlx.core.quantize`` cannot quantize with these settings, or None.

    mlx-lm quantizes only the layers whose width the group size divides and
    writes the settings into config.json regardless: an unsupported group size
    (e.g. 7) gave an unquantized model whose config claims group_size 7.
    Probed on a small matrix, so the answer is the installed MLX's own.
    """
    import mlx.core as mx

    default_gs, default_bits = MODE_DEFAULTS[mode]
    gs, b = group_size or default_gs, bits or default_bits
    tries = [(gs, b)] + ([(gs, 8)] if recipe in RECIPES else [])  # talkie_mixed's 8-bit layers
    for g, nbits in tries:
        try:
            if g > 1 << 14:
                raise ValueError(f"group size {g} is larger than any Talkie layer")
            mx.eval(mx.quantize(mx.zeros((1, 4 * g)), group_size=g, bits=nbits, mode=mode))
        except (ValueError, RuntimeError) as e:
            return (
                f"-q with --q-mode {mode}, group size {g} and {nbits} bits: MLX cannot quantize "
                f"with these ({str(e).removeprefix('[quantize] ')})"
            )
    return None


def check_convert_args(ns) -> str | None:
    """Why parsed convert flags cannot convert (for ``parser.error``), or None:
    what mlx_lm.convert raised after loading, or never noticed."""
    if ns.hf_path is None:
        return "--hf-path is required"
    if ns.quantize and ns.dequantize:
        return "-q/--quantize and -d/--dequantize: choose one"
    if ns.quant_predicate in RECIPES and (refusal := _refusal(ns.q_mode)):
        return refusal
    if ns.quant_predicate is not None and ns.q_mode != "affine":
        return f"--quant-predicate {ns.quant_predicate}: mlx-lm's recipes quantize with --q-mode affine only"
    for flag, value in (("--q-group-size", ns.q_group_size), ("--q-bits", ns.q_bits)):
        if value is not None and value < 1:
            return f"argument {flag}: {value} is not >= 1"
    if ns.quantize and (problem := quantization_problem(ns.q_mode, ns.q_group_size, ns.q_bits, ns.quant_predicate)):
        return problem
    if Path(ns.mlx_path).expanduser().exists():
        return (
            f"--mlx-path {ns.mlx_path} already exists (convert does not write over a path, as "
            "mlx_lm.convert): delete it or choose a new one"
        )
    return local_path_problem("--hf-path", ns.hf_path) or uncreatable_dir("--mlx-path", ns.mlx_path)


def convert(hf_path: str, mlx_path: str = "mlx_model", **kwargs) -> None:
    """``mlx_lm.convert.convert`` on the fused model (keyword arguments as there;
    ``quant_predicate="talkie_mixed"`` selects the Talkie recipe)."""
    if kwargs.get("quant_predicate") == "talkie_mixed":
        refusal = _refusal(kwargs.get("q_mode", "affine"))
        if refusal:
            raise ValueError(refusal)
        from mlx_lm.utils import _download, load_config

        config = load_config(_download(str(hf_path), revision=kwargs.get("revision")))
        kwargs["quant_predicate"] = talkie_mixed_predicate(
            config["num_hidden_layers"], kwargs.get("q_group_size"), kwargs.get("q_bits")
        )
    with loading_through_talkie(_mlx_convert), requantizing(_mlx_convert, kwargs.get("quantize", False)):
        _mlx_convert.convert(hf_path, mlx_path, **kwargs)


@contextlib.contextmanager
def requantizing(module, quantize: bool):
    """Within the block, with ``quantize``, ``module.load`` dequantizes a quantized
    checkpoint (and drops its config's quantization), so ``-q`` quantizes it as
    asked. mlx-lm's ``quantize_model`` skips layers that are already quantized:
    ``-q --q-bits 8`` on a 4-bit checkpoint printed "Quantized" and wrote it 4-bit."""
    load = module.load

    def dequantizing_load(*args, **kwargs):
        model, tokenizer, config = load(*args, **kwargs)
        q = config.get("quantization")
        if quantize and q is not None:
            print(f"[INFO] The checkpoint is quantized ({q.get('bits')} bits, group size "
                  f"{q.get('group_size')}, {q.get('mode', 'affine')}): dequantizing it to quantize "
                  "again as asked (the result carries both roundings)")
            model = dequantize_model(model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        return model, tokenizer, config

    with swapped(module, load=dequantizing_load):
        yield


def main(argv=None) -> int:
    parser = _mlx_convert.configure_parser()
    parser.prog = "talkie-kernels convert"
    parser.description = (
        "Convert / quantize a Talkie checkpoint for the fused model. The flags are "
        "mlx_lm.convert's (mlx-lm 0.32.2); what differs: the model loads with "
        "talkie_kernels.load, so -q quantizes lm_head too and the output stores the fused "
        "projections: talkie_kernels.load (so talkie-kernels generate and server) reads it, "
        "mlx_lm.load does not (convert with mlx_lm.convert for that); --quant-predicate "
        "talkie_mixed is a mixed-bit recipe for Talkie."
    )
    for action in parser._actions:
        if action.dest == "hf_path":
            action.help = "A Talkie checkpoint: a local directory or a Hugging Face repo (required)."
        if action.dest == "quant_predicate":
            action.choices = [*action.choices, *RECIPES]
            action.help = (
                "Mixed-bit quantization recipe (talkie_mixed: lm_head and blocks 14, 37, 38 "
                "of 40 at 8 bits, embedding unquantized, the rest at --q-bits)."
            )
    args = parser.parse_args(argv)
    problem = check_convert_args(args)
    if problem:
        parser.error(problem)
    convert(**vars(args))
    return 0
