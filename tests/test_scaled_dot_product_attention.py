"""scaled_dot_product_attention (and its quantized-K/V variant) against the float64 oracle.

The accuracy rule for every case: the relative error against
``oracle.attention`` is within ``oracle.TOL`` of the output dtype and no
worse than MLX's own op on the same inputs (``oracle.assert_accurate``):
``mx.fast.scaled_dot_product_attention`` for dense K/V, mlx-lm's
``quantized_scaled_dot_product_attention`` for quantized ones (the oracle then
dequantizes K and V in float64). Attention on the GPU is MLX's own op, so the
backends under test are the native one (and the public dispatcher, which is
native on this CPU).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import DTYPE_IDS, DTYPES, Bad, bad_input_test, get_impl

import oracle as O
import talkie_kernels as tk

OP = "scaled_dot_product_attention"
QOP = "quantized_scaled_dot_product_attention"

#: (B, Hq, Hkv, L, S, D): decode (L = 1..7, one and several pieces of keys),
#: prefill (several query tiles), a prefill chunk after the first (L < S),
#: grouped heads (Hq = 4·Hkv), S = 1, a head_dim that is no multiple of 16.
CASES = {
    "decode": (1, 4, 4, 1, 300, 128),
    "decode_gqa": (2, 8, 2, 1, 517, 64),
    "decode_L3": (1, 4, 4, 3, 33, 128),
    "decode_L7_gqa": (1, 8, 2, 7, 260, 64),
    "S1": (1, 4, 4, 1, 1, 64),
    "prefill": (1, 4, 4, 70, 70, 128),
    "prefill_gqa": (1, 8, 2, 45, 45, 64),
    "chunk": (2, 4, 4, 33, 100, 64),
    "odd_D": (1, 2, 1, 9, 13, 24),
}
MASKS = ("none", "causal", "bool", "additive")


def rand(shape, dtype=mx.float32, seed=0, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


def inputs(case, dtype, seed=0, Dv=None):
    B, Hq, Hkv, L, S, D = case
    q = rand((B, Hq, L, D), dtype, seed)
    k = rand((B, Hkv, S, D), dtype, seed + 1)
    v = rand((B, Hkv, S, Dv or D), dtype, seed + 2)
    return q, k, v


def make_mask(kind, B, Hq, L, S, dtype, seed=3):
    """None, "causal", a (B, 1, L, S) bool mask (as BatchKVCache's, with a
    fully masked row), or a (Hq, L, S) additive one."""
    if kind == "none":
        return None
    if kind == "causal":
        return "causal"
    if kind == "bool":
        keep = mx.random.uniform(shape=(B, 1, L, S), key=mx.random.key(seed)) > 0.3
        return mx.concatenate([mx.zeros((B, 1, 1, S), mx.bool_), keep[:, :, 1:]], axis=2) if L > 1 else keep
    return rand((Hq, L, S), dtype, seed, 2.0)


def check(impl, q, k, v, mask, scale=None, what=""):
    """One dense case: shape and dtype as MLX's op, accuracy by the rule."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    got = impl.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    base = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    what = f"{impl} {what} q{tuple(q.shape)} k{tuple(k.shape)} {q.dtype} mask={mask if isinstance(mask, str) else None if mask is None else mask.dtype}"
    assert got.shape == base.shape and got.dtype == base.dtype, what
    O.assert_accurate(got, O.attention(q, k, v, scale, mask), got.dtype, base, what,
                      conditioning=O.attention_conditioning(q, k, scale))
    return got


# ---- accuracy sweeps ------------------------------------------------------------------


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_accuracy(native, case, dtype, mask):
    q, k, v = inputs(case, dtype)
    B, Hq, _, L, S, _ = case
    check(native, q, k, v, make_mask(mask, B, Hq, L, S, dtype), what=mask)


def test_public_dispatch_and_value_dim(native):
    # The dispatcher runs the native op on the CPU; v may have its own head_dim.
    q, k, v = inputs((1, 4, 2, 5, 40, 64), mx.bfloat16, Dv=32)
    check(get_impl("public"), q, k, v, "causal", what="public Dv=32")
    check(native, q, k, v, None, what="Dv=32")


