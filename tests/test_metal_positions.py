"""Metal RoPE at far positions, through the CPU SIMT emulator.

The Metal kernels have no ``double``: they split each position ``offset + l``
into two 16-bit halves, exact in fp32, and carry the angle error-free
(msl/rope.header.metal). Here ``rope`` and ``rope_qk_norm`` are held, at
positions near 2^24, 2^30, 2^31 - 1 and -2^31 and past 2^31 - 1 (an int32
offset array plus l), to the float64 oracle and to the native kernel's error
on the same inputs (native computes the angle in double), and the kernel's
cos/sin to those of the exactly reduced angle.
"""

from __future__ import annotations

from fractions import Fraction

import mlx.core as mx
import numpy as np
import pytest

import oracle as O
from impls import get_impl

from talkie_kernels import metal as metal_module

METAL = get_impl("metal")  # the Metal kernels, run by the emulator

L = 8
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

#: (id, offset, batch): Python ints (the checks allow any int32 offset whose
#: last position is within int32) and int32 (B,) arrays, whose values are not
#: checked, so offset + l may pass 2^31 - 1.
OFFSETS = [
    ("2^24", 2**24 - 3, 2),  # the run crosses 2^24
    ("2^30", 2**30, 2),
    ("2^31-L", I32_MAX - (L - 1), 2),  # last position 2^31 - 1
    ("-2^31", I32_MIN, 2),
    ("per_seq", [I32_MAX - (L - 1), I32_MIN, 2**24 - 3, 2**30 + 12345], 4),
    ("past_int32", [I32_MAX - 2, -(2**30) - 7], 2),  # offset + l up to 2^31 + 4
]
BASES = [1e6, 1e4]
#: Bounds on the error against the oracle. fp32: fp32 rounding, as at position
#: 0 (rope ~7e-8; rope_qk_norm ~1.5e-7, its norm adds roundings) and as native
#: (up to ~2.6e-7 at 2^31 with base 1e4; the float64 oracle itself rounds the
#: angle by up to 1.2e-7 there). bf16: the outputs' own rounding.
ABS = {
    "rope": {mx.float32: 1.5e-7, mx.bfloat16: 8e-3},
    "rope_qk_norm": {mx.float32: 2.5e-7, mx.bfloat16: 8e-3},
}
FLOOR = {mx.float32: 2e-7, mx.bfloat16: 0.25 * O.TOL[mx.bfloat16]}

# 2π to 60 digits, for the exactly reduced angles.
TWO_PI = 2 * Fraction("3.14159265358979323846264338327950288419716939937510582097494")


@pytest.fixture(scope="module")
def native():
    return get_impl("native")


def offset_of(value):
    return mx.array(value, dtype=mx.int32) if isinstance(value, list) else value


def normal(shape, dtype, seed, transposed=False):
    if transposed:  # a (B, L, H, D) projection viewed as (B, H, L, D), as the model passes
        B, H, L_, D = shape
        return mx.random.normal((B, L_, H, D), key=mx.random.key(seed)).astype(dtype).transpose(0, 2, 1, 3)
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def check_against_native(op, got, want, native_got, dtype, what):
    """got within ABS of the oracle and no worse than SLACK x native's error (or FLOOR)."""
    err, native_err = O.rel_err(got, want), O.rel_err(native_got, want)
    msg = f"{op} {what}: Metal rel. error {err:.3g}, native {native_err:.3g}"
    assert err <= max(O.SLACK * native_err, FLOOR[dtype]), msg
    assert err <= ABS[op][dtype], msg


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("base", BASES, ids=["base1e6", "base1e4"])
@pytest.mark.parametrize("case", OFFSETS, ids=[c[0] for c in OFFSETS])
def test_rope_far_positions(native, case, base, dtype):
    _, value, B = case
    offset = offset_of(value)
    x = normal((B, 3, L, 128), dtype, 0)
    got = METAL.rope(x, offset, base=base)
    want = O.rope(x, offset, base)
    check_against_native("rope", got, want, native.rope(x, offset, base=base), dtype, f"{case[0]} base {base:g}")


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("base", BASES, ids=["base1e6", "base1e4"])
@pytest.mark.parametrize("case", OFFSETS, ids=[c[0] for c in OFFSETS])
def test_rope_qk_norm_far_positions(native, case, base, dtype):
    _, value, B = case
    offset = offset_of(value)
    q, k = normal((B, 5, L, 128), dtype, 1, True), normal((B, 5, L, 128), dtype, 2, True)
    g = mx.array([0.5, 1.25, 2.0, 0.75, 1.0])
    got = METAL.rope_qk_norm(q, k, g, offset, base=base)
    wants = O.rope_qk_norm(q, k, g, offset, base)
    natives = native.rope_qk_norm(q, k, g, offset, base=base)
    for got_x, want_x, native_x, name in zip(got, wants, natives, "qk"):
        check_against_native("rope_qk_norm", got_x, want_x, native_x, dtype, f"{name} {case[0]} base {base:g}")


