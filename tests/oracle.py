"""The float64 NumPy oracle, the one tolerance table and the tests' named bounds.

Every implementation (reference, native, Metal-through-the-emulator) is judged
here: its relative error ``max|got − oracle| / max|oracle|`` (``rel_err``) must
be within ``TOL[dtype]`` and no worse than plain MLX's on the same inputs (with
slack). The whole-model tests bound the same ``rel_err`` between two runs of a
model by the named constants below the table. The tests import all of these
from this file; there is no second copy.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

EPS = 1.1920928955078125e-07

#: Relative error bound against the oracle, per dtype.
TOL = {mx.float32: 3e-6, mx.float16: 2e-3, mx.bfloat16: 1.6e-2}
#: How much worse than plain MLX an implementation may be on the same inputs.
SLACK = 1.5

# Whole models (test_model, test_adapters, test_distributed, test_loader_errors,
# test_cli): bounds on ``rel_err`` between the logits of two runs of the same
# weights (tiny random checkpoints of 2 and 8 blocks). "Measured" is the worst
# case over those tests with mlx 0.32.4 on x86-64.

#: fp32: the fused model against mlx-lm's plain one, or against another fp32
#: route to the same weights (MLX's own matmuls, the dequantized weights, an
#: adapter fused in, a 4-bit model split over ranks; and the LoRA training
#: loss). Each op differs by a few fp32 roundings (TOL[fp32] bounds one op),
#: compounded over two blocks and the head: measured ≤ 1.5e-6; 1e-4 leaves
#: room for other CPUs and shapes while staying far below what changed weights
#: do to the logits (the adapters' smallest effect: 6e-2).
MODEL_FP32 = 1e-4
#: fp32: one computation whose sums run in another order or are split, the
#: same ops otherwise: prefill then decode against one pass, the model split
#: over two ranks, a gain folded into the quantized head's scales, one
#: quantized layer through ``tk.linear`` against ``nn.QuantizedLinear``.
#: Measured ≤ 1.1e-6; 10× tighter than MODEL_FP32.
REORDERED_FP32 = 1e-5
#: fp32: a checkpoint written by ``talkie_kernels.convert`` (gains folded in)
#: and loaded again, against the model loaded from the original checkpoint:
#: the same folded weights and ops (measured 0); folding the gains a second
#: time would scale the logits by them, O(1).
RESAVED_FP32 = 1e-6
#: fp32 gradients (LoRA factors; a quantized layer's scales and biases)
#: through ``tk.linear`` against MLX's own matmuls, each parameter's relative
#: to its own largest entry. Measured ≤ 1.2e-6; 10× MODEL_FP32 because a
#: gradient sums over every token with cancellation, so its relative error has
#: no bound as small as the logits'.
GRADS_FP32 = 1e-3
#: bf16 activations (bf16 and mixed-dtype checkpoints, mxfp4): against an
#: fp32 run of the same weights the fused model may be SLACK× as far as
#: mlx-lm's own model or this far, the floor for checkpoints where mlx-lm's
#: model is (nearly) exact (measured: 1.6e-3 beside mlx-lm's 0; elsewhere up to
#: 1.2e-2 beside mlx-lm's 1.6e-2); and prefill then decode against one pass
#: (measured 6.1e-3). bf16 rounds by up to 2^-9 ≈ 2e-3 per op, and two blocks
#: of rounded activations end near 1e-2.
MODEL_BF16 = 1e-2
#: bf16: the fused model against mlx-lm's plain model directly, each about
#: MODEL_BF16 from exact and rounding differently: measured 2.1e-2, so 3×
#: MODEL_BF16 (about the two errors' sum, with a margin).
MODEL_BF16_VS_PLAIN = 3e-2
#: An adapter must move mlx-lm's logits by more than this (measured ≥ 6e-2),
#: or matching mlx-lm's adapted model within MODEL_FP32 would not show that
#: the adapter was applied: 10× MODEL_FP32.
ADAPTER_EFFECT = 1e-3
#: A 4-bit checkpoint quantized again (8 bits, or 6 with a recipe) against the
#: 4-bit model: the second rounding of the 4-bit weights alone (measured 5e-3
#: at 8 bits, 3e-3 with the recipe), far below quantizing the fp32 original
#: (0.15), which is what re-quantizing the wrong weights would give.
REQUANTIZED = 2e-2
#: Not an error bound: primitive nodes of a fused decode step ÷ mlx-lm's plain
#: model's (``talkie_kernels.graph``; the bench's target for this ratio): per-op
#: overhead dominates decode on the CPU at the test sizes.
DECODE_NODES_RATIO = 0.35


def to64(a) -> np.ndarray:
    if isinstance(a, mx.array):
        return np.array(a.astype(mx.float32), dtype=np.float64)
    return np.asarray(a, dtype=np.float64)


def rms_norm(x, eps=EPS):
    x = to64(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def positions(offset, B, L):
    """(B, L) float64 positions ``offset[b] + l``."""
    off = np.asarray(np.array(offset) if isinstance(offset, mx.array) else offset, dtype=np.float64)
    off = np.broadcast_to(off.reshape(-1, 1) if off.ndim else off, (B, 1))
    return off + np.arange(L, dtype=np.float64)[None, :]


def rope(x, offset=0, base=1e6):
    x = to64(x)
    B, H, L, D = x.shape
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    theta = positions(offset, B, L)[:, None, :, None] * inv  # (B, 1, L, D/2)
    c, s = np.cos(theta), np.sin(theta)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return np.concatenate([x1 * c + x2 * s, -x1 * s + x2 * c], axis=-1)


def rope_qk_norm(q, k, head_gain, offset=0, base=1e6, eps=EPS):
    g = to64(head_gain).reshape(1, -1, 1, 1)
    return rms_norm(rope(q, offset, base), eps) * g, rms_norm(rope(k, offset, base), eps)


def residual_sum(x, y, gain, skip=None, skip_gain=None):
    out = to64(x) + to64(gain).reshape(()) * to64(y)
    if skip is not None:
        out = out + to64(skip_gain).reshape(()) * to64(skip)
    return out


def swiglu(gate, x):
    """``silu(gate) · x`` in float64: ``g / (1 + e^-g) · x``."""
    g = to64(gate)
    with np.errstate(over="ignore"):  # e^-g overflows for g < -709: silu is -0 there
        return g / (1.0 + np.exp(-g)) * to64(x)


def rel_err(got, want) -> float:
    got, want = to64(got), to64(want)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def assert_accurate(got, want, dtype, baseline=None, what="", conditioning=0.0):
    """got within TOL[dtype] of the oracle, and no worse than plain MLX's baseline.

    ``conditioning``: a relative error that every implementation in ``dtype``
    has on these inputs, whatever it does (e.g. the rounding of attention
    scores of size |s|: |s|·2^-24 in fp32 moves each softmax weight by that
    fraction); both bounds are at least this.
    """
    err = rel_err(got, want)
    tol = max(TOL[dtype], conditioning)
    msg = f"{what}: rel. error {err:.3g} vs oracle"
    if baseline is not None:
        base_err = rel_err(baseline, want)
        msg += f" (plain MLX {base_err:.3g})"
        # Plain MLX rounds several times, so it can beat us by luck on tiny
        # inputs; the absolute floor keeps that from failing a correct kernel.
        assert err <= max(SLACK * base_err, 0.25 * tol, conditioning), msg + f" > {SLACK}× plain MLX"
    assert err <= tol, msg + f" > tolerance {tol:g} for {dtype}"


def assert_derivatives_match(fn, reference, primals, cotangents, dtype):
    """``fn``'s vjp and jvp equal plain MLX's (``reference``), within 10× TOL[dtype]
    relative to the larger of 1 and the reference's magnitude; the jvp is not zero."""
    tangents = [mx.random.normal(p.shape, key=mx.random.key(100 + i)).astype(p.dtype) for i, p in enumerate(primals)]
    vjps = [mx.vjp(f, primals, cotangents)[1] for f in (fn, reference)]
    jvps = [mx.jvp(f, primals, tangents)[1] for f in (fn, reference)]
    for kind, (got, want) in (("vjp", vjps), ("jvp", jvps)):
        for i, (a, b) in enumerate(zip(got, want)):
            tol = TOL[dtype] * 10 * max(1.0, float(np.abs(to64(b)).max()))
            np.testing.assert_allclose(to64(a), to64(b), rtol=TOL[dtype] * 10, atol=tol, err_msg=f"{kind} {i}")
    assert max(float(np.abs(to64(t)).max()) for t in jvps[1]) > 0, "the reference's jvp is zero"