def test_past_the_trained_context(native):
    # 4097 and 8192 cached positions (decode), and an 8192-key prefill chunk.
    for case, mask in (((1, 2, 2, 1, 4097, 64), None), ((1, 1, 1, 1, 8192, 32), None), ((1, 2, 1, 16, 8192, 32), "causal")):
        q, k, v = inputs(case, mx.bfloat16, seed=case[4])
        check(native, q, k, v, mask, what=f"S={case[4]}")


def test_fp32_mask_promotes_and_scale(native):
    # An fp32 additive mask with fp32 q; a scale other than D^-1/2; large scores.
    q, k, v = inputs((1, 2, 2, 4, 50, 64), mx.float32)
    check(native, q, k, v, rand((4, 50), mx.float32, 9), scale=0.7, what="scale 0.7")
    check(native, rand((1, 2, 1, 64), mx.float32, 5, 30.0), k, v, None, what="large scores")


# ---- mlx-lm's cache views are read in place -----------------------------------------


def test_cache_views_read_in_place(native):
    # KVCache returns keys[..., :offset, :] of a buffer grown in steps of 256;
    # the model's q is a transposed view of its (B, L, 3H, D) projection.
    B, H, D = 2, 4, 64
    for L, S in ((1, 300), (20, 277)):
        buf = rand((B, H, 512, D), mx.bfloat16, 1)
        vbuf = rand((B, H, 512, D), mx.bfloat16, 2)
        k, v = buf[..., :S, :], vbuf[..., :S, :]
        q = rand((B, L, 3 * H, D), mx.bfloat16, 3).transpose(0, 2, 1, 3)[:, :H]
        mx.eval(q, k, v)
        before = tk.native.ops.contiguous_copies()
        check(native, q, k, v, "causal" if L > 1 else None, what="views")
        assert tk.native.ops.contiguous_copies() == before, "a cache view was copied"
    # A last axis that is not contiguous is gathered (and counted).
    kt = rand((1, 2, 64, 30), mx.float32, 4).swapaxes(-1, -2)
    before = tk.native.ops.contiguous_copies()
    check(native, rand((1, 2, 3, 64)), kt, kt, None, what="transposed k")
    assert tk.native.ops.contiguous_copies() > before


# ---- quantized K/V ----------------------------------------------------------------------

Q_CASES = {k: CASES[k] for k in ("decode", "decode_gqa", "decode_L7_gqa", "prefill", "chunk")}


def quantized_check(impl, q, kv, mask, group_size, bits, what=""):
    (k, v) = kv
    qk = mx.quantize(k, group_size=group_size, bits=bits)
    qv = mx.quantize(v, group_size=group_size, bits=bits)
    scale = q.shape[-1] ** -0.5
    kw = dict(scale=scale, mask=mask, group_size=group_size, bits=bits)
    got = impl.quantized_scaled_dot_product_attention(q, qk, qv, **kw)
    base = tk.reference.quantized_scaled_dot_product_attention(q, qk, qv, **kw)
    what = f"{impl} quantized {what} q{tuple(q.shape)} bits={bits} gs={group_size} {q.dtype}"
    assert got.shape == base.shape and got.dtype == base.dtype, what
    want = O.attention(
        q, O.dequantize_rows(*qk, group_size, bits), O.dequantize_rows(*qv, group_size, bits), scale, mask
    )
    O.assert_accurate(got, want, got.dtype, base, what)
    return got


#: Every group size mx.quantize takes that divides the case's head_dim.
Q_PARAMS = [(name, gs) for name, c in Q_CASES.items() for gs in (32, 64, 128) if c[5] % gs == 0]


@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name, group_size", Q_PARAMS, ids=[f"{n}-gs{g}" for n, g in Q_PARAMS])
def test_quantized(native, name, group_size, dtype, bits):
    case = Q_CASES[name]
    q, k, v = inputs(case, dtype)
    B, Hq, _, L, S, _ = case
    for mask in ("none", "causal", "bool"):
        quantized_check(native, q, (k, v), make_mask(mask, B, Hq, L, S, dtype), group_size, bits, mask)


