"""Talkie composed from the fused ops: a drop-in for mlx-lm's ``models/talkie.py``.

Same math as mlx-lm's plain model, fewer graph nodes per token. Per block:

1. ``qkv = normed @ W_qkvᵀ`` — one projection (attn_query/key/value rows
   concatenated at ``sanitize``), viewed as (B, 3H, L, D) and split into q, k, v
   without copies.
2. ``q, k = rope_qk_norm(q, k, head_g, cache.offset)`` — RoPE, QK-norm and the
   head gain in one op, on the strided views.
3. mlx-lm's KV cache (any kind ``make_prompt_cache`` builds, its buffer views
   read in place) and ``attention``: ``tk.scaled_dot_product_attention``, or
   ``tk.quantized_scaled_dot_product_attention`` for a ``QuantizedKVCache``
   (native on the CPU, MLX's fused attention and mlx-lm's composition on the
   GPU), then ``attn_resid``.
4. ``x, normed = residual_norm(x, attn, attn_gain)``.
5. ``gate, lin = split(normed @ W_gate_linearᵀ)`` — one projection;
   ``mlp = mlp_resid(swiglu(gate, lin))``, ``swiglu = silu(gate) · lin`` in one op
   on the two halves, read in place.
6. ``x, normed = residual_norm(x, mlp, mlp_gain, e_x, embed_skip)``: ``normed`` is
   the next block's attention input and, after the last block, the final norm.

``h = rms_norm(embed[ids])``, ``e_x = h``; ``logits = lm_head(normed)`` with
``lm_head_gain`` folded into ``lm_head.weight`` at ``sanitize``, so ``lm_head``
is an ``nn.Linear`` that ``mlx_lm.convert -q`` quantizes like any other.

Every projection, ``lm_head`` included, is a ``Linear`` / ``QuantizedLinear``
below: mlx's layers whose forward is ``talkie_kernels.linear`` (the native
kernels on the CPU, MLX's own matmuls elsewhere).

Attribute names are checkpoint keys; the fused ones are ``attn.attn_qkv`` and
``mlp.mlp_gate_linear``, which a saved fused model reloads as is. ``sanitize``
maps other checkpoints' keys onto them (``talkie_kernels.checkpoint_keys``).
Across processes, ``Model.shard`` splits the model by heads (its check in
``models/tensor_parallel.py``) and ``TalkieModel.pipeline`` by blocks
(``models/pipeline.py``'s ``PipelineMixin``), as mlx-lm's models do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace
from mlx_lm.models.base import (
    BaseModelArgs,
    create_attention_mask,
    scaled_dot_product_attention,
)

import talkie_kernels as tk
from talkie_kernels import checkpoint_keys, kv_cache
from talkie_kernels._checks import ATTENTION_BITS

from .pipeline import PipelineMixin
from .tensor_parallel import check_tensor_parallel, model_layers


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "talkie"
    hidden_size: int = 5120
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    head_dim: int = 128
    intermediate_size: int = 13696
    vocab_size: int = 65540
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 2048
    # fp32 machine epsilon: Talkie's F.rms_norm reduces in fp32 without an eps.
    rms_norm_eps: float = 1.1920928955078125e-07

    def __post_init__(self):
        # Every field is checked here, so a bad config.json is one message naming
        # the field (not a TypeError in the first layer built from it, a "math
        # domain error", or a failure at the first forward pass).
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"config.json: {name} must be a positive integer, got {value!r}")
        if self.head_dim % 2:
            raise ValueError(f"config.json: head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"config.json: {name} must be a finite number, got {value!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"config.json: rope_theta must be > 0, got {self.rope_theta}")
        # mlx-lm's plain model runs a config's rms_norm_eps of 0 (mx.fast.rms_norm
        # takes it); the fused ops take a positive eps: the smallest fp32 one,
        # which leaves the norm of every row that is not all zeros as it was.
        if self.rms_norm_eps == 0:
            self.rms_norm_eps = TINY_EPS
        elif not self.rms_norm_eps > 0:
            raise ValueError(f"config.json: rms_norm_eps must be >= 0, got {self.rms_norm_eps}")


#: The config.json fields that are sizes: positive integers.
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
               "intermediate_size", "vocab_size", "max_position_embeddings")


#: The smallest positive fp32 (subnormal): a zero eps for the fused ops.
TINY_EPS = 1.401298464324817e-45

class Linear(nn.Linear):
    """``nn.Linear`` whose product is ``tk.linear``: the native kernel on the CPU.

    A subclass, so mlx-lm's LoRA/DoRA layers and ``isinstance`` checks treat it
    as the plain layer; same parameters, so checkpoints load unchanged.
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = tk.linear(x, self["weight"])
        return y + self["bias"] if "bias" in self else y

    def to_quantized(self, group_size=None, bits=None, mode="affine", quantize_input=False):
        # nn.quantize (mlx-lm's load_model and quantize_model) calls this: the
        # quantized layer keeps going through tk.linear. Quantized activations
        # (nn.QQLinear) have no tk.linear counterpart: mlx's own layer.
        if quantize_input:
            return super().to_quantized(group_size, bits, mode, quantize_input)
        return QuantizedLinear.from_linear(self, group_size, bits, mode)