def unpack(weight, bits: int) -> np.ndarray:
    """MLX's packed affine codes -> (N, K) int64.

    ``mx.quantize`` writes each row as one little-endian bit stream: element k
    takes bits ``[k·bits, (k+1)·bits)`` (4 and 8 bits fill whole uint32s; 3, 5
    and 6 bits straddle bytes), which reading the uint32 words as bytes recovers.
    """
    words = np.array(weight, dtype=np.uint32)
    stream = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    N = words.shape[0]
    K = stream.shape[-1] // bits
    fields = stream[:, : K * bits].reshape(N, K, bits).astype(np.int64)
    return fields @ (1 << np.arange(bits, dtype=np.int64))


def dequantize(weight, scales, biases, group_size: int, bits: int) -> np.ndarray:
    """Affine dequantization ``w = s·q + b`` per group, in float64: (N, K)."""
    q = unpack(weight, bits).astype(np.float64)
    N, K = q.shape
    s = np.repeat(to64(scales), group_size, axis=-1)
    b = np.repeat(to64(biases), group_size, axis=-1)
    assert s.shape == (N, K), (s.shape, (N, K))
    return s * q + b


def linear(x, weight, scales=None, biases=None, group_size=64, bits=4):
    """``x @ weight.T`` in float64, the weight dequantized in float64 if quantized."""
    w = to64(weight) if scales is None else dequantize(weight, scales, biases, group_size, bits)
    return to64(x) @ w.T