def test_quantized_views_in_place(native):
    # QuantizedKVCache returns each of (codes, scales, biases) as [..., :offset, :] views.
    B, H, D, S = 1, 4, 128, 300
    full = [mx.quantize(rand((B, H, 512, D), mx.bfloat16, s), group_size=64, bits=4) for s in (1, 2)]
    qk, qv = ([a[..., :S, :] for a in t] for t in full)
    q = rand((B, H, 1, D), mx.bfloat16)
    mx.eval(qk, qv, q)
    before = tk.native.ops.contiguous_copies()
    kw = dict(scale=D**-0.5, mask=None, group_size=64, bits=4)
    got = native.quantized_scaled_dot_product_attention(q, qk, qv, **kw)
    base = tk.reference.quantized_scaled_dot_product_attention(q, qk, qv, **kw)
    want = O.attention(q, O.dequantize_rows(*qk, 64, 4), O.dequantize_rows(*qv, 64, 4), D**-0.5)
    O.assert_accurate(got, want, got.dtype, base, "quantized views")
    assert tk.native.ops.contiguous_copies() == before


# ---- gradients: the reference's, through the fallback ---------------------------------


@pytest.mark.parametrize("mask", ("none", "causal", "bool"))
@pytest.mark.parametrize("case", [CASES["decode_gqa"], CASES["prefill_gqa"]], ids=["decode", "prefill"])
def test_gradients(native, case, mask):
    q, k, v = inputs(case, mx.float32)
    B, Hq, _, L, S, D = case
    m = make_mask(mask, B, Hq, L, S, mx.float32)
    fn = lambda q, k, v: [native.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask=m)]  # noqa: E731
    ref = lambda q, k, v: [mx.fast.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask=m)]  # noqa: E731
    ct = [rand((B, Hq, L, D), mx.float32, 7)]
    O.assert_derivatives_match(fn, ref, [q, k, v], ct, mx.float32)


def test_quantized_gradient(native):
    B, Hq, _, L, S, D = CASES["prefill_gqa"]
    q, k, v = inputs(CASES["prefill_gqa"], mx.float32)
    qk, qv = mx.quantize(k, group_size=64, bits=8), mx.quantize(v, group_size=64, bits=8)
    kw = dict(scale=D**-0.5, mask="causal", group_size=64, bits=8)
    fn = lambda q: [native.quantized_scaled_dot_product_attention(q, qk, qv, **kw)]  # noqa: E731
    ref = lambda q: [tk.reference.quantized_scaled_dot_product_attention(q, qk, qv, **kw)]  # noqa: E731
    O.assert_derivatives_match(fn, ref, [q], [rand((B, Hq, L, D), mx.float32, 7)], mx.float32)


# ---- every instruction set and thread count ---------------------------------------------


def test_isa_and_threads(native, isa, restore_threads):
    # Each ISA's kernels by the accuracy rule; one thread and two give the
    # same bits (pieces of keys depend on S only; prefill tiles on L only).
    N = tk.native.ops
    for name in ("decode_gqa", "decode_L7_gqa", "prefill", "chunk", "odd_D"):
        case = CASES[name]
        for dtype, mask in ((mx.bfloat16, "causal"), (mx.float16, "bool"), (mx.float32, "additive")):
            q, k, v = inputs(case, dtype, seed=len(name))
            m = make_mask(mask, case[0], case[1], case[3], case[4], dtype)
            N.set_num_threads(2)
            two = check(native, q, k, v, m, what=f"isa={isa} {name}")
            N.set_num_threads(1)
            one = native.scaled_dot_product_attention(q, k, v, scale=case[5] ** -0.5, mask=m)
            assert mx.array_equal(one, two).item(), f"isa={isa} {name} {dtype}: 1 thread != 2 threads"
        for bits in (4, 8):
            q, k, v = inputs(case if case[5] % 32 == 0 else CASES["decode"], mx.bfloat16)
            N.set_num_threads(2)
            two = quantized_check(native, q, (k, v), None, 32, bits, f"isa={isa} {name}")
            N.set_num_threads(1)
            one = quantized_check(native, q, (k, v), None, 32, bits, f"isa={isa} {name}")
            assert mx.array_equal(one, two).item(), f"isa={isa} {name} q{bits}: 1 thread != 2 threads"


