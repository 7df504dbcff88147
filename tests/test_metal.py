"""Metal-specific tests, run through the CPU SIMT emulator.

The per-op sweeps (tests/test_<op>.py) cover talkie_kernels.metal's public ops
against the oracle; here: the kernel sources (msl/*.metal) and their building
and caching, the RoPE angle at extreme positions, the paths the sweeps rarely
reach (head_dim not a multiple of 64, rows longer than the register path), and
gradients.
"""

from __future__ import annotations

import math
import re
from importlib import resources

import mlx.core as mx
import numpy as np
import pytest
from impls import get_impl

import oracle as O
from talkie_kernels import metal as M  # the module: its kernel factory and kernel table
from talkie_kernels import testing

MSL = resources.files("talkie_kernels").joinpath("msl")
metal, R = get_impl("metal"), get_impl("reference")  # the ops, through the emulator


def normal(shape, dtype=mx.float32, seed=0, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


# ---------------------------------------------------------------------------
# Kernel factory and caching


class CountingFactory:
    def __init__(self):
        self.built = []
        self.kwargs = {}

    def __call__(self, **kwargs):
        self.built.append(kwargs["name"])
        self.kwargs[kwargs["name"]] = kwargs
        return testing.metal_kernel(**kwargs)


def test_kernels_built_once_per_factory():
    factory = CountingFactory()
    previous = M._set_kernel_factory(factory)
    try:
        for dtype in (mx.float32, mx.bfloat16):
            x = normal((1, 2, 3, 64), dtype)
            mx.eval(M.rope(x, 5), M.rope(x, mx.array(9)))
            mx.eval(M.rope_qk_norm(x, x, mx.ones(2), 3), M.rope_qk_norm(x, x, mx.ones(2), 40))
            mx.eval(M.rms_norm(x), M.rms_norm(x[0, 0]))
            mx.eval(M.residual_norm(x, x, 0.5), M.residual_norm(x, x, 0.5, x, 0.25))
    finally:
        assert M._set_kernel_factory(previous) is factory
    assert sorted(factory.built) == sorted(M._KERNELS), factory.built
    # Each kernel's header and body are its files' text, unchanged.
    for name, spec in M._KERNELS.items():
        built = factory.kwargs[name]
        assert built["header"] == MSL.joinpath(spec["header"]).read_text(encoding="utf-8")
        assert built["source"] == MSL.joinpath(spec["source"]).read_text(encoding="utf-8")


def test_set_kernel_factory_and_emulate_metal_restore_default():
    assert M._factory is mx.fast.metal_kernel
    with testing.emulate_metal():
        assert M._factory is not mx.fast.metal_kernel
    assert M._factory is mx.fast.metal_kernel
    sentinel = object()
    assert M._set_kernel_factory(sentinel) is mx.fast.metal_kernel
    assert M._set_kernel_factory(None) is sentinel
    assert M._factory is mx.fast.metal_kernel


class SpyFactory:
    """Emulated kernels that record the arrays each call receives."""

    def __init__(self):
        self.inputs = {}

    def __call__(self, **kwargs):
        kernel = testing.metal_kernel(**kwargs)

        def call(*, inputs, **launch):
            self.inputs[kwargs["name"]] = list(inputs)
            return kernel(inputs=inputs, **launch)

        return call


def test_rope_reads_strided_views_in_place():
    # The model's q, k are transposed views of the projection: they reach the
    # kernel as they are (read through their strides), not as copies.
    spy = SpyFactory()
    previous = M._set_kernel_factory(spy)
    try:
        qkv = normal((2, 5, 3, 4, 64))
        q, k = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(2))
        mx.eval(M.rope_qk_norm(q, k, mx.ones(4), mx.array(3)), M.rope(k, 2))
    finally:
        M._set_kernel_factory(previous)
    got_q, got_k = spy.inputs["talkie_rope_qk_norm"][:2]
    for got, view in ((got_q, q), (got_k, k), (spy.inputs["talkie_rope"][0], k)):
        assert memoryview(got).strides == memoryview(view).strides
        assert not memoryview(got).c_contiguous


# ---------------------------------------------------------------------------
# Kernel sources

def test_every_msl_file_is_a_kernel_part():
    # The package's .metal files are exactly the headers and bodies the kernels
    # use, one body per kernel named after its op (talkie_<op>).
    files = sorted(f.name for f in MSL.iterdir() if f.name.endswith(".metal"))
    used = sorted({spec[part] for spec in M._KERNELS.values() for part in ("header", "source")})
    assert files == used
    for name, spec in M._KERNELS.items():
        assert spec["source"] == name.removeprefix("talkie_") + ".body.metal"
        assert spec["header"].endswith(".header.metal")


def test_sources_are_plain_msl():
    # Kernels must compile on a Mac exactly as the emulator runs them: no
    # preprocessor branches, nothing left to substitute.
    for spec in M._KERNELS.values():
        for part in ("header", "source"):
            text = MSL.joinpath(spec[part]).read_text(encoding="utf-8")
            for banned in ("#if", "#define", "double", "std::", "{{", "${"):
                assert banned not in text, (spec[part], banned)


def _f32(value: float) -> float:
    return float(np.float32(value))


def test_rope_reduction_constants():
    # rope.header.metal's 2π = P1 + P2 + P3 (Cody–Waite: each part the fp32
    # rounding of what the previous parts leave, ~2^-72 together) and 1 / 2π.
    text = MSL.joinpath("rope.header.metal").read_text(encoding="utf-8")
    got = {
        name: float(value)
        for name, value in re.findall(r"const float (P[123]|INV_2PI) = ([-+.\de]+)f;", text)
    }
    two_pi = 2.0 * math.pi
    p1 = _f32(two_pi)
    p2 = _f32(two_pi - p1)
    p3 = _f32(two_pi - p1 - p2)
    # The literals carry 10 significant digits: they round to these fp32 values.
    assert {name: _f32(value) for name, value in got.items()} == {
        "P1": p1, "P2": p2, "P3": p3, "INV_2PI": _f32(1.0 / two_pi)
    }


