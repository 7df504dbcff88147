"""swiglu: every implementation against the float64 oracle and plain MLX.

``silu(gate) · x``: the native loop computes ``g / (1 + e^-g) · x`` in fp32
(in double for fp32 outputs) and rounds once; plain MLX (``reference``) rounds ``sigmoid(g)``, ``g · sigmoid(g)``
and the product each to the dtype. The model's call passes the two halves of
one projection's output (``mx.split(y, 2, axis=-1)``): row-strided views the
native loop reads in place.
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

R = get_impl("reference")  # the baseline: plain MLX
N = get_impl("native")
X = tk.native.ops  # the extension itself: threads, instruction sets, counters

SHAPES = {
    "decode": (1, 1, 13696),
    "prefill": (1, 64, 13696),
    "odd": (3, 7, 129),
    "tiny": (5, 1),
    "long_row": (2, 12289),
}


def make_inputs(shape, dtype, seed=0, scale=4.0):
    """gate = scale·normal (4: across the sigmoid's whole range), x = normal."""
    kg, kx = mx.random.split(mx.random.key(seed))
    gate = (scale * mx.random.normal(shape, key=kg)).astype(dtype)
    x = mx.random.normal(shape, key=kx).astype(dtype)
    return gate, x


def split_inputs(shape, dtype, seed=0, scale=4.0):
    """The model's call: the two halves of one (..., 2D) projection output."""
    kg, kx = mx.random.split(mx.random.key(seed))
    y = mx.concatenate([scale * mx.random.normal(shape, key=kg), mx.random.normal(shape, key=kx)], axis=-1)
    gate, x = mx.split(y.astype(dtype), 2, axis=-1)
    mx.eval(gate, x)
    return gate, x


def same(a, b):
    """Bitwise equal arrays (same dtype and shape)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    return bool(mx.array_equal(a, b, equal_nan=True).item())


def underflow(impl, gate, x, want, dtype) -> float:
    """The relative error of the dtype's range near zero, which rounding to it
    cannot avoid: O(1) when every gate is very negative (silu(-30)·x ≈ -3e-12·x
    is 0 in fp16, whatever computes it), negligible otherwise.

    Ours rounds once, off by up to half the smallest subnormal (``h``) near
    zero. The metal backend is plain MLX's composition (compiled): its
    ``sigmoid(g) = 1 / (1 + e^-g)`` in the dtype is 0 where ``e^-g`` overflows
    it (fp16: g < -ln 65504 ≈ -11.09, where silu(g)·x is up to 1.7e-4·|x|), so
    those outputs are lost, and ``sigmoid(g)``, ``g · sigmoid(g)`` and the
    product each round by up to ``h`` (times |g·x|, |x| and 1); twice that,
    for the relative roundings on top.
    """
    f = mx.finfo(dtype)
    h = f.smallest_normal * f.eps / 2
    w = np.abs(want)
    if impl.name != "native":
        g, v = O.to64(gate), O.to64(x)
        lost = float(np.max(w, where=-g > np.log(f.max), initial=0.0))
        h = 2 * (lost + h * float(np.max(np.abs(g * v) + np.abs(v) + 1, initial=1.0)))
    return h / max(float(w.max(initial=0.0)), 1e-300)


def check(impl, gate, x, dtype, what=""):
    got = impl.swiglu(gate, x)
    assert got.shape == gate.shape and got.dtype == dtype
    want = O.swiglu(gate, x)
    O.assert_accurate(got, want, dtype, baseline=R.swiglu(gate, x), what=f"{impl} swiglu {what}",
                      conditioning=underflow(impl, gate, x, want, dtype))
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_accuracy(impl, dtype, shape):
    check(impl, *make_inputs(shape, dtype, seed=1), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_split_views(impl, dtype):
    gate, x = split_inputs((2, 9, 1000), dtype, seed=2)
    assert gate.shape == x.shape == (2, 9, 1000)
    check(impl, gate, x, dtype, "split halves")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transposed_and_sliced(impl, dtype):
    gate, x = make_inputs((33, 4, 256), dtype, seed=3)
    check(impl, gate.transpose(1, 0, 2), x.transpose(1, 0, 2), dtype, "transposed")
    check(impl, gate[:32:2], x[1::2], dtype, "sliced")
    check(impl, gate.swapaxes(-1, -2), x.swapaxes(-1, -2), dtype, "strided last axis")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_split_views_are_read_in_place(dtype):
    # The model's call copies nothing, and gives the bits of the contiguous call.
    gate, x = split_inputs((1, 64, 13696), dtype, seed=4)
    before = X.contiguous_copies()
    got = N.swiglu(gate, x)
    mx.eval(got)
    assert X.contiguous_copies() == before
    assert same(got, N.swiglu(mx.contiguous(gate), mx.contiguous(x)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_views_bitwise_equal_contiguous(dtype):
    gate, x = make_inputs((33, 4, 256), dtype, seed=5)
    row = make_inputs((1, 256), dtype, seed=6)[0]
    mx.eval(gate, x, row)
    views = {
        "transposed": (gate.transpose(1, 0, 2), x.transpose(1, 0, 2)),
        "sliced": (gate[:32:2], x[1::2]),
        "reversed": (gate[::-1], x),
        "broadcast rows": (mx.broadcast_to(row, (7, 256)), x[:7, 0]),
    }
    for what, (g, v) in views.items():
        before = X.contiguous_copies()
        got = N.swiglu(g, v)
        mx.eval(got)
        assert X.contiguous_copies() == before, what  # row-strided: read in place
        assert same(got, N.swiglu(mx.contiguous(g), mx.contiguous(v))), what
    # A strided last axis is copied (both inputs), and still right.
    g, v = gate.swapaxes(-1, -2), x.swapaxes(-1, -2)
    before = X.contiguous_copies()
    got = N.swiglu(g, v)
    mx.eval(got)
    assert X.contiguous_copies() == before + 2
    assert same(got, N.swiglu(mx.contiguous(g), mx.contiguous(v)))


# ---- special values ------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_special_values(isa, dtype):
    # Each special gate value at column 3 (a whole vector) and 66 (the tail:
    # 67 = 4·16 + 3) of its own row, times x = 2 and x = -3; the rest of each
    # row must be what it is without the special value.
    specials = [INF, -100.0, -89.0, NAN, -INF, 100.0, 0.0]
    cols = (3, 66)
    filler = make_inputs((len(specials), 67), dtype, seed=7, scale=1.0)[0]
    gate = np.array(filler.astype(mx.float32))
    for c in cols:
        gate[:, c] = specials
    gate = mx.array(gate).astype(dtype)
    for xv in (2.0, -3.0):
        x = mx.full(gate.shape, xv, dtype=dtype)
        got = np.array(N.swiglu(gate, x).astype(mx.float32))
        ref = np.array(R.swiglu(gate, x).astype(mx.float32))
        plain = np.array(N.swiglu(filler, x).astype(mx.float32))
        others = np.ones(gate.shape, bool)
        others[:, cols] = False
        np.testing.assert_array_equal(got[others], plain[others])
        for c in cols:
            out = dict(zip(specials, got[:, c]))
            where = f"{isa} column {c} x={xv}"
            assert out[INF] == INF * xv, where  # silu(inf) = inf
            for g in (-100.0, -89.0):  # silu underflows: -0 or a tiny value of sign -x
                assert abs(out[g]) <= 1e-30 and np.signbit(out[g]) == (xv > 0), (where, g, out[g])
            assert np.isnan(out[NAN]), where
            # -inf / (1 + e^inf) = -inf / inf: NaN, as plain MLX's -inf · sigmoid(-inf) = -inf · 0.
            assert np.isnan(out[-INF]) and np.isnan(ref[specials.index(-INF), c]), where
            assert out[100.0] == 100.0 * xv, where  # sigmoid(100) = 1 in fp32
            assert out[0.0] == 0.0, where
    # NaN in x propagates too; inf in x with a nonzero gate stays inf.
    g = mx.array([1.0, -2.0, 0.5, 3.0]).astype(dtype)
    x = mx.array([NAN, NAN, INF, -INF]).astype(dtype)
    got = np.array(N.swiglu(g, x).astype(mx.float32))
    assert np.isnan(got[:2]).all() and got[2] == INF and got[3] == -INF, got
    assert same(N.swiglu(g, x), R.swiglu(g, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_overflow_on_rounding(dtype):
    # The fp32 product beyond the dtype's range rounds to inf, as plain MLX's does.
    big = float(mx.finfo(dtype).max)
    g = mx.array([big, big, -big]).astype(dtype)
    x = mx.array([2.0, -2.0, 2.0]).astype(dtype)
    got = np.array(N.swiglu(g, x).astype(mx.float32))
    np.testing.assert_array_equal(got, [INF, -INF, 0.0])  # silu(-max) = -max / (1 + e^max) = -0
    assert np.signbit(got[2])
    assert same(N.swiglu(g, x), R.swiglu(g, x))


@pytest.mark.parametrize("shape", [(0,), (0, 8), (3, 0), (2, 0, 5)])
def test_empty(shape):
    g = mx.zeros(shape)
    out = N.swiglu(g, g)
    mx.eval(out)
    assert out.shape == shape and out.dtype == mx.float32


# ---- instruction sets and threads --------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_isa_accuracy(isa, dtype):
    # Each instruction set's loop against the oracle (the sweeps above only run
    # the best one), on rows with a whole-vector body and a tail.
    check(N, *make_inputs((3, 7, 1029), dtype, seed=8), dtype, f"({isa})")
    check(N, *split_inputs((4, 203), dtype, seed=9), dtype, f"({isa}) split halves")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_threads_bitwise_equal(isa, restore_threads, dtype):
    gate, x = split_inputs((1, 64, 13696), dtype, seed=10)

    def run():
        out = N.swiglu(gate, x)
        mx.eval(out)
        return out

    X.set_num_threads(1)
    single = run()
    X.set_num_threads(2)
    multi = run()
    assert X.num_threads() >= 1
    assert same(single, multi), isa


# ---- the primitive and the dispatcher -----------------------------------------------


def test_public_dispatches_to_native(tmp_path):
    assert tk.backend() == "native"
    gate, x = split_inputs((2, 3, 128), mx.bfloat16, seed=11)
    out = tk.swiglu(gate, x)
    path = tmp_path / "graph.dot"
    mx.export_to_dot(str(path), out)  # before eval: the graph, not just the array
    assert "TalkieSwiGLU" in path.read_text()
    assert same(out, N.swiglu(gate, x))


def test_compile_matches_eager():
    gate, x = split_inputs((3, 5, 200), mx.float16, seed=12)
    f = lambda g, v: N.swiglu(g, v) * 2  # noqa: E731
    assert same(mx.compile(f)(gate, x), f(gate, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_plain_mlx(impl, dtype):
    gate, x = make_inputs((3, 5, 96), dtype, seed=13)
    cot = [mx.random.normal(gate.shape, key=mx.random.key(14)).astype(dtype)]
    O.assert_derivatives_match(impl.swiglu, R.swiglu, [gate, x], cot, dtype)


# ---- bad input ----------------------------------------------------------------------

A = mx.zeros((2, 8))

test_bad_input = bad_input_test("swiglu", [
    Bad("gate not an array", ([1.0, 2.0], A), TypeError, "[swiglu] gate must be an mx.array, got list."),
    Bad("x not an array", (A, [1.0, 2.0]), TypeError, "[swiglu] x must be an mx.array, got list."),
    Bad("gate integer", (mx.zeros((2, 8), mx.int32), A), TypeError,
        "[swiglu] gate must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("x integer", (A, mx.zeros((2, 8), mx.int32)), TypeError,
        "[swiglu] x must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("gate float64", (mx.zeros((2, 8), mx.float64), mx.zeros((2, 8), mx.float64)), TypeError,
        "[swiglu] gate must be float32, float16 or bfloat16, got mlx.core.float64.", cpp=True),
    Bad("gate scalar", (mx.array(1.0), mx.array(1.0)), ValueError,
        "[swiglu] gate must have at least 1 dimensions, got shape ().", cpp=True),
    Bad("x scalar", (mx.zeros((1,)), mx.array(1.0)), ValueError,
        "[swiglu] x must have at least 1 dimensions, got shape ().", cpp=True),
    Bad("shapes", (A, mx.zeros((2, 9))), ValueError,
        "[swiglu] gate and x must have the same shape, got (2, 8) and (2, 9).", cpp=True),
    Bad("broadcastable shapes", (A, mx.zeros((1, 8))), ValueError,
        "[swiglu] gate and x must have the same shape, got (2, 8) and (1, 8).", cpp=True),
    Bad("dtypes", (A, mx.zeros((2, 8), mx.float16)), TypeError,
        "[swiglu] gate and x must have the same dtype, got mlx.core.float32 and mlx.core.float16.", cpp=True),
])


# ---- randomized ----------------------------------------------------------------------


def _randomized(data, rows, D, dtype, name):
    seed = data.draw(st.integers(0, 2**16))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 4.0, 30.0]))
    make = split_inputs if data.draw(st.booleans()) else make_inputs
    check(get_impl(name), *make((rows, D), dtype, seed=seed, scale=scale), dtype)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 9), st.integers(1, 6000), st.sampled_from(DTYPES))
def test_randomized_native(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "native")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 4), st.integers(1, 3000), st.sampled_from(DTYPES))
def test_randomized_metal(data, rows, D, dtype):
    _randomized(data, rows, D, dtype, "metal")