# ---- bad input ---------------------------------------------------------------------------

Q4 = mx.zeros((1, 2, 1, 64))
K4 = mx.zeros((1, 2, 5, 64))
QK = mx.quantize(mx.zeros((1, 2, 5, 64)), group_size=64, bits=4)

test_bad_input = bad_input_test(OP, [
    Bad("q not an array", (Q4.tolist(), K4, K4), TypeError,
        f"[{OP}] q must be an mx.array, got list.", {"scale": 1.0}),
    Bad("k integer", (Q4, K4.astype(mx.int32), K4), TypeError,
        f"[{OP}] k must be float32, float16 or bfloat16, got mlx.core.int32.", {"scale": 1.0}, cpp=True),
    Bad("q 3-D", (Q4[0], K4, K4), ValueError,
        f"[{OP}] q must have 4 dimensions (B, H, L, D), got shape (2, 1, 64).", {"scale": 1.0}, cpp=True),
    Bad("v length", (Q4, K4, K4[:, :, :4]), ValueError,
        f"[{OP}] k and v must have the same (B, Hkv, S), got k (1, 2, 5, 64) and v (1, 2, 4, 64).",
        {"scale": 1.0}, cpp=True),
    Bad("head_dim mismatch", (Q4[..., :32], K4, K4), ValueError,
        f"[{OP}] q (B, Hq, L, D) and k (B, Hkv, S, D) must agree on B and D, got q (1, 2, 1, 32) and B = 1, D = 64.",
        {"scale": 1.0}, cpp=True),
    Bad("heads not a multiple", (mx.zeros((1, 3, 1, 64)), K4, K4), ValueError,
        f"[{OP}] q's heads Hq = 3 must be a multiple of the kv heads Hkv = 2.", {"scale": 1.0}, cpp=True),
    Bad("scale string", (Q4, K4, K4), TypeError, f"[{OP}] scale must be a float, got str.", {"scale": "1"}),
    Bad("scale nan", (Q4, K4, K4), ValueError, f"[{OP}] scale must be a finite float, got nan.",
        {"scale": float("nan")}, cpp=True),
    Bad("mask string", (Q4, K4, K4), ValueError,
        f"[{OP}] mask must be None, 'causal' or an mx.array, got 'upper'.", {"scale": 1.0, "mask": "upper"}),
    Bad("mask list", (Q4, K4, K4), TypeError,
        f"[{OP}] mask must be None, 'causal' or an mx.array, got list.", {"scale": 1.0, "mask": [True]}),
    Bad("mask integer", (Q4, K4, K4), TypeError, f"[{OP}] mask must be bool or floating, got mlx.core.int32.",
        {"scale": 1.0, "mask": mx.zeros((1, 5), mx.int32)}, cpp=True),
    Bad("mask wider than q", (Q4.astype(mx.bfloat16), K4.astype(mx.bfloat16), K4.astype(mx.bfloat16)), ValueError,
        f"[{OP}] a float mask must not be wider than the output dtype mlx.core.bfloat16, got mlx.core.float32.",
        {"scale": 1.0, "mask": mx.zeros((1, 5))}, cpp=True),
    Bad("mask shape", (Q4, K4, K4), ValueError,
        f"[{OP}] mask of shape (1, 4) does not broadcast to (B, Hq, L, S) = (1, 2, 1, 5).",
        {"scale": 1.0, "mask": mx.zeros((1, 4), mx.bool_)}, cpp=True),
    Bad("mask 5-D", (Q4, K4, K4), ValueError,
        f"[{OP}] mask of shape (1, 1, 1, 1, 5) does not broadcast to (B, Hq, L, S) = (1, 2, 1, 5).",
        {"scale": 1.0, "mask": mx.zeros((1, 1, 1, 1, 5), mx.bool_)}, cpp=True),
])

