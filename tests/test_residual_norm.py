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
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, Impl, get_impl

import oracle as O
from talkie_kernels import reference as R

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
    _, got = mx.vjp(lambda *a: impl.residual_norm(*a), [x, y, g, e, sg], cot)
    _, want = mx.vjp(lambda *a: R.residual_norm(*a), [x, y, g, e, sg], cot)
    for a, b in zip(got, want):
        np.testing.assert_allclose(O.to64(a), O.to64(b), rtol=O.TOL[dtype] * 10, atol=O.TOL[dtype] * 10 * max(1.0, float(np.abs(O.to64(b)).max())))


BAD = [
    ("shape mismatch", lambda: (mx.zeros((2, 8)), mx.zeros((2, 9)), 1.0), ValueError, "same shape"),
    ("dtype mismatch", lambda: (mx.zeros((2, 8)), mx.zeros((2, 8), mx.float16), 1.0), TypeError, "dtype"),
    ("integer dtype", lambda: (mx.zeros((2, 8), mx.int32), mx.zeros((2, 8), mx.int32), 1.0), TypeError, "float"),
    ("skip shape", lambda: (mx.zeros((2, 8)), mx.zeros((2, 8)), 1.0, mx.zeros((1, 8)), 1.0), ValueError, "skip"),
    ("skip without gain", lambda: (mx.zeros((2, 8)), mx.zeros((2, 8)), 1.0, mx.zeros((2, 8))), ValueError, "skip_gain"),
    ("gain shape", lambda: (mx.zeros((2, 8)), mx.zeros((2, 8)), mx.ones((2,))), ValueError, "gain"),
    ("gain type", lambda: (mx.zeros((2, 8)), mx.zeros((2, 8)), "1"), TypeError, "gain"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("which", ALL_IMPLS)
def test_bad_input(which, case):
    _, make, exc, words = case
    with pytest.raises(exc, match=rf"\[residual_norm\].*{words}"):
        mx.eval(get_impl(which).residual_norm(*make()))


def _randomized(data, rows, D, dtype, name):
    seed = data.draw(st.integers(0, 2**16))
    args = list(make_inputs((rows, D), dtype, data.draw(st.booleans()), seed=seed))
    args[2] = data.draw(st.floats(-2.0, 2.0, allow_nan=False, width=32))
    check(Impl(name), tuple(args), dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 9), st.integers(1, 6000), st.sampled_from(DTYPES))
def test_randomized_native(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4), st.integers(1, 3000), st.sampled_from(DTYPES))
def test_randomized_metal(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "metal")
