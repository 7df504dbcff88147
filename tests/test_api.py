"""The public API (names, the extension) and the dispatch rules."""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np
import pytest
from impls import get_impl

import talkie_kernels as tk

public, native, reference = (get_impl(name) for name in ("public", "native", "reference"))


def test_public_names():
    for name in ("rms_norm", "rope", "rope_qk_norm", "residual_norm", "swiglu", "native_available", "load"):
        assert callable(getattr(tk, name))
    for mod in (tk.reference, tk.metal):
        for op in ("rms_norm", "rope", "rope_qk_norm", "residual_norm", "swiglu"):
            assert callable(getattr(mod, op)), (mod, op)
    assert callable(tk.testing.metal_kernel) and callable(tk.testing.emulate_metal)


def test_extension_roundtrips_an_array():
    # Fails with "incompatible function arguments ... mlx.core.array" when the
    # extension is not built with NB_DOMAIN mlx against the pinned nanobind.
    assert tk.native_available(), tk.native.load_error
    a = mx.arange(6, dtype=mx.bfloat16).reshape(2, 3)
    b = tk.native.ops.roundtrip(a)
    assert isinstance(b, mx.array) and b.dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(b.astype(mx.float32)), np.array(a.astype(mx.float32)))


def test_cpu_dispatches_to_native():
    assert mx.default_device() == mx.cpu
    assert tk.backend() == "native"
    q = mx.random.normal((1, 2, 3, 64))
    g = mx.ones((2,))
    for got, want in zip(public.rope_qk_norm(q, q, g, 5), native.rope_qk_norm(q, q, g, 5)):
        np.testing.assert_array_equal(np.array(got), np.array(want))
    x, y = mx.ones((2, 8)), mx.ones((2, 8))
    np.testing.assert_array_equal(np.array(public.residual_norm(x, y, 0.5)[1]), np.array(native.residual_norm(x, y, 0.5)[1]))


def test_missing_extension_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(tk.native, "ops", None)
    monkeypatch.setattr(tk.native, "load_error", "ImportError: pretend")
    monkeypatch.setattr(tk, "_warned", False)
    x = mx.random.normal((2, 64))
    with pytest.warns(RuntimeWarning, match="native CPU extension is not available"):
        out = public.rms_norm(x)
    np.testing.assert_array_equal(np.array(out), np.array(reference.rms_norm(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        public.rms_norm(x)  # the second call does not warn again


def test_ops_are_differentiable_through_dispatch():
    x = mx.random.normal((3, 64))
    g = mx.grad(lambda x: public.rms_norm(x).sum())(x)
    want = mx.grad(lambda x: reference.rms_norm(x).sum())(x)
    np.testing.assert_allclose(np.array(g), np.array(want), rtol=1e-5, atol=1e-6)