test_bad_quantized_input = bad_input_test(QOP, [
    Bad("q_keys not a triple", (Q4, QK[:2], QK), TypeError,
        f"[{QOP}] q_keys must be mx.quantize's (codes, scales, biases), got list.", {"scale": 1.0, "bits": 4}),
    Bad("bits 6", (Q4, QK, QK), ValueError, f"[{QOP}] bits must be 4 or 8, got 6.", {"scale": 1.0, "bits": 6},
        cpp=True),
    Bad("group_size 16", (Q4, QK, QK), ValueError, f"[{QOP}] group_size must be 32, 64 or 128, got 16.",
        {"scale": 1.0, "bits": 4, "group_size": 16}, cpp=True),
    Bad("float codes", (Q4, (QK[0].astype(mx.float32), *QK[1:]), QK), TypeError,
        f"[{QOP}] q_keys[0] must be uint32 (as mx.quantize packs it), got mlx.core.float32.",
        {"scale": 1.0, "bits": 4}, cpp=True),
    Bad("bits vs codes", (Q4, QK, QK), ValueError,
        f"[{QOP}] q_keys holds rows of 32 elements, not a multiple of group_size 64.",
        {"scale": 1.0, "bits": 8, "group_size": 64}, cpp=True),
    Bad("scales shape", (Q4, (QK[0], QK[1][:, :1], QK[2]), QK), ValueError,
        f"[{QOP}] q_keys[1] must have shape (1, 2, 5, 1) (B, Hkv, S, D/group_size), got (1, 1, 5, 1).",
        {"scale": 1.0, "bits": 4}, cpp=True),
    Bad("values length", (Q4, QK, tuple(a[:, :, :3] for a in QK)), ValueError,
        f"[{QOP}] q_keys and q_values must have the same (B, Hkv, S), got (1, 2, 5, 8) and (1, 2, 3, 8).",
        {"scale": 1.0, "bits": 4}, cpp=True),
    Bad("head_dim mismatch", (Q4[..., :32], QK, QK), ValueError,
        f"[{QOP}] q (B, Hq, L, D) and k (B, Hkv, S, D) must agree on B and D, got q (1, 2, 1, 32) and B = 1, D = 64.",
        {"scale": 1.0, "bits": 4}, cpp=True),
    Bad("mask shape", (Q4, QK, QK), ValueError,
        f"[{QOP}] mask of shape (3,) does not broadcast to (B, Hq, L, S) = (1, 2, 1, 5).",
        {"scale": 1.0, "bits": 4, "mask": mx.zeros((3,), mx.bool_)}, cpp=True),
])


# ---- randomized ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    Hkv=st.integers(1, 3),
    G=st.sampled_from([1, 2, 4]),
    L=st.integers(1, 40),
    S=st.integers(1, 600),
    D=st.sampled_from([16, 32, 64, 80, 128]),
    dtype=st.sampled_from(DTYPES),
    mask=st.sampled_from(MASKS),
)
def test_randomized(data, Hkv, G, L, S, D, dtype, mask):
    native = get_impl("native")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    B = data.draw(st.integers(1, 2), label="B")
    spread = data.draw(st.sampled_from([0.1, 1.0, 8.0]), label="q scale")
    q, k, v = inputs((B, G * Hkv, Hkv, L, S, D), dtype, seed)
    q = (q.astype(mx.float32) * spread).astype(dtype)
    if data.draw(st.booleans(), label="cache view"):
        pad = rand((B, Hkv, 256, D), dtype, seed + 5)
        k = mx.concatenate([k, pad], axis=2)[:, :, :S]
        v = mx.concatenate([v, pad], axis=2)[:, :, :S]
    check(native, q, k, v, make_mask(mask, B, G * Hkv, L, S, dtype, seed), what="randomized")
