"""Checkpoint keys of Talkie -> the fused model's: what ``Model.sanitize`` does.

An HF Talkie checkpoint and an ``mlx_lm.convert`` output of mlx-lm's plain
Talkie hold each block's attn_query/key/value and mlp_gate/mlp_linear apart,
a bare ``lm_head`` and its gain ``lm_head_gain.w_g``. The fused model holds the
parts of each projection concatenated (``FUSED``) and the gain folded into
``lm_head.weight``. ``sanitize`` maps the one onto the other and checks the
keys and shapes on the way, so a bad checkpoint is an error naming the key at
fault (or the config.json fields) rather than mlx's strict load's message
about a fused key the checkpoint never had.

This module knows keys and shapes only: it imports nothing of the package, so
the model file can delegate to it.
"""

from __future__ import annotations

import re
from typing import Optional

import mlx.core as mx

#: The fused projections of a block and their parts in row order: module paths
#: in a block, the parts' as in mlx-lm's plain model (and HF checkpoints).
FUSED = {
    "attn.attn_qkv": ("attn.attn_query", "attn.attn_key", "attn.attn_value"),
    "mlp.mlp_gate_linear": ("mlp.mlp_gate", "mlp.mlp_linear"),
}

#: Each part of a fused projection (module path in a block) -> (fused path, index).
PARTS = {part: (fused, i) for fused, parts in FUSED.items() for i, part in enumerate(parts)}

_BLOCK_KEY = re.compile(r"^model\.blocks\.(\d+)\.")


def block_index(key: str) -> Optional[int]:
    """The block a checkpoint key belongs to (``model.blocks.<i>.``), or None."""
    m = _BLOCK_KEY.match(key)
    return None if m is None else int(m.group(1))


def _in_blocks(key: str, blocks: range) -> bool:
    i = block_index(key)
    return i is None or i in blocks


@mx.compile
def scaled(w: mx.array, g: mx.array) -> mx.array:
    # One elementwise kernel, which may write over w's buffer: folding the gain
    # into lm_head at load holds no fp32 copy of the head.
    return (w.astype(mx.float32) * g).astype(w.dtype)


def sanitize(weights: dict, args, blocks: Optional[range] = None) -> dict:
    """HF or mlx-lm checkpoint keys -> the fused model's keys, for the model of ``args``.

    * ``blocks`` (a pipeline stage's block indices): the weights of other
      blocks are dropped first (``mx.load`` is lazy: they are never read);
    * drops precomputed rotary buffers (as the plain model does);
    * concatenates attn_query/key/value into ``attn.attn_qkv`` and
      mlp_gate/mlp_linear into ``mlp.mlp_gate_linear`` — weights, and for
      quantized checkpoints scales and biases too (rows stay in group
      order, so quantized rows concatenate exactly);
    * the bare ``lm_head`` becomes ``lm_head.weight``; if
      ``lm_head_gain.w_g`` is present it is folded in and dropped (into the
      weight, or into scales and biases of a quantized head), so a
      checkpoint this model saved — gain already folded, no ``w_g`` — is
      never folded twice.

    Already-fused keys pass through unchanged. A partial set of the parts of
    a fused projection, parts of the wrong shape or a non-scalar
    ``lm_head_gain.w_g`` raise ``ValueError`` naming the key at fault, or
    the config.json fields when all parts disagree with them alike.
    """
    if blocks is not None:
        weights = {k: v for k, v in weights.items() if _in_blocks(k, blocks)}
    weights = {
        k: v
        for k, v in weights.items()
        if "rotary" not in k and not k.endswith(("cos", "sin"))
    }
    heads, head_dim = args.num_attention_heads, args.head_dim
    # Rows of each part, and the config.json fields they come from.
    rows = {
        "attn.attn_qkv": (heads * head_dim, f"num_attention_heads {heads} × head_dim {head_dim}"),
        "mlp.mlp_gate_linear": (args.intermediate_size, f"intermediate_size {args.intermediate_size}"),
    }
    for i in range(args.num_hidden_layers):
        p = f"model.blocks.{i}."
        for fused, parts in FUSED.items():
            _fuse(weights, p, fused, parts, *rows[fused], args.hidden_size)
        g = weights.get(f"{p}attn.head_gain.head_g")
        if g is not None and g.shape != (heads,):
            raise ValueError(
                f"{p}attn.head_gain.head_g has shape {tuple(g.shape)}, expected "
                f"({heads},) (num_attention_heads {heads} in config.json)"
            )

    bare = weights.pop("lm_head", None)
    gain = weights.pop("lm_head_gain.w_g", None)
    if bare is not None:
        if gain is None:
            raise ValueError(
                "checkpoint has a bare lm_head but no lm_head_gain.w_g "
                "(an HF Talkie checkpoint has both)"
            )
        weights["lm_head.weight"] = bare
    if gain is not None:
        if "lm_head.weight" not in weights:
            raise ValueError("checkpoint has lm_head_gain.w_g but no lm_head weight")
        if gain.size != 1:
            raise ValueError(
                f"lm_head_gain.w_g has shape {tuple(gain.shape)}, expected (1,) (a scalar gain)"
            )
        g = gain.astype(mx.float32).reshape(())
        # An affine-quantized head dequantizes as scales·q + biases: scale both.
        names = ("weight",)
        if "lm_head.scales" in weights:
            if not mx.issubdtype(weights["lm_head.scales"].dtype, mx.floating):
                raise ValueError(
                    "cannot fold lm_head_gain.w_g into lm_head: its quantization "
                    "has no float scales (only affine quantization can be folded)"
                )
            names = ("scales", "biases") if "lm_head.biases" in weights else ("scales",)
        for n in names:
            weights[f"lm_head.{n}"] = scaled(weights[f"lm_head.{n}"], g)
    return weights


