"""rope_qk_norm: every implementation against the float64 oracle and plain MLX."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, OFFSET_KINDS, OFFSETS_ACCEPTED, Bad, as_int32, bad_input_test
from impls import ROPE_SHAPES, get_impl, make_offset

import oracle as O

R = get_impl("reference")  # the baseline: plain MLX


def make_inputs(shape, dtype, layout="contiguous", seed=0):
    """q, k in (B, H, L, D), as contiguous arrays or as views of a projection."""
    B, H, L, D = shape
    key = mx.random.key(seed)
    kq, kk, kg = mx.random.split(key, 3)
    if layout == "contiguous":
        q = mx.random.normal(shape, key=kq).astype(dtype)
        k = (3 * mx.random.normal(shape, key=kk)).astype(dtype)
    elif layout == "transposed":  # (B, L, H, D) projections viewed as (B, H, L, D)
        q = mx.random.normal((B, L, H, D), key=kq).astype(dtype).transpose(0, 2, 1, 3)
        k = (3 * mx.random.normal((B, L, H, D), key=kk)).astype(dtype).transpose(0, 2, 1, 3)
    else:  # "qkv": slices of a fused (B, L, 3, H, D) projection
        qkv = mx.random.normal((B, L, 3, H, D), key=kq).astype(dtype)
        q, k = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(2))
    head_gain = mx.random.uniform(0.5, 2.0, (H,), key=kg)
    return q, k, head_gain


def check(impl, q, k, g, offset, dtype):
    got_q, got_k = impl.rope_qk_norm(q, k, g, offset)
    ref_q, ref_k = R.rope_qk_norm(q, k, g, offset)
    want_q, want_k = O.rope_qk_norm(q, k, g, offset)
    for name, got, ref, want in (("q", got_q, ref_q, want_q), ("k", got_k, ref_k, want_k)):
        assert got.shape == q.shape and got.dtype == dtype, (got.shape, got.dtype)
        O.assert_accurate(got, want, dtype, baseline=ref, what=f"{impl} rope_qk_norm {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", ROPE_SHAPES.values(), ids=ROPE_SHAPES.keys())
@pytest.mark.parametrize("offset_kind", OFFSET_KINDS)
def test_accuracy(impl, dtype, shape, offset_kind):
    q, k, g = make_inputs(shape, dtype)
    check(impl, q, k, g, make_offset(offset_kind, shape[0]), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["transposed", "qkv"])
def test_strided_views(impl, dtype, layout):
    shape = (2, 4, 33, 128)
    q, k, g = make_inputs(shape, dtype, layout)
    check(impl, q, k, g, make_offset("per_seq", 2), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_plain_mlx(impl, dtype):
    q, k, g = make_inputs((2, 3, 5, 64), dtype, "transposed")
    offset = mx.array([3, -2])
    cot = [mx.random.normal(q.shape, key=mx.random.key(9)).astype(dtype)] * 2

    def f(fn):
        return lambda q, k, g: fn(q, k, g, offset)

    O.assert_derivatives_match(f(impl.rope_qk_norm), f(R.rope_qk_norm), [q, k, g], cot, dtype)


@pytest.mark.parametrize("offset", OFFSETS_ACCEPTED.values(), ids=OFFSETS_ACCEPTED.keys())
@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_offsets_accepted(impl, offset):
    q, k, g = make_inputs((2, 3, 4, 64), mx.float32)
    for got, want in zip(impl.rope_qk_norm(q, k, g, offset), impl.rope_qk_norm(q, k, g, as_int32(offset))):
        assert mx.array_equal(got, want).item()




@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_float64_head_gain(impl):
    # Exactly as the same gains in fp32 (they are fp32 values).
    q, k, g = make_inputs((2, 3, 5, 64), mx.bfloat16)
    got = impl.rope_qk_norm(q, k, g.astype(mx.float64), 7)
    for a, b in zip(got, impl.rope_qk_norm(q, k, g, 7)):
        assert mx.array_equal(a, b).item()


Q = mx.zeros((2, 3, 4, 8))
G = mx.ones(3)

test_bad_input = bad_input_test("rope_qk_norm", [
    Bad("q not an array", ([0.0], Q, G), TypeError, "[rope_qk_norm] q must be an mx.array, got list."),
    Bad("k not an array", (Q, None, G), TypeError, "[rope_qk_norm] k must be an mx.array, got NoneType."),
    Bad("q integer", (mx.zeros((2, 3, 4, 8), mx.int32), mx.zeros((2, 3, 4, 8), mx.int32), G), TypeError,
        "[rope_qk_norm] q must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("k integer", (Q, mx.zeros((2, 3, 4, 8), mx.int32), G), TypeError,
        "[rope_qk_norm] k must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("not 4-D", (mx.zeros((2, 3, 8)), mx.zeros((2, 3, 8)), G), ValueError,
        "[rope_qk_norm] q must have shape (B, H, L, D), got (2, 3, 8).", cpp=True),
    Bad("odd head_dim", (mx.zeros((2, 3, 4, 5)), mx.zeros((2, 3, 4, 5)), G), ValueError,
        "[rope_qk_norm] head_dim must be even and positive, got 5 (q shape (2, 3, 4, 5)).", cpp=True),
    Bad("head_dim 0", (mx.zeros((2, 3, 4, 0)), mx.zeros((2, 3, 4, 0)), G), ValueError,
        "[rope_qk_norm] head_dim must be even and positive, got 0 (q shape (2, 3, 4, 0)).", cpp=True),
    Bad("q/k shapes", (Q, mx.zeros((2, 3, 5, 8)), G), ValueError,
        "[rope_qk_norm] q and k must have the same shape, got (2, 3, 4, 8) and (2, 3, 5, 8).", cpp=True),
    Bad("q/k dtypes", (Q, mx.zeros((2, 3, 4, 8), mx.float16), G), TypeError,
        "[rope_qk_norm] q and k must have the same dtype, got mlx.core.float32 and mlx.core.float16.", cpp=True),
    Bad("head_gain length", (Q, Q, mx.ones(4)), ValueError,
        "[rope_qk_norm] head_gain must have shape (H,) = (3,), got (4,).", cpp=True),
    Bad("head_gain scalar", (Q, Q, mx.array(1.0)), ValueError,
        "[rope_qk_norm] head_gain must have shape (H,) = (3,), got ().", cpp=True),
    Bad("head_gain integer", (Q, Q, mx.ones(3, mx.int32)), TypeError,
        "[rope_qk_norm] head_gain must have a floating dtype, got mlx.core.int32.", cpp=True),
    Bad("head_gain list", (Q, Q, [1.0, 1.0, 1.0]), TypeError,
        "[rope_qk_norm] head_gain must be an mx.array of shape (H,), got list."),
    Bad("head_gain float", (Q, Q, 1.0), TypeError, "[rope_qk_norm] head_gain must be an mx.array of shape (H,), got float."),
    Bad("offset array length", (Q, Q, G, mx.array([1, 2, 3])), ValueError,
        "[rope_qk_norm] offset array must have shape () or (B,) = (2,), got (3,).", cpp=True),
    Bad("offset array float", (Q, Q, G, mx.array([1.0, 2.0])), TypeError,
        "[rope_qk_norm] offset array must have an integer dtype, got mlx.core.float32.", cpp=True),
    Bad("offset array int64", (Q, Q, G, mx.array([1, 2], mx.int64)), ValueError,
        "[rope_qk_norm] offset array must be int32 (as mlx-lm's caches hold it), got mlx.core.int64: "
        "its values may not fit in int32.", cpp=True),
    Bad("last position 2^31", (Q, Q, G, 2**31 - 3), ValueError,
        "[rope_qk_norm] positions offset + l must fit in int32 (offset 2147483645, L = 4)."),
    Bad("numpy offset 2^63", (Q, Q, G, np.uint64(2**63)), ValueError,
        "[rope_qk_norm] positions offset + l must fit in int32 (offset 9223372036854775808, L = 4)."),
    Bad("base negative", (Q, Q, G), ValueError, "[rope_qk_norm] base must be positive, got -2.0.", {"base": -2.0}, cpp=True),
    Bad("eps zero", (Q, Q, G), ValueError, "[rope_qk_norm] eps must be positive, got 0.0.", {"eps": 0.0}, cpp=True),
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    B=st.integers(1, 3),
    H=st.integers(1, 6),
    L=st.integers(1, 40),
    D=st.sampled_from([64, 128]),
    dtype=st.sampled_from(DTYPES),
)
def test_randomized_native(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    B=st.integers(1, 3),
    H=st.integers(1, 6),
    L=st.integers(1, 12),
    D=st.sampled_from([64, 128]),
    dtype=st.sampled_from(DTYPES),
)
def test_randomized_metal(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "metal")


def _randomized(data, B, H, L, D, dtype, name):
    kind = data.draw(st.sampled_from(["int", "array0d", "per_seq"]))
    lo, hi = -3000, 100_000
    if kind == "int":
        offset = data.draw(st.integers(lo, hi))
    elif kind == "array0d":
        offset = mx.array(data.draw(st.integers(lo, hi)))
    else:
        offset = mx.array(data.draw(st.lists(st.integers(lo, hi), min_size=B, max_size=B)))
    layout = data.draw(st.sampled_from(["contiguous", "transposed", "qkv"]))
    q, k, g = make_inputs((B, H, L, D), dtype, layout, seed=data.draw(st.integers(0, 2**16)))
    check(get_impl(name), q, k, g, offset, dtype)