def test_rope_decode_at_last_int32_position(native):
    # One token at position 2^31 - 1, the model's decode shape.
    x = normal((1, 40, 1, 128), mx.float32, 3, True)
    for offset in (I32_MAX, I32_MIN):
        got = METAL.rope_qk_norm(x, x, mx.ones((40,)), offset)[1]
        want = O.rope_qk_norm(x, x, mx.ones((40,)), offset)[1]
        check_against_native("rope_qk_norm", got, want, native.rope_qk_norm(x, x, mx.ones((40,)), offset)[1],
                             mx.float32, f"k, decode at {offset}")


@pytest.mark.parametrize("offset", [I32_MAX - 69_999, I32_MIN, [I32_MAX - 4]], ids=["2^31-L", "-2^31", "past_int32"])
def test_rope_long_prefill_far_positions(native, offset):
    # l >= 2^16: the high half of l enters the position's high half.
    x = normal((1, 1, 70_000, 4), mx.float32, 4)
    offset = offset_of(offset)
    got = METAL.rope(x, offset)
    check_against_native("rope", got, O.rope(x, offset), native.rope(x, offset), mx.float32, "long prefill")


def exact_cos_sin(positions, D, base):
    """(len(positions), D/2) float64 cos and sin of pos · inv_freq, with inv_freq the
    float64 base^(-2i/D) (as the oracle and the native kernel), the product exact
    and reduced mod 2π exactly (to ~1e-50) before float64 cos/sin."""
    inv = [Fraction(float(v)) for v in base ** (-np.arange(0, D, 2, dtype=np.float64) / D)]
    reduced = np.array([[float(t - round(t / TWO_PI) * TWO_PI) for t in (p * f for f in inv)] for p in positions])
    return np.cos(reduced), np.sin(reduced)


@pytest.mark.parametrize("base", BASES, ids=["base1e6", "base1e4"])
def test_rope_angles_exactly_reduced(base):
    # x = (1, 0) pairs: the output is (cos θ, -sin θ) of every pair. The kernel's
    # angle is within ~2e-9 of exact, so cos/sin stay at fp32 rounding (3e-8)
    # plus precise::sin/cos's own error, at every position; the float64 oracle
    # (θ rounded to double: up to 1.2e-7 at 2^31) and the native kernel (its
    # double reduction: up to ~4e-7) are not this close.
    rng = np.random.default_rng(0)
    offsets = [I32_MIN, I32_MAX - 3, 2**24 - 2, 2**16 - 2, -(2**16) - 1, 0, 2**30, -1, I32_MAX - 1]
    offsets += [int(v) for v in rng.integers(I32_MIN, I32_MAX - 3, 23)]
    B, L_, D = len(offsets), 4, 128
    x = mx.concatenate([mx.ones((B, 1, L_, D // 2)), mx.zeros((B, 1, L_, D // 2))], axis=-1)
    got = np.array(METAL.rope(x, mx.array(offsets, dtype=mx.int32), base=base), dtype=np.float64)
    positions = [o + l for o in offsets for l in range(L_)]  # the last offset passes 2^31 - 1
    c, s = exact_cos_sin(positions, D, base)
    want = np.concatenate([c, -s], axis=-1).reshape(B, 1, L_, D)
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= 1e-7, f"max |error| {err.max():.3g} at position {positions[worst[0] * L_ + worst[2]]}"


def test_table_reduction_parts():
    # The host table: f = base^(-2i/D) (float64) as fp32 hi + lo, and
    # g = 2^16 · f mod 2π in [-π, π] as hi + lo, each pair to ~2^-48 relative.
    D, base = 128, 1e6
    table = np.array(metal_module._inv_freq_table(D, base), dtype=np.float64).reshape(4, D // 2)
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    for i, f64 in enumerate(inv):
        f = Fraction(float(f64))
        g = f * 2**16
        g -= round(g / TWO_PI) * TWO_PI
        assert abs(g) <= TWO_PI / 2
        for want, hi, lo in ((f, table[0, i], table[1, i]), (g, table[2, i], table[3, i])):
            assert hi == float(np.float32(float(want)))
            assert abs(float(want - Fraction(hi) - Fraction(lo))) <= 2.0**-48 * abs(float(want))