def _fuse(weights: dict, prefix: str, fused: str, parts, rows: int, rows_from: str, dim: int) -> None:
    """Concatenate the rows of ``{prefix}{part}.{weight,scales,biases}`` into ``{prefix}{fused}.*``.

    ``rows`` is each part's row count (``rows_from`` the config fields that set
    it), ``dim`` the model's hidden_size: a dense part's columns. Errors name
    the key at fault, or config.json when every part disagrees with it alike.
    """
    for suffix in ("weight", "scales", "biases"):
        keys = [f"{prefix}{part}.{suffix}" for part in parts]
        present = [k for k in keys if k in weights]
        if not present:
            continue
        if len(present) != len(keys):
            missing = [k for k in keys if k not in weights]
            raise ValueError(
                f"checkpoint has {', '.join(present)} but is missing {', '.join(missing)}"
            )
        # Weights come first, so their scales are still in `weights` if quantized.
        quantized = suffix != "weight" or any(f"{prefix}{p}.scales" in weights for p in parts)
        arrays = [weights.pop(k) for k in keys]
        shapes = [tuple(a.shape) for a in arrays]
        for k, shape in zip(keys, shapes):
            if len(shape) != 2:
                raise ValueError(f"{k} has shape {shape}, expected 2 dimensions ({rows}, ...)")
        _check_parts(keys, [s[0] for s in shapes], rows, f"{rows_from} in config.json", "rows")
        if quantized:
            # Packed columns depend on bits and group size: the parts must agree.
            cols = [s[1] for s in shapes]
            want = max(set(cols), key=lambda c: (cols.count(c), -cols.index(c)))
            hint = "; the parts of a fused projection must be quantized alike (same bits and group size)"
            for k, shape in zip(keys, shapes):
                if shape[1] != want:
                    raise ValueError(
                        f"{k} has shape {shape}, expected ({rows}, {want}) as the other parts{hint}"
                    )
        else:
            _check_parts(keys, [s[1] for s in shapes], dim, f"hidden_size {dim} in config.json", "columns")
        # Parts of mixed dtypes (one fp32 projection in a bf16 checkpoint)
        # concatenate in the promoted dtype: none loses precision.
        weights[f"{prefix}{fused}.{suffix}"] = mx.concatenate(arrays, axis=0)


def _check_parts(keys, sizes, want: int, source: str, what: str) -> None:
    """Raise naming the part whose size is not ``want``, or the config if all of them differ."""
    if all(n == want for n in sizes):
        return
    if len(set(sizes)) == 1:
        raise ValueError(
            f"config.json does not match the weights: {source} gives {want} {what}, "
            f"but {', '.join(keys)} have {sizes[0]}"
        )
    k, n = next((k, n) for k, n in zip(keys, sizes) if n != want)
    raise ValueError(f"{k} has {n} {what}, expected {want} ({source}, as the other parts)")
