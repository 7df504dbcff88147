"""rope: every implementation against the float64 oracle and plain MLX."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, OFFSET_KINDS, Impl, get_impl, make_offset

import oracle as O
from talkie_kernels import reference as R

SHAPES = {
    "decode": (1, 40, 1, 128),
    "prefill": (1, 4, 512, 128),
    "odd": (3, 5, 7, 128),
    "hd64": (2, 3, 9, 64),
    "hd2": (2, 1, 3, 2),
}


def make_x(shape, dtype, transposed=False, seed=0):
    B, H, L, D = shape
    if transposed:  # a (B, L, H, D) projection viewed as (B, H, L, D)
        return mx.random.normal((B, L, H, D), key=mx.random.key(seed)).astype(dtype).transpose(0, 2, 1, 3)
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def check(impl, x, offset, dtype, base=1e6):
    got = impl.rope(x, offset, base=base)
    assert got.shape == x.shape and got.dtype == dtype
    O.assert_accurate(got, O.rope(x, offset, base), dtype, baseline=R.rope(x, offset, base=base), what=f"{impl} rope")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("offset_kind", OFFSET_KINDS)
def test_accuracy(impl, dtype, shape, offset_kind):
    check(impl, make_x(shape, dtype), make_offset(offset_kind, shape[0]), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transposed_view(impl, dtype):
    check(impl, make_x((2, 4, 17, 128), dtype, transposed=True), make_offset("per_seq", 2), dtype)


def test_other_base(impl):
    check(impl, make_x((1, 2, 9, 64), mx.float32), 11, mx.float32, base=10000.0)


def test_zero_offset_position_zero_is_identity(impl):
    x = make_x((1, 2, 1, 128), mx.float32)
    np.testing.assert_array_equal(np.array(impl.rope(x, 0)), np.array(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_plain_mlx(impl, dtype):
    x = make_x((2, 3, 5, 64), dtype, transposed=True)
    offset = mx.array([3, -2])
    cot = [mx.random.normal(x.shape, key=mx.random.key(3)).astype(dtype)]
    _, got = mx.vjp(lambda x: impl.rope(x, offset), [x], cot)
    _, want = mx.vjp(lambda x: R.rope(x, offset), [x], cot)
    np.testing.assert_allclose(O.to64(got[0]), O.to64(want[0]), rtol=O.TOL[dtype] * 10, atol=O.TOL[dtype] * 10)


BAD = [
    ("odd head_dim", lambda: (mx.zeros((1, 2, 3, 7)), 0), ValueError, "even"),
    ("integer dtype", lambda: (mx.zeros((1, 2, 3, 8), mx.int32), 0), TypeError, "float"),
    ("not 4-D", lambda: (mx.zeros((2, 3, 8)), 0), ValueError, "B, H, L, D"),
    ("offset wrong length", lambda: (mx.zeros((2, 2, 3, 8)), mx.array([1, 2, 3])), ValueError, "offset"),
    ("offset 2-D", lambda: (mx.zeros((2, 2, 3, 8)), mx.array([[1, 2]])), ValueError, "offset"),
    ("offset float", lambda: (mx.zeros((2, 2, 3, 8)), 1.5), TypeError, "offset"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("which", ALL_IMPLS)
def test_bad_input(which, case):
    _, make, exc, words = case
    with pytest.raises(exc, match=rf"\[rope\].*{words}"):
        mx.eval(get_impl(which).rope(*make()))


def _randomized(data, B, H, L, D, dtype, name):
    offset = data.draw(st.integers(-3000, 100_000))
    if data.draw(st.booleans()):
        offset = mx.array(data.draw(st.lists(st.integers(-3000, 100_000), min_size=B, max_size=B)))
    x = make_x((B, H, L, D), dtype, data.draw(st.booleans()), seed=data.draw(st.integers(0, 2**16)))
    check(Impl(name), x, offset, dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 3), st.integers(1, 6), st.integers(1, 40), st.sampled_from([2, 64, 128]), st.sampled_from(DTYPES))
def test_randomized_native(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 3), st.integers(1, 4), st.integers(1, 12), st.sampled_from([64, 128]), st.sampled_from(DTYPES))
def test_randomized_metal(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "metal")