class QuantizedLinear(nn.QuantizedLinear):
    """``nn.QuantizedLinear`` whose product is ``tk.linear``.

    ``from_linear`` (inherited) builds this class. Affine 4/6/8 bits run natively
    on the CPU; other modes and bits reach ``mx.quantized_matmul`` through
    ``tk.linear`` all the same.
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = tk.linear(
            x,
            self["weight"],
            self["scales"],
            self.get("biases"),
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )
        return y + self["bias"] if "bias" in self else y


class HeadGain(nn.Module):
    def __init__(self, n_head: int):
        super().__init__()
        self.head_g = mx.ones((n_head,))


class ActGain(nn.Module):
    """A learned scalar gain; the fused ops take ``a_g`` directly."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.a_g = mx.full((1,), init_value)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.head_dim = args.head_dim
        self.scale = self.head_dim**-0.5
        self.eps = args.rms_norm_eps
        self.rope_theta = args.rope_theta
        proj_dim = self.n_heads * self.head_dim
        self.attn_qkv = Linear(dim, 3 * proj_dim, bias=False)
        self.attn_resid = Linear(proj_dim, dim, bias=False)
        self.head_gain = HeadGain(self.n_heads)
        # Set by Model.shard: attn_resid's output is then this rank's partial sum.
        self.tp_group: Optional[mx.distributed.Group] = None

    def __call__(self, x: mx.array, B: int, L: int, mask=None, cache=None) -> mx.array:
        """``x`` (B·L, dim) -> (B·L, dim)."""
        # (B·L, 3·H·D) -> (B, 3H, L, D): a view; q, k, v are strided slices of it.
        qkv = self.attn_qkv(x).reshape(B, L, 3 * self.n_heads, self.head_dim)
        queries, keys, values = mx.split(qkv.transpose(0, 2, 1, 3), 3, axis=1)

        # An int for KVCache, an mx.array of shape (B,) for BatchKVCache: passed
        # through as is (never converted to a Python int).
        offset = cache.offset if cache is not None else 0
        queries, keys = tk.rope_qk_norm(
            queries, keys, self.head_gain.head_g, offset, base=self.rope_theta, eps=self.eps
        )

        if cache is not None:
            keys, values = kv_cache.update_and_fetch(cache, keys, values)

        output = attention(queries, keys, values, cache, self.scale, mask)
        if L == 1:
            # (B, H, 1, D) has the memory layout of (B, 1, H, D): no transpose needed.
            output = output.reshape(B, -1)
        else:
            output = output.transpose(0, 2, 1, 3).reshape(B * L, -1)
        out = self.attn_resid(output)
        return out if self.tp_group is None else mx.distributed.all_sum(out, group=self.tp_group)


def attention(queries, keys, values, cache, scale: float, mask):
    """mlx-lm's ``scaled_dot_product_attention`` on the talkie_kernels ops.

    A ``QuantizedKVCache`` (it has ``bits``) hands over K/V as ``mx.quantize``
    triples: the quantized op for kv_bits 4 and 8, mlx-lm's own composition
    for other bits. ``mask`` is what mlx-lm made: None, "causal" or an array.
    """
    bits = getattr(cache, "bits", None)
    if bits is None:
        return tk.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    if bits not in ATTENTION_BITS:
        return scaled_dot_product_attention(queries, keys, values, cache=cache, scale=scale, mask=mask)
    return tk.quantized_scaled_dot_product_attention(
        queries, keys, values, scale=scale, mask=mask, group_size=cache.group_size, bits=bits
    )


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim, hidden_dim = args.hidden_size, args.intermediate_size
        self.mlp_gate_linear = Linear(dim, 2 * hidden_dim, bias=False)
        self.mlp_resid = Linear(hidden_dim, dim, bias=False)
        self.tp_group: Optional[mx.distributed.Group] = None  # as Attention's

    def __call__(self, x: mx.array) -> mx.array:
        gate, lin = mx.split(self.mlp_gate_linear(x), 2, axis=-1)
        out = self.mlp_resid(tk.swiglu(gate, lin))
        return out if self.tp_group is None else mx.distributed.all_sum(out, group=self.tp_group)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        gain_init = (2 * args.num_hidden_layers) ** -0.5
        self.eps = args.rms_norm_eps
        self.attn = Attention(args)
        self.attn_gain = ActGain(gain_init)
        self.mlp = MLP(args)
        self.mlp_gain = ActGain(gain_init)
        self.embed_skip = ActGain(0.0)

    def __call__(self, x, normed, e_x, B, L, mask=None, cache=None):
        """``x`` the residual stream, ``normed = rms_norm(x)``, all (B·L, dim) -> (x, rms_norm(x))."""
        attn = self.attn(normed, B, L, mask, cache)
        x, attn = promote(x, attn)
        x, normed = tk.residual_norm(x, attn, self.attn_gain.a_g, eps=self.eps)
        mlp = self.mlp(normed)
        x, mlp, e_x = promote(x, mlp, e_x)
        return tk.residual_norm(
            x, mlp, self.mlp_gain.a_g, e_x, self.embed_skip.a_g, eps=self.eps
        )