def attention_conditioning(q, k, scale) -> float:
    """The relative output error fp32 rounding of the scores alone causes:
    2^-24 · max over (l, s) of scale·Σ_d |q_d|·|k_d| (a score's rounding bound,
    which shifts its softmax weight by that fraction). Large for peaked
    softmaxes (|q| 8× a unit normal's at D = 80: ~4e-6, above fp32's TOL)."""
    q, k = np.abs(to64(q)), np.abs(to64(k))
    G = q.shape[1] // k.shape[1]
    bound = scale * np.einsum("bhld,bhsd->bhls", q, np.repeat(k, G, axis=1)) if q.size and k.size else np.zeros(1)
    return float(2.0**-24 * bound.max())


def attention(q, k, v, scale, mask=None):
    """``softmax(scale·q·kᵀ + mask)·v`` in float64, with MLX's mask semantics.

    q (B, Hq, L, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv): query head h reads kv
    head ``h // (Hq/Hkv)``. ``mask``: None, ``"causal"`` (key s visible to
    query l iff ``s <= l + S - L``), a bool array (keep) or a float array
    (added), broadcastable to (B, Hq, L, S). A row with every key masked
    averages all the values, as MLX's ``where(mask, s, finfo.min)`` does.
    """
    q, k, v = to64(q), to64(k), to64(v)
    L, S = q.shape[2], k.shape[2]
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = scale * np.einsum("bhld,bhsd->bhls", q, k)
    keep = None
    if isinstance(mask, str):
        keep = np.arange(S)[None, :] <= np.arange(L)[:, None] + S - L
    elif mask is not None and mask.dtype == mx.bool_:
        keep = np.array(mask)
    elif mask is not None:
        s = s + to64(mask)
    if keep is not None:
        keep = np.broadcast_to(keep, s.shape)
        none = ~keep.any(axis=-1, keepdims=True)
        s = np.where(none, 0.0, np.where(keep, s, -np.inf))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def dequantize_rows(codes, scales, biases, group_size: int, bits: int) -> np.ndarray:
    """``dequantize`` of an (..., D) array quantized along its last axis: (..., D) float64."""
    lead = codes.shape[:-1]
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    w = dequantize(flat(codes), flat(scales), flat(biases), group_size, bits)
    return w.reshape(*lead, -1)
