"""rope: every implementation against the float64 oracle and plain MLX."""

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
@pytest.mark.parametrize("shape", ROPE_SHAPES.values(), ids=ROPE_SHAPES.keys())
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
    O.assert_derivatives_match(lambda x: impl.rope(x, offset), lambda x: R.rope(x, offset), [x], cot, dtype)


@pytest.mark.parametrize("offset", OFFSETS_ACCEPTED.values(), ids=OFFSETS_ACCEPTED.keys())
@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_offsets_accepted(impl, offset):
    x = make_x((2, 3, 4, 64), mx.float32)
    assert mx.array_equal(impl.rope(x, offset), impl.rope(x, as_int32(offset))).item()


X = mx.zeros((2, 3, 4, 8))
OFFSET_RANGE = "[rope] positions offset + l must fit in int32 (offset {}, L = 4)."
WIDE_OFFSET = "[rope] offset array must be int32 (as mlx-lm's caches hold it), got mlx.core.{}: its values may not fit in int32."

test_bad_input = bad_input_test("rope", [
    Bad("x not an array", (np.zeros((2, 3, 4, 8), np.float32),), TypeError, "[rope] x must be an mx.array, got ndarray."),
    Bad("x integer", (mx.zeros((2, 3, 4, 8), mx.int32),), TypeError,
        "[rope] x must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("x not 4-D", (mx.zeros((2, 3, 8)),), ValueError, "[rope] x must have shape (B, H, L, D), got (2, 3, 8).", cpp=True),
    Bad("odd head_dim", (mx.zeros((2, 3, 4, 7)),), ValueError,
        "[rope] head_dim must be even and positive, got 7 (x shape (2, 3, 4, 7)).", cpp=True),
    Bad("head_dim 0", (mx.zeros((2, 3, 4, 0)), 3), ValueError,
        "[rope] head_dim must be even and positive, got 0 (x shape (2, 3, 4, 0)).", cpp=True),
    Bad("offset float", (X, 1.5), TypeError, "[rope] offset must be an int or an integer mx.array, got float."),
    Bad("offset bool", (X, True), TypeError, "[rope] offset must be an int or an integer mx.array, got bool."),
    Bad("offset str", (X, "3"), TypeError, "[rope] offset must be an int or an integer mx.array, got str."),
    Bad("offset numpy array", (X, np.array([1, 2], np.int32)), TypeError,
        "[rope] offset must be an int or an integer mx.array, got ndarray."),
    Bad("offset 2^31", (X, 2**31), ValueError, OFFSET_RANGE.format(2**31)),
    Bad("offset below int32", (X, -(2**31) - 1), ValueError, OFFSET_RANGE.format(-(2**31) - 1)),
    Bad("last position 2^31", (X, 2**31 - 3), ValueError, OFFSET_RANGE.format(2**31 - 3)),
    Bad("numpy offset 2^40", (X, np.int64(2**40)), ValueError, OFFSET_RANGE.format(2**40)),
    Bad("offset array int64", (X, mx.array([1, 2], mx.int64)), ValueError, WIDE_OFFSET.format("int64"), cpp=True),
    Bad("offset array uint32", (X, mx.array([1, 2], mx.uint32)), ValueError, WIDE_OFFSET.format("uint32"), cpp=True),
    Bad("offset array uint64", (X, mx.array(1, mx.uint64)), ValueError, WIDE_OFFSET.format("uint64"), cpp=True),
    Bad("offset array float", (X, mx.array([1.0, 2.0])), TypeError,
        "[rope] offset array must have an integer dtype, got mlx.core.float32.", cpp=True),
    Bad("offset array bool", (X, mx.array([True, False])), TypeError,
        "[rope] offset array must have an integer dtype, got mlx.core.bool.", cpp=True),
    Bad("offset array length", (X, mx.array([1, 2, 3])), ValueError,
        "[rope] offset array must have shape () or (B,) = (2,), got (3,).", cpp=True),
    Bad("offset array 2-D", (X, mx.zeros((2, 1), mx.int32)), ValueError,
        "[rope] offset array must have shape () or (B,) = (2,), got (2, 1).", cpp=True),
    Bad("base negative", (X,), ValueError, "[rope] base must be positive, got -1.0.", {"base": -1.0}, cpp=True),
    Bad("base zero", (X,), ValueError, "[rope] base must be positive, got 0.", {"base": 0}),
    Bad("base None", (X,), TypeError, "[rope] base must be a float, got NoneType.", {"base": None}),
])


def _randomized(data, B, H, L, D, dtype, name):
    offset = data.draw(st.integers(-3000, 100_000))
    if data.draw(st.booleans()):
        offset = mx.array(data.draw(st.lists(st.integers(-3000, 100_000), min_size=B, max_size=B)))
    x = make_x((B, H, L, D), dtype, data.draw(st.booleans()), seed=data.draw(st.integers(0, 2**16)))
    check(get_impl(name), x, offset, dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 3), st.integers(1, 6), st.integers(1, 40), st.sampled_from([2, 64, 128]), st.sampled_from(DTYPES))
def test_randomized_native(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 3), st.integers(1, 4), st.integers(1, 12), st.sampled_from([64, 128]), st.sampled_from(DTYPES))
def test_randomized_metal(data, B, H, L, D, dtype):
    _randomized(data, B, H, L, D, dtype, "metal")
