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

mlx-lm's ``--quant-predicate`` recipes look for ``down_proj`` / ``v_proj``
names that Talkie does not have (DESIGN §9) and fail with mlx-lm's error.
"""

from __future__ import annotations

import importlib

from .loader import loading_through_talkie

# `import mlx_lm.convert` would give the function mlx_lm/__init__ re-exports under that name.
_mlx_convert = importlib.import_module("mlx_lm.convert")


def convert(hf_path: str, mlx_path: str = "mlx_model", **kwargs) -> None:
    """``mlx_lm.convert.convert`` on the fused model (keyword arguments as there)."""
    with loading_through_talkie(_mlx_convert):
        _mlx_convert.convert(hf_path, mlx_path, **kwargs)


def main(argv_=None) -> int:
    parser = _mlx_convert.configure_parser()
    parser.prog = "talkie-kernels convert"
    parser.description = "Convert / quantize a Talkie checkpoint for the fused model (lm_head quantized too)."
    args = parser.parse_args(argv_)
    if args.hf_path is None:
        parser.error("--hf-path is required")
    convert(**vars(args))
    return 0
