"""rms_norm: every implementation against the float64 oracle and plain MLX."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import DTYPE_IDS, DTYPES, Bad, bad_input_test, get_impl

import oracle as O

R = get_impl("reference")  # the baseline: plain MLX

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
    O.assert_derivatives_match(impl.rms_norm, R.rms_norm, [x], cot, dtype)


X = mx.zeros((2, 8))

test_bad_input = bad_input_test("rms_norm", [
    Bad("x not an array", ([1.0, 2.0],), TypeError, "[rms_norm] x must be an mx.array, got list."),
    Bad("x integer", (mx.zeros((2, 8), mx.int32),), TypeError,
        "[rms_norm] x must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("x float64", (mx.zeros((2, 8), mx.float64),), TypeError,
        "[rms_norm] x must be float32, float16 or bfloat16, got mlx.core.float64.", cpp=True),
    Bad("x scalar", (mx.array(1.0),), ValueError, "[rms_norm] x must have at least 1 dimensions, got shape ().", cpp=True),
    Bad("eps zero", (X, 0.0), ValueError, "[rms_norm] eps must be positive, got 0.0.", cpp=True),
    Bad("eps negative", (X,), ValueError, "[rms_norm] eps must be positive, got -1e-05.", {"eps": -1e-5}, cpp=True),
    Bad("eps nan", (X, float("nan")), ValueError, "[rms_norm] eps must be positive, got nan.", cpp=True),
    Bad("eps str", (X, "1e-5"), TypeError, "[rms_norm] eps must be a float or None, got str."),
    Bad("eps bool", (X, True), TypeError, "[rms_norm] eps must be a float or None, got bool."),
])


def _randomized(data, rows, D, dtype, name):
    scale = data.draw(st.sampled_from([1e-3, 1.0, 100.0]))
    x = (scale * mx.random.normal((rows, D), key=mx.random.key(data.draw(st.integers(0, 2**16))))).astype(dtype)
    check(get_impl(name), x, dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 9), st.integers(1, 6000), st.sampled_from(DTYPES))
def test_randomized_native(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4), st.integers(1, 3000), st.sampled_from(DTYPES))
def test_randomized_metal(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "metal")