# ---------------------------------------------------------------------------
# Accuracy: the paths the per-op sweeps rarely reach


@pytest.mark.parametrize(
    "offset",
    [0, 5000, 100_000, -100_000, 2**24 - 64, mx.array([-2**23, 3_000_000])],
    ids=["zero", "5000", "1e5", "-1e5", "2^24", "per_seq"],
)
def test_rope_fp32_angle_at_extreme_positions(offset):
    # Plain MLX's fp32 angle is off by ~ulp(θ) here; the extended-precision
    # angle keeps fp32 within 3e-6 of the oracle.
    x = normal((2, 1, 8, 128))
    O.assert_accurate(metal.rope(x, offset), O.rope(x, offset), mx.float32, what=f"rope at {offset}")


@pytest.mark.parametrize("D", [2, 6, 96, 128, 192])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_rope_qk_norm_any_head_dim(D, dtype):
    q, k = normal((2, 3, 5, D), dtype, 1), normal((2, 3, 5, D), dtype, 2, scale=3.0)
    g = mx.array([0.5, 1.25, 2.0])
    offset = mx.array([4099, -5])
    got = metal.rope_qk_norm(q, k, g, offset)
    ref = R.rope_qk_norm(q, k, g, offset)
    for got_x, ref_x, want_x, name in zip(got, ref, O.rope_qk_norm(q, k, g, offset), "qk"):
        O.assert_accurate(got_x, want_x, dtype, baseline=ref_x, what=f"rope_qk_norm {name} D={D}")
    O.assert_accurate(metal.rope(q, offset), O.rope(q, offset), dtype, baseline=R.rope(q, offset), what=f"rope D={D}")


@pytest.mark.parametrize("D", [1, 33, 8200])
def test_norms_register_and_looped_paths(D):
    # 8200 > 8 · 1024 takes the looped path; 1 and 33 leave most lanes idle.
    x, y, s = normal((2, D), seed=1, scale=4.0), normal((2, D), seed=2), normal((2, D), seed=3)
    O.assert_accurate(metal.rms_norm(x), O.rms_norm(x), mx.float32, baseline=R.rms_norm(x), what="rms_norm")
    x_new, normed = metal.residual_norm(x, y, mx.array([0.37]), s, mx.array([-0.21]))
    want = O.residual_sum(x, y, mx.array([0.37]), s, mx.array([-0.21]))
    O.assert_accurate(x_new, want, mx.float32, what="residual_norm x_new")
    O.assert_accurate(normed, O.rms_norm(x_new), mx.float32, what="residual_norm normed")


def test_residual_norm_rounds_once_with_full_precision_gains():
    # bf16 activations, fp32 gains: the sum is formed in fp32 and rounded once.
    x, y, s = (normal((3, 256), mx.bfloat16, i) for i in range(3))
    g, sg = mx.array([0.3701]), mx.array([-0.2113])
    x_new, normed = metal.residual_norm(x, y, g, s, sg)
    exact = O.residual_sum(x, y, g, s, sg)
    # Round-to-nearest bf16 (unit roundoff 2^-8): within 2^-8 relative of the exact sum, elementwise
    # (plus fp32 rounding of the terms).
    terms = np.abs(O.to64(x)) + np.abs(0.3701 * O.to64(y)) + np.abs(0.2113 * O.to64(s))
    assert np.all(np.abs(O.to64(x_new) - exact) <= 2.0**-8 * np.abs(exact) + 1e-6 * terms)
    O.assert_accurate(normed, O.rms_norm(x_new), mx.bfloat16, what="normed")


# ---------------------------------------------------------------------------
# Gradients: the vjp of the plain-MLX reference


def _assert_grads_equal(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(O.to64(a), O.to64(b), rtol=1e-5, atol=1e-5)


def _vjps(op, primals, cotangents, *args, **kwargs):
    """(metal, reference) vjps of ``op(*primals, *args, **kwargs)``."""
    return [
        mx.vjp(lambda *a: getattr(impl, op)(*a, *args, **kwargs), primals, cotangents)[1]
        for impl in (metal, R)
    ]


def test_gradients_equal_reference():
    q = normal((2, 5, 3, 64), seed=1).transpose(0, 2, 1, 3)  # strided, as in the model
    k = normal((2, 3, 5, 64), seed=2)
    g = mx.array([0.5, 1.5, 2.0])
    offset = mx.array([100, -7])
    cot = [normal(k.shape, seed=3), normal(k.shape, seed=4)]
    _assert_grads_equal(*_vjps("rope_qk_norm", [q, k, g], cot, offset, base=5e5))
    _assert_grads_equal(*_vjps("rope", [q], cot[:1], 17))
    _assert_grads_equal(*_vjps("rms_norm", [k], cot[:1], 1e-5))
    _assert_grads_equal(*_vjps("residual_norm", [k, q, mx.array([0.3]), cot[1], mx.array([-0.2])], cot))
    # Only one output used: the other's cotangent is zero.
    got = mx.grad(lambda x: metal.residual_norm(x, q, 0.3)[1].sum())(k)
    want = mx.grad(lambda x: R.residual_norm(x, q, 0.3)[1].sum())(k)
    _assert_grads_equal([got], [want])

