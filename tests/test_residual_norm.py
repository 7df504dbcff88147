"""residual_norm: every implementation against the float64 oracle and plain MLX.

``x_new`` is judged against the exact sum; ``normed`` against the norm of the
stored (rounded) ``x_new``, which is what the next layer of the plain model reads.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, Bad, bad_input_test, get_impl

import oracle as O

R = get_impl("reference")  # the baseline: plain MLX

SHAPES = {
    "decode": (1, 1, 5120),
    "prefill": (1, 64, 5120),
    "odd": (3, 7, 129),
    "small": (2, 5, 256),
}


def make_inputs(shape, dtype, skip=True, gain_kind="array", seed=0):
    kx, ky, ke = mx.random.split(mx.random.key(seed), 3)
    x = (4 * mx.random.normal(shape, key=kx)).astype(dtype)
    y = mx.random.normal(shape, key=ky).astype(dtype)
    gain = mx.array([0.37]) if gain_kind == "array" else 0.37
    if not skip:
        return x, y, gain, None, None
    e = mx.random.normal(shape, key=ke).astype(dtype)
    return x, y, gain, e, (mx.array([-0.21]) if gain_kind == "array" else -0.21)


def check(impl, args, dtype):
    x_new, normed = impl.residual_norm(*args)
    ref_x, ref_n = R.residual_norm(*args)
    for out in (x_new, normed):
        assert out.shape == args[0].shape and out.dtype == dtype
    O.assert_accurate(x_new, O.residual_sum(*args), dtype, baseline=ref_x, what=f"{impl} residual_norm x_new")
    # Each implementation's normed must be the norm of its own stored x_new.
    want_n, base_want = O.rms_norm(x_new), O.rms_norm(ref_x)
    err_ref = O.rel_err(ref_n, base_want)
    O.assert_accurate(normed, want_n, dtype, what=f"{impl} residual_norm normed")
    assert O.rel_err(normed, want_n) <= max(O.SLACK * err_ref, 0.25 * O.TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
def test_accuracy(impl, dtype, shape, skip):
    check(impl, make_inputs(shape, dtype, skip), dtype)


@pytest.mark.parametrize("gain_kind", ["array", "float"])
def test_gain_kinds(impl, gain_kind):
    check(impl, make_inputs((2, 3, 256), mx.bfloat16, True, gain_kind), mx.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_inputs(impl, dtype):
    x, y, g, e, sg = make_inputs((5, 3, 256), dtype)
    args = (x.transpose(1, 0, 2), y.transpose(1, 0, 2), g, e[::1].transpose(1, 0, 2), sg)
    check(impl, args, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_plain_mlx(impl, dtype):
    x, y, g, e, sg = make_inputs((2, 3, 96), dtype)
    cot = [mx.random.normal(x.shape, key=mx.random.key(7)).astype(dtype) for _ in range(2)]
    O.assert_derivatives_match(impl.residual_norm, R.residual_norm, [x, y, g, e, sg], cot, dtype)


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_float64_gains(impl):
    # Used in fp32 by every backend: exactly as the same gains in fp32 (they are fp32 values).
    x, y, g, e, sg = make_inputs((3, 256), mx.bfloat16)
    got = impl.residual_norm(x, y, g.astype(mx.float64), e, sg.astype(mx.float64))
    for a, b in zip(got, impl.residual_norm(x, y, g, e, sg)):
        assert mx.array_equal(a, b).item()


X = mx.zeros((2, 8))
G = mx.ones((1,))

test_bad_input = bad_input_test("residual_norm", [
    Bad("x not an array", ([0.0], X, G), TypeError, "[residual_norm] x must be an mx.array, got list."),
    Bad("x integer", (mx.zeros((2, 8), mx.int32), mx.zeros((2, 8), mx.int32), G), TypeError,
        "[residual_norm] x must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("y integer", (X, mx.zeros((2, 8), mx.int32), G), TypeError,
        "[residual_norm] y must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("x scalar", (mx.zeros(()), mx.zeros(()), G), ValueError,
        "[residual_norm] x must have at least 1 dimensions, got shape ().", cpp=True),
    Bad("x/y shapes", (X, mx.zeros((2, 9)), G), ValueError,
        "[residual_norm] x and y must have the same shape, got (2, 8) and (2, 9).", cpp=True),
    Bad("x/y dtypes", (X, mx.zeros((2, 8), mx.bfloat16), G), TypeError,
        "[residual_norm] x and y must have the same dtype, got mlx.core.float32 and mlx.core.bfloat16.", cpp=True),
    Bad("gain shape", (X, X, mx.ones((2,))), ValueError, "[residual_norm] gain must have shape (1,), got (2,).", cpp=True),
    Bad("gain 2-D", (X, X, mx.ones((1, 1))), ValueError, "[residual_norm] gain must have shape (1,), got (1, 1).", cpp=True),
    Bad("gain integer", (X, X, mx.ones((1,), mx.int32)), TypeError,
        "[residual_norm] gain must have a floating dtype, got mlx.core.int32.", cpp=True),
    Bad("gain str", (X, X, "1"), TypeError, "[residual_norm] gain must be a float or an mx.array of shape (1,), got str."),
    Bad("gain bool", (X, X, True), TypeError, "[residual_norm] gain must be a float or an mx.array of shape (1,), got bool."),
    Bad("skip without skip_gain", (X, X, G, X), ValueError, "[residual_norm] skip and skip_gain must be given together.", cpp=True),
    Bad("skip_gain without skip", (X, X, G, None, G), ValueError,
        "[residual_norm] skip and skip_gain must be given together.", cpp=True),
    Bad("skip not an array", (X, X, G, [0.0], G), TypeError, "[residual_norm] skip must be an mx.array, got list."),
    Bad("skip integer", (X, X, G, mx.zeros((2, 8), mx.int32), G), TypeError,
        "[residual_norm] skip must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("skip shape", (X, X, G, mx.zeros((3, 8)), G), ValueError,
        "[residual_norm] skip must have the shape of x (2, 8), got (3, 8).", cpp=True),
    Bad("skip dtype", (X, X, G, mx.zeros((2, 8), mx.float16), G), TypeError,
        "[residual_norm] skip must have the dtype of x (mlx.core.float32), got mlx.core.float16.", cpp=True),
    Bad("skip_gain 2-D", (X, X, G, X, mx.ones((1, 1))), ValueError,
        "[residual_norm] skip_gain must have shape (1,), got (1, 1).", cpp=True),
    Bad("skip_gain str", (X, X, G, X, "0.5"), TypeError,
        "[residual_norm] skip_gain must be a float or an mx.array of shape (1,), got str."),
    Bad("eps negative", (X, X, G), ValueError, "[residual_norm] eps must be positive, got -1.0.", {"eps": -1.0}, cpp=True),
])


def _randomized(data, rows, D, dtype, name):
    seed = data.draw(st.integers(0, 2**16))
    args = list(make_inputs((rows, D), dtype, data.draw(st.booleans()), seed=seed))
    args[2] = data.draw(st.floats(-2.0, 2.0, allow_nan=False, width=32))
    check(get_impl(name), tuple(args), dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 9), st.integers(1, 6000), st.sampled_from(DTYPES))
def test_randomized_native(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4), st.integers(1, 3000), st.sampled_from(DTYPES))
def test_randomized_metal(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "metal")
