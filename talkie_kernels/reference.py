"""Plain-MLX reference ops, composed exactly as mlx-lm 0.32.2's ``models/talkie.py``.

These are the baseline every fused implementation is measured against (speed)
and compared with (accuracy, gradients). Each intermediate is rounded to the
input dtype, as in the plain model; the fused kernels round once.

Each op is a public function (arguments checked and normalized by
``_checks.<op>_args``, as for every backend) over an unchecked ``_<op>`` that
the dispatcher in ``talkie_kernels/__init__.py`` calls with checked arguments.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from . import _checks as C


def _rms_norm(x, eps):
    return mx.fast.rms_norm(x, None, eps)


def rms_norm(x: mx.array, eps: float | None = None) -> mx.array:
    """Weightless RMSNorm over the last axis.

    1. ``y = x / sqrt(mean(x², axis=-1) + eps)`` reduced in fp32, cast to ``x.dtype``.
    """
    return _rms_norm(*C.rms_norm_args(x, eps))


def _inverse_freqs(head_dim: int, base: float) -> mx.array:
    # mx.fast.rope takes periods (angle = pos / freqs); negating them turns the
    # standard rotate-half rotation into Talkie's inverse rotation.
    return -(base ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim))


def _rope(x, offset, base):
    return mx.fast.rope(
        x,
        dims=x.shape[-1],
        traditional=False,
        base=None,
        scale=1.0,
        offset=offset,
        freqs=_inverse_freqs(x.shape[-1], base),
    )


def rope(x: mx.array, offset=0, *, base: float = 1e6) -> mx.array:
    """Talkie's inverse-rotation RoPE (rotate-half layout).

    Shapes: x (B, H, L, D), D even; offset int, () or (B,) -> (B, H, L, D).

    1. ``pos = offset[b] + l``; ``θ_i = pos · base^(-2i/D)`` for i < D/2.
    2. ``x1, x2 = x[..., :D/2], x[..., D/2:]``.
    3. ``y1 = x1·cos θ + x2·sin θ``; ``y2 = −x1·sin θ + x2·cos θ``.
    """
    return _rope(*C.rope_args(x, offset, base))


def _rope_qk_norm(q, k, head_gain, offset, base, eps):
    q = mx.fast.rms_norm(_rope(q, offset, base), None, eps)
    k = mx.fast.rms_norm(_rope(k, offset, base), None, eps)
    q = q * head_gain.astype(q.dtype).reshape(1, -1, 1, 1)
    return q, k


def rope_qk_norm(q, k, head_gain, offset=0, *, base: float = 1e6, eps=None):
    """RoPE, then weightless RMSNorm over D on q and k, then the per-head gain on q.

    Shapes: q, k (B, H, L, D); head_gain (H,); offset int, () or (B,) -> (q, k).

    1. ``q, k = rope(q), rope(k)`` (rounded to the input dtype).
    2. ``q, k = rms_norm(q), rms_norm(k)`` (fp32 reduction, rounded).
    3. ``q = q · head_gain[h]`` (in the input dtype).
    """
    return _rope_qk_norm(*C.rope_qk_norm_args(q, k, head_gain, offset, base, eps))


def _residual_norm(x, y, gain, skip, skip_gain, eps):
    x_new = x + gain.astype(x.dtype) * y
    if skip is not None:
        x_new = x_new + skip_gain.astype(x.dtype) * skip
    return x_new, mx.fast.rms_norm(x_new, None, eps)


def residual_norm(x, y, gain, skip=None, skip_gain=None, *, eps=None):
    """Gated residual add (plus optional gated skip), then the next weightless RMSNorm.

    Shapes: x, y, skip (..., D); gain, skip_gain (1,) or float -> (x_new, normed).

    1. ``x_new = x + gain·y`` (rounded to the input dtype).
    2. If skip: ``x_new = x_new + skip_gain·skip`` (rounded again).
    3. ``normed = rms_norm(x_new)`` (fp32 reduction of the stored x_new).
    """
    return _residual_norm(*C.residual_norm_args(x, y, gain, skip, skip_gain, eps))


def _swiglu(gate, x):
    return nn.silu(gate) * x


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """The gated activation of Talkie's MLP (mlx-lm's ``silu(mlp_gate(x)) · mlp_linear(x)``).

    Shapes: gate, x (..., D), one dtype -> (..., D).

    1. ``s = sigmoid(gate)``, then ``silu = gate · s`` (each rounded to the input dtype).
    2. ``out = silu · x`` (rounded again).
    """
    return _swiglu(*C.swiglu_args(gate, x))


def _linear(x, weight, scales, biases, group_size, bits, mode):
    if scales is None:
        return x @ weight.T
    try:
        return mx.quantized_matmul(
            x, weight, scales, biases, transpose=True, group_size=group_size, bits=bits, mode=mode
        )
    except ValueError as e:  # MLX checks the other modes: same type, our prefix
        raise ValueError(f"[linear] {e}") from None


def linear(x, weight, scales=None, biases=None, *, group_size=None, bits=None, mode="affine"):
    """``x @ weight.T`` for a dense or MLX-quantized weight, in plain MLX.

    Shapes: x (..., K); weight (N, K) float, or (N, K·bits/32) uint32 with
    scales, biases (N, K/group_size) -> (..., N).

    1. Dense: ``mx.matmul(x, weight.T)``; dtype ``promote(x, weight)``.
    2. Quantized: ``mx.quantized_matmul(x, weight, scales, biases,
       transpose=True, ...)``, i.e. ``w = scales·q + biases`` per group;
       dtype ``promote(x, scales, biases)``.
    """
    return _linear(*C.linear_args(x, weight, scales, biases, group_size, bits, mode))


def _scaled_dot_product_attention(q, k, v, scale, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def scaled_dot_product_attention(q, k, v, *, scale, mask=None):
    """MLX's own attention, ``mx.fast.scaled_dot_product_attention``.

    Shapes: q (B, Hq, L, D); k (B, Hkv, S, D), v (B, Hkv, S, Dv), Hq a
    multiple of Hkv -> (B, Hq, L, Dv) in ``promote(q, k, v)``; mask None,
    ``"causal"`` (aligned to the bottom right when L < S) or a bool (keep) /
    float (added) array broadcastable to (B, Hq, L, S).

    1. ``s = scale·q·kᵀ`` per query head h against kv head ``h // (Hq/Hkv)``.
    2. Masked scores become the dtype's lowest value (bool), or get the mask added.
    3. ``out = softmax(s)·v``.
    """
    return _scaled_dot_product_attention(*C.scaled_dot_product_attention_args(q, k, v, scale, mask))


def _quantized_scaled_dot_product_attention(q, q_keys, q_values, scale, mask, group_size, bits):
    from mlx_lm.models.base import quantized_scaled_dot_product_attention

    # mlx-lm scales `queries` in place (`*=`): it gets its own array object.
    return quantized_scaled_dot_product_attention(
        q.astype(q.dtype),
        q_keys,
        q_values,
        scale=scale,
        mask=mask,
        group_size=group_size,
        bits=bits,
    )


def quantized_scaled_dot_product_attention(q, q_keys, q_values, *, scale, mask=None, group_size=64, bits=8):
    """mlx-lm's ``quantized_scaled_dot_product_attention`` (``QuantizedKVCache``'s attention).

    K and V are ``mx.quantize`` triples ``(codes, scales, biases)`` of
    (B, Hkv, S, D) arrays quantized along D; bits 4 or 8.

    1. ``s = quantized_matmul(scale·q, K)`` (dequantized ``scales·codes + biases``).
    2. The mask as in ``scaled_dot_product_attention``.
    3. ``out = quantized_matmul(softmax(s), V)``; dtype ``promote(q, scales, biases)``.
    """
    return _quantized_scaled_dot_product_attention(
        *C.quantized_scaled_dot_product_attention_args(q, q_keys, q_values, scale, mask, group_size, bits)
    )
