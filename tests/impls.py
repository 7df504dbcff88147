"""The implementations under test, and the parameters every op test sweeps.

The ``impl`` fixture (conftest.py) runs each op test against every fused
implementation:

* ``native``: the compiled CPU extension (``talkie_kernels._native``). It must be
  built: a missing extension fails these tests instead of skipping them.
* ``metal``: ``talkie_kernels.metal``'s kernels executed by the CPU SIMT
  emulator inside ``talkie_kernels.testing.emulate_metal()`` — the exact
  kernel sources a Mac compiles.

The plain-MLX reference (``talkie_kernels.reference``) is the baseline each one
is compared with, next to the float64 oracle in ``oracle.py``.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import pytest

import talkie_kernels as tk

IMPLS = ("native", "metal")


class Impl:
    """The four ops of one implementation, callable like ``talkie_kernels.<op>``."""

    def __init__(self, name: str):
        self.name = name
        if name == "native":
            if not tk.native_available():
                pytest.fail(f"native extension not built: {tk.native.load_error}")
            self._module = tk.native
        else:
            from talkie_kernels import metal

            self._module = metal

    def __getattr__(self, op: str):
        fn = getattr(self._module, op)
        if self.name != "metal":
            return fn

        @functools.wraps(fn)
        def emulated(*args, **kwargs):
            from talkie_kernels.testing import emulate_metal

            with emulate_metal():
                return fn(*args, **kwargs)

        return emulated

    def __repr__(self):
        return self.name


ALL_IMPLS = ("reference",) + IMPLS


def get_impl(name: str):
    """An implementation by name; "reference" is the plain-MLX module itself."""
    return tk.reference if name == "reference" else Impl(name)




DTYPES = [mx.float32, mx.float16, mx.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def dtype_params():
    return pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


def offset_cases(batch: int):
    """(id, offset) pairs: every offset kind the API accepts."""
    per_seq = mx.array([(-5 if b % 2 else 4099) + 7 * b for b in range(batch)], dtype=mx.int32)
    return [
        ("zero", 0),
        ("int", 17),
        ("past2048", 5000),
        ("negative", -37),
        ("array0d", mx.array(300)),
        ("per_seq", per_seq),
    ]


OFFSET_KINDS = ["zero", "int", "past2048", "negative", "array0d", "per_seq"]


def make_offset(kind: str, batch: int):
    return dict(offset_cases(batch))[kind]
