"""rope_qk_norm: every implementation against the float64 oracle and plain MLX."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, OFFSET_KINDS, Impl, get_impl, make_offset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle as O
from talkie_kernels import reference as R

# (B, H, L, D): decode, prefill, odd sizes, head_dim 64.
SHAPES = {
    "decode": (1, 40, 1, 128),
    "prefill": (1, 4, 512, 128),
    "odd": (3, 5, 7, 128),
    "hd64": (2, 3, 9, 64),
}


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
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
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

    _, got = mx.vjp(f(impl.rope_qk_norm), [q, k, g], cot)
    _, want = mx.vjp(f(R.rope_qk_norm), [q, k, g], cot)
    for a, b in zip(got, want):
        np.testing.assert_allclose(O.to64(a), O.to64(b), rtol=O.TOL[dtype] * 10, atol=O.TOL[dtype] * 10)


BAD = [
    ("odd head_dim", lambda: (mx.zeros((1, 2, 3, 7)), mx.zeros((1, 2, 3, 7)), mx.ones(2), 0), ValueError, "even"),
    ("q/k shape mismatch", lambda: (mx.zeros((1, 2, 3, 8)), mx.zeros((1, 2, 4, 8)), mx.ones(2), 0), ValueError, "same shape"),
    ("head_gain length", lambda: (mx.zeros((1, 2, 3, 8)), mx.zeros((1, 2, 3, 8)), mx.ones(3), 0), ValueError, "head_gain"),
    ("integer dtype", lambda: (mx.zeros((1, 2, 3, 8), mx.int32), mx.zeros((1, 2, 3, 8), mx.int32), mx.ones(2), 0), TypeError, "float"),
    ("not 4-D", lambda: (mx.zeros((2, 3, 8)), mx.zeros((2, 3, 8)), mx.ones(2), 0), ValueError, "B, H, L, D"),
    ("offset wrong length", lambda: (mx.zeros((2, 2, 3, 8)), mx.zeros((2, 2, 3, 8)), mx.ones(2), mx.array([1, 2, 3])), ValueError, "offset"),
    ("offset float dtype", lambda: (mx.zeros((2, 2, 3, 8)), mx.zeros((2, 2, 3, 8)), mx.ones(2), mx.array([1.0, 2.0])), TypeError, "offset"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("which", ALL_IMPLS)
def test_bad_input(which, case):
    _, make, exc, words = case
    with pytest.raises(exc, match=rf"\[rope_qk_norm\].*{words}"):
        mx.eval(get_impl(which).rope_qk_norm(*make()))


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
    check(Impl(name), q, k, g, offset, dtype)
