"""The backends under test, the one way a test picks one, and what the op tests share.

A test that runs an op on a backend gets it from ``get_impl(name)``, usually
through the ``impl`` fixture (conftest.py), whose parameters are the fused
backends (``FUSED``) unless a test parametrizes it (``indirect=True``) with
others, e.g. ``ALL_IMPLS``:

* ``reference``: ``talkie_kernels.reference``, plain MLX: the baseline each
  fused backend is compared with, next to the float64 oracle in ``oracle.py``;
* ``native``: ``talkie_kernels.native.<op>``, the compiled CPU extension behind
  the argument checks. It must be built: a missing extension fails the tests
  that use it instead of skipping them;
* ``metal``: ``talkie_kernels.metal``'s kernels executed by the CPU SIMT
  emulator inside ``talkie_kernels.testing.emulate_metal()``, the exact kernel
  sources a Mac compiles;
* ``public``: ``talkie_kernels.<op>``, the dispatcher (native on this CPU);
* ``extension``: the raw extension ``talkie_kernels.native.ops.<op>`` (the C++
  op functions, which take arrays and numbers only), called with the public
  defaults filled in: for the bad inputs its own checks must refuse too.
"""

from __future__ import annotations

import inspect
import re
from typing import NamedTuple

import mlx.core as mx
import numpy as np
import pytest

import talkie_kernels as tk
from talkie_kernels import _checks as C

#: The fused backends: what the accuracy sweeps judge against the oracle.
FUSED = ("native", "metal")
#: Every entry point of an op: what must accept and refuse the same arguments.
ALL_IMPLS = ("reference", "native", "metal", "public")


class Impl:
    """The ops of one backend, callable like ``talkie_kernels.<op>``."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, op: str):
        if self.name in ("native", "extension") and not tk.native_available():
            pytest.fail(f"native extension not built: {tk.native.load_error}")
        if self.name == "extension":
            return _extension_op(op)
        if self.name == "metal":
            return _emulated(getattr(tk.metal, op))
        module = {"reference": tk.reference, "native": tk.native, "public": tk}[self.name]
        return getattr(module, op)

    def __repr__(self):
        return self.name


def get_impl(name: str) -> Impl:
    """A backend by name (see the module docstring)."""
    return Impl(name)


def _emulated(fn):
    def call(*args, **kwargs):
        with tk.testing.emulate_metal():
            return fn(*args, **kwargs)

    return call


def _extension_op(op: str):
    fn = getattr(tk.native.ops, op)
    signature = inspect.signature(getattr(tk.reference, op))

    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return fn(*(C.FP32_EPS if k == "eps" and v is None else v for k, v in bound.arguments.items()))

    return call


# ---- dtypes and offsets the op tests sweep --------------------------------------

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


#: (B, H, L, D) shapes of the RoPE sweeps: decode, prefill, odd sizes, small head_dims.
ROPE_SHAPES = {
    "decode": (1, 40, 1, 128),
    "prefill": (1, 4, 512, 128),
    "odd": (3, 5, 7, 128),
    "hd64": (2, 3, 9, 64),
    "hd2": (2, 1, 3, 2),
}


def offset_cases(batch: int):
    """(id, offset) pairs: every offset kind the accuracy sweeps run."""
    per_seq = mx.array([(-5 if b % 2 else 4099) + 7 * b for b in range(batch)], dtype=mx.int32)
    return [
        ("zero", 0),
        ("int", 17),
        ("past2048", 5000),
        ("negative", -37),
        ("array0d", mx.array(300)),
        ("per_seq", per_seq),
    ]


OFFSET_KINDS = [kind for kind, _ in offset_cases(1)]


def make_offset(kind: str, batch: int):
    return dict(offset_cases(batch))[kind]


#: Offsets every backend takes as the int32 array of the same values
#: (``as_int32``), for a batch of 2 and L <= 4: Python and numpy integers
#: within int32 (the last position included), narrower integer arrays.
OFFSETS_ACCEPTED = {
    "python_int": 17,
    "numpy_int32": np.int32(17),
    "numpy_int64": np.int64(-17),
    "int32_max_at_last_position": 2**31 - 4,
    "int32_min": -(2**31),
    **{f"{t}_array": mx.array([3, 100], dtype=getattr(mx, t)) for t in ("int8", "uint8", "int16", "uint16")},
}


def as_int32(offset) -> mx.array:
    return mx.array(np.array(offset), dtype=mx.int32)


# ---- bad input: one table per op (tests/test_<op>.py), every backend ------------


class Bad(NamedTuple):
    """A bad call of an op and what every backend raises for it: ``exc`` exactly
    (not a subclass), with ``message`` as the whole text, or a regex (starting
    ``^\\[op\\] ``) for text that is not ours. ``cpp``: the C++ op function
    checks this too (the ``extension`` backend, called with these arguments)."""

    id: str
    args: tuple
    exc: type
    message: str | re.Pattern
    kwargs: dict = {}
    cpp: bool = False


def bad_input_test(op: str, table: list[Bad]):
    """The test of ``op``'s table: each row on every backend, and on the
    extension where the C++ op function checks it too."""
    params = [
        pytest.param(name, case, id=f"{case.id}-{name}")
        for case in table
        for name in ALL_IMPLS + (("extension",) if case.cpp else ())
    ]

    @pytest.mark.parametrize("impl, case", params, indirect=["impl"])
    def test_bad_input(impl, case):
        with pytest.raises(case.exc) as info:
            mx.eval(getattr(impl, op)(*case.args, **case.kwargs))
        assert type(info.value) is case.exc
        if isinstance(case.message, str):
            assert str(info.value) == case.message
        else:
            assert case.message.pattern.startswith(rf"^\[{op}\] "), case.message
            assert case.message.search(str(info.value)), str(info.value)

    return test_bad_input
