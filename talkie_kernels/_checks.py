"""Argument validation shared by the Python backends (reference and Metal).

The native extension validates the same things in C++ (``csrc/ops.cpp``) with
the same messages, so every backend rejects bad input the same way:
``ValueError``/``TypeError`` whose message starts with ``[op_name]``.
"""

from __future__ import annotations

import numbers

import mlx.core as mx

#: Talkie's norm epsilon: fp32 machine epsilon (what PyTorch's F.rms_norm
#: uses when eps is omitted, since it reduces in fp32).
FP32_EPS = 1.1920928955078125e-07

FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"[{op}] {msg}")


def check_array(op: str, name: str, a, min_ndim: int = 1) -> None:
    if not isinstance(a, mx.array):
        _fail(op, f"{name} must be an mx.array, got {type(a).__name__}.", TypeError)
    if a.dtype not in FLOAT_DTYPES:
        _fail(
            op,
            f"{name} must be float32, float16 or bfloat16, got {a.dtype}.",
            TypeError,
        )
    if a.ndim < min_ndim:
        _fail(op, f"{name} must have at least {min_ndim} dimensions, got shape {a.shape}.")


def check_eps(op: str, eps) -> float:
    if eps is None:
        return FP32_EPS
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        _fail(op, f"eps must be a float or None, got {type(eps).__name__}.", TypeError)
    if not eps > 0:
        _fail(op, f"eps must be positive, got {eps}.")
    return float(eps)


def check_base(op: str, base) -> float:
    if not isinstance(base, numbers.Real) or isinstance(base, bool):
        _fail(op, f"base must be a float, got {type(base).__name__}.", TypeError)
    if not base > 0:
        _fail(op, f"base must be positive, got {base}.")
    return float(base)


def check_rope_input(op: str, name: str, x) -> None:
    check_array(op, name, x)
    if x.ndim != 4:
        _fail(op, f"{name} must have shape (B, H, L, D), got {x.shape}.")
    if x.shape[-1] % 2:
        _fail(op, f"head_dim must be even, got {x.shape[-1]} ({name} shape {x.shape}).")


def check_offset(op: str, offset, batch: int):
    """Returns the offset as a Python int or an int32 mx.array of shape () or (B,)."""
    if isinstance(offset, bool):
        _fail(op, "offset must be an int or an integer mx.array, got bool.", TypeError)
    if isinstance(offset, numbers.Integral):
        return int(offset)
    if not isinstance(offset, mx.array):
        _fail(
            op,
            f"offset must be an int or an integer mx.array, got {type(offset).__name__}.",
            TypeError,
        )
    if not mx.issubdtype(offset.dtype, mx.integer):
        _fail(op, f"offset array must have an integer dtype, got {offset.dtype}.", TypeError)
    if offset.ndim > 1 or (offset.ndim == 1 and offset.shape[0] != batch):
        _fail(
            op,
            f"offset array must have shape () or (B,) = ({batch},), got {offset.shape}.",
        )
    return offset.astype(mx.int32)


def check_gain(op: str, name: str, gain) -> mx.array:
    """A scalar gain: Python float or mx.array of shape (1,) or (); returned as fp32 (1,)."""
    if isinstance(gain, numbers.Real) and not isinstance(gain, bool):
        return mx.array([float(gain)], dtype=mx.float32)
    if not isinstance(gain, mx.array):
        _fail(op, f"{name} must be a float or an mx.array of shape (1,), got {type(gain).__name__}.", TypeError)
    if not mx.issubdtype(gain.dtype, mx.floating):
        _fail(op, f"{name} must have a floating dtype, got {gain.dtype}.", TypeError)
    if gain.size != 1 or gain.ndim > 1:
        _fail(op, f"{name} must have shape (1,), got {gain.shape}.")
    return gain.reshape(1)


def check_rope_qk_norm(op: str, q, k, head_gain) -> None:
    check_rope_input(op, "q", q)
    check_rope_input(op, "k", k)
    if q.shape != k.shape:
        _fail(op, f"q and k must have the same shape, got {q.shape} and {k.shape}.")
    if q.dtype != k.dtype:
        _fail(op, f"q and k must have the same dtype, got {q.dtype} and {k.dtype}.", TypeError)
    if not isinstance(head_gain, mx.array):
        _fail(op, f"head_gain must be an mx.array of shape (H,), got {type(head_gain).__name__}.", TypeError)
    if not mx.issubdtype(head_gain.dtype, mx.floating):
        _fail(op, f"head_gain must have a floating dtype, got {head_gain.dtype}.", TypeError)
    if head_gain.shape != (q.shape[1],):
        _fail(op, f"head_gain must have shape (H,) = ({q.shape[1]},), got {head_gain.shape}.")


def check_residual_norm(op: str, x, y, gain, skip, skip_gain):
    check_array(op, "x", x)
    check_array(op, "y", y)
    if x.shape != y.shape:
        _fail(op, f"x and y must have the same shape, got {x.shape} and {y.shape}.")
    if x.dtype != y.dtype:
        _fail(op, f"x and y must have the same dtype, got {x.dtype} and {y.dtype}.", TypeError)
    gain = check_gain(op, "gain", gain)
    if (skip is None) != (skip_gain is None):
        _fail(op, "skip and skip_gain must be given together.")
    if skip is not None:
        check_array(op, "skip", skip)
        if skip.shape != x.shape:
            _fail(op, f"skip must have the shape of x {x.shape}, got {skip.shape}.")
        if skip.dtype != x.dtype:
            _fail(op, f"skip must have the dtype of x ({x.dtype}), got {skip.dtype}.", TypeError)
        skip_gain = check_gain(op, "skip_gain", skip_gain)
    return gain, skip_gain
