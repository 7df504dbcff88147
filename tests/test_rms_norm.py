"""rms_norm: every implementation against the float64 oracle and plain MLX."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, Impl, get_impl

import oracle as O
from talkie_kernels import reference as R

SHAPES = {
    "decode": (1, 1, 5120),
    "prefill": (1, 64, 5120),
    "head": (1, 40, 1, 128),
    "odd": (3, 7, 129),
    "tiny": (5, 1),
    "long_row": (2, 12289),
}


def check(impl, x, dtype, eps=None):
    got = impl.rms_norm(x, eps)
    assert got.shape == x.shape and got.dtype == dtype
    want = O.rms_norm(x, O.EPS if eps is None else eps)
    O.assert_accurate(got, want, dtype, baseline=R.rms_norm(x, eps), what=f"{impl} rms_norm")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_accuracy(impl, dtype, shape):
    x = (4 * mx.random.normal(shape, key=mx.random.key(1))).astype(dtype)
    check(impl, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transposed_and_sliced(impl, dtype):
    x = mx.random.normal((33, 4, 256), key=mx.random.key(2)).astype(dtype)
    check(impl, x.transpose(1, 0, 2), dtype)
    check(impl, x[::2, :, :], dtype)


def test_custom_eps_and_zero_rows(impl):
    x = mx.zeros((2, 128))
    check(impl, x + mx.random.normal((2, 128)) * 1e-3, mx.float32, eps=1e-5)
    np.testing.assert_array_equal(np.array(impl.rms_norm(x)), 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_plain_mlx(impl, dtype):
    x = mx.random.normal((3, 5, 96), key=mx.random.key(4)).astype(dtype)
    cot = [mx.random.normal(x.shape, key=mx.random.key(5)).astype(dtype)]
    _, got = mx.vjp(lambda x: impl.rms_norm(x), [x], cot)
    _, want = mx.vjp(lambda x: R.rms_norm(x), [x], cot)
    np.testing.assert_allclose(O.to64(got[0]), O.to64(want[0]), rtol=O.TOL[dtype] * 10, atol=O.TOL[dtype] * 10)


BAD = [
    ("integer dtype", lambda: (mx.zeros((2, 8), mx.int32),), TypeError, "float"),
    ("scalar", lambda: (mx.array(1.0),), ValueError, "dimension"),
    ("non-positive eps", lambda: (mx.zeros((2, 8)), -1.0), ValueError, "eps"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("which", ALL_IMPLS)
def test_bad_input(which, case):
    _, make, exc, words = case
    with pytest.raises(exc, match=rf"\[rms_norm\].*{words}"):
        mx.eval(get_impl(which).rms_norm(*make()))


def _randomized(data, rows, D, dtype, name):
    scale = data.draw(st.sampled_from([1e-3, 1.0, 100.0]))
    x = (scale * mx.random.normal((rows, D), key=mx.random.key(data.draw(st.integers(0, 2**16))))).astype(dtype)
    check(Impl(name), x, dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 9), st.integers(1, 6000), st.sampled_from(DTYPES))
def test_randomized_native(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4), st.integers(1, 3000), st.sampled_from(DTYPES))
def test_randomized_metal(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "metal")