class TalkieModel(PipelineMixin, nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.eps = args.rms_norm_eps
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.blocks = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, inputs, cache=None, input_embeddings=None) -> mx.array:
        """The final norm of the residual stream, (B, L, dim)."""
        out = self.hidden(inputs, cache, input_embeddings)
        return out.reshape(*out_shape(inputs, input_embeddings), -1)

    def hidden(self, inputs, cache=None, input_embeddings=None) -> mx.array:
        """As ``__call__`` but flat: (B·L, dim).

        The residual stream stays 2-D through the blocks, so every projection is
        a plain (B·L, in) @ (in, out) matmul: a 3-D input would add a Flatten and
        an Unflatten node per projection.
        """
        h = input_embeddings if input_embeddings is not None else self.embed(inputs)
        B, L, _ = h.shape
        kv_cache.wait_for_previous_step(cache, L)
        mask = create_attention_mask(h, cache[0] if cache is not None else None)
        h = tk.rms_norm(h.reshape(B * L, -1), self.eps)
        e_x = h
        # The plain model norms h again before the first block; so do we (one
        # node per token), to stay bit-close to it.
        normed = tk.rms_norm(h, self.eps)

        blocks = self.pipeline_layers
        if cache is None:
            cache = [None] * len(blocks)
        x = h
        if self.pipeline_group is not None:
            x, normed = self.pipeline_recv(x, normed)
        for block, c in zip(blocks, cache):
            x, normed = block(x, normed, e_x, B, L, mask, c)
        if self.pipeline_group is not None:
            normed = self.pipeline_send(x, normed, cache)
        return normed


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = TalkieModel(args)
        # lm_head_gain is folded into this weight by sanitize.
        self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs, cache=None, input_embeddings=None) -> mx.array:
        logits = self.lm_head(self.model.hidden(inputs, cache, input_embeddings))
        return logits.reshape(*out_shape(inputs, input_embeddings), -1)

    def sanitize(self, weights: dict) -> dict:
        """HF or mlx-lm checkpoint keys -> this model's (``checkpoint_keys.sanitize``:
        parts fused, ``lm_head_gain`` folded, ``ValueError`` naming a bad key);
        a pipeline stage keeps only its own blocks' weights."""
        return checkpoint_keys.sanitize(weights, self.args, self.model.stage_blocks)

    def shard(self, group: Optional[mx.distributed.Group] = None) -> None:
        """Tensor parallel over ``group``: split every block's heads and MLP, in place.

        The fused projections are split per segment (the rows of each of q, k,
        v, and of each of gate, linear, by rank), ``attn_resid`` / ``mlp_resid``
        by input columns with an ``all_sum`` of their partial outputs,
        ``head_gain`` with its heads; the embedding and ``lm_head`` stay whole.
        The layers stay this module's ``Linear`` / ``QuantizedLinear`` (their
        arrays are sliced in place). Everything is checked first
        (``ValueError``, nothing changed). The slices are lazy: on a lazily
        loaded model, evaluating one reads its full array once and keeps only
        the rank's part.
        """
        group = group or mx.distributed.init()
        n = group.size()
        if n == 1:
            return
        check_tensor_parallel(n, self.args.num_attention_heads, self.args.intermediate_size, model_layers(self))
        for block in self.model.blocks:
            if block is None:
                continue
            attn, mlp = block.attn, block.mlp
            shard_inplace(attn.attn_qkv, "all-to-sharded", segments=3, group=group)
            shard_inplace(attn.head_gain, "all-to-sharded", group=group)
            shard_inplace(attn.attn_resid, "sharded-to-all", group=group)
            attn.n_heads //= n
            attn.tp_group = group
            shard_inplace(mlp.mlp_gate_linear, "all-to-sharded", segments=2, group=group)
            shard_inplace(mlp.mlp_resid, "sharded-to-all", group=group)
            mlp.tp_group = group

    @property
    def layers(self):
        return self.model.pipeline_layers


def promote(*arrays: mx.array) -> list:
    """The arrays in the dtype the plain model's sums would have (no-ops when alike).

    A checkpoint may mix dtypes (an fp32 projection or embedding in a bf16
    model): the plain model's ``x + gain(y)`` then promotes the residual stream,
    while the fused ops take operands of one dtype.
    """
    dtype = mx.result_type(*arrays)
    return [a if a.dtype == dtype else a.astype(dtype) for a in arrays]


def out_shape(inputs, input_embeddings) -> tuple:
    """(B, L) of a forward pass."""
    return (inputs if input_embeddings is None else input_embeddings).shape[:2]
