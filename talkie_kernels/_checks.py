"""The one place where the Python API checks and normalizes each op's arguments.

Every public entry point of an op (``talkie_kernels.<op>``, and
``talkie_kernels.reference``/``metal``/``native.<op>``) calls that op's
``<op>_args`` function first, then the backend's unchecked ``_<op>``; so every
backend rejects bad input with the same ``ValueError``/``TypeError`` whose
message starts with ``[op_name]``, and receives the same normalized values:

* ``eps``: ``None`` -> fp32 machine epsilon; a positive float.
* ``offset``: a Python int (numpy integers too) within int32, or an int32
  ``mx.array`` of shape () or (B,) (narrower integer arrays are widened;
  wider ones are refused: they may not fit, and checking values would cost a
  synchronization per call).
* gains: ``mx.array`` of shape (1,) in a float dtype every backend reads
  (a Python float becomes fp32, a float64 array fp32: Metal has no double).

The C++ op functions (``csrc/ops.cpp``) keep their own checks of the arrays
(the C++ API can be called directly), with the same messages.
"""

from __future__ import annotations

import math
import numbers

import mlx.core as mx

#: Talkie's norm epsilon: fp32 machine epsilon (what PyTorch's F.rms_norm
#: uses when eps is omitted, since it reduces in fp32).
FP32_EPS = 1.1920928955078125e-07

FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"[{op}] {msg}")


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Integer dtypes an offset array may have (converted to int32 exactly).
OFFSET_DTYPES = (mx.int32, mx.int16, mx.int8, mx.uint16, mx.uint8)


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
    if x.shape[-1] % 2 or x.shape[-1] == 0:
        _fail(op, f"head_dim must be even and positive, got {x.shape[-1]} ({name} shape {x.shape}).")


def check_offset(op: str, offset, batch: int, length: int):
    """A Python int within int32 (with the last position ``offset + length - 1``),
    or an int32 mx.array of shape () or (B,)."""
    if isinstance(offset, bool):
        _fail(op, "offset must be an int or an integer mx.array, got bool.", TypeError)
    if isinstance(offset, numbers.Integral):
        offset = int(offset)
        if not INT32_MIN <= offset <= INT32_MAX - max(length - 1, 0):
            _fail(op, f"positions offset + l must fit in int32 (offset {offset}, L = {length}).")
        return offset
    if not isinstance(offset, mx.array):
        _fail(
            op,
            f"offset must be an int or an integer mx.array, got {type(offset).__name__}.",
            TypeError,
        )
    if not mx.issubdtype(offset.dtype, mx.integer):
        _fail(op, f"offset array must have an integer dtype, got {offset.dtype}.", TypeError)
    if offset.dtype not in OFFSET_DTYPES:
        _fail(
            op,
            f"offset array must be int32 (as mlx-lm's caches hold it), got {offset.dtype}: "
            "its values may not fit in int32.",
        )
    if offset.ndim > 1 or (offset.ndim == 1 and offset.shape[0] != batch):
        _fail(
            op,
            f"offset array must have shape () or (B,) = ({batch},), got {offset.shape}.",
        )
    return offset if offset.dtype == mx.int32 else offset.astype(mx.int32)


def check_gain(op: str, name: str, gain) -> mx.array:
    """A scalar gain: Python float or mx.array of shape (1,) or () -> shape (1,); fp32
    for a float and for float64, else its own dtype (no cast node per call)."""
    if isinstance(gain, numbers.Real) and not isinstance(gain, bool):
        return mx.array([float(gain)], dtype=mx.float32)
    if not isinstance(gain, mx.array):
        _fail(op, f"{name} must be a float or an mx.array of shape (1,), got {type(gain).__name__}.", TypeError)
    if not mx.issubdtype(gain.dtype, mx.floating):
        _fail(op, f"{name} must have a floating dtype, got {gain.dtype}.", TypeError)
    if gain.size != 1 or gain.ndim > 1:
        _fail(op, f"{name} must have shape (1,), got {gain.shape}.")
    gain = gain.reshape(1)
    # Every backend reads the gain into fp32; Metal cannot take a float64 one.
    return gain.astype(mx.float32) if gain.dtype == mx.float64 else gain


def check_pair(op: str, a_name: str, a, b_name: str, b) -> None:
    """Two arrays an op combines element by element: same shape, same dtype."""
    if a.shape != b.shape:
        _fail(op, f"{a_name} and {b_name} must have the same shape, got {a.shape} and {b.shape}.")
    if a.dtype != b.dtype:
        _fail(op, f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}.", TypeError)


def _check_rope_qk_norm(op: str, q, k, head_gain) -> None:
    check_rope_input(op, "q", q)
    check_rope_input(op, "k", k)
    check_pair(op, "q", q, "k", k)
    if not isinstance(head_gain, mx.array):
        _fail(op, f"head_gain must be an mx.array of shape (H,), got {type(head_gain).__name__}.", TypeError)
    if not mx.issubdtype(head_gain.dtype, mx.floating):
        _fail(op, f"head_gain must have a floating dtype, got {head_gain.dtype}.", TypeError)
    if head_gain.shape != (q.shape[1],):
        _fail(op, f"head_gain must have shape (H,) = ({q.shape[1]},), got {head_gain.shape}.")


def _check_residual_norm(op: str, x, y, gain, skip, skip_gain):
    check_array(op, "x", x)
    check_array(op, "y", y)
    check_pair(op, "x", x, "y", y)
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


#: ``mx.quantize``'s defaults for affine quantization.
AFFINE_DEFAULTS = {"group_size": 64, "bits": 4}
#: ``mx.quantize``'s affine group sizes: what ``linear`` and the quantized
#: attention accept.
AFFINE_GROUP_SIZES = (32, 64, 128)


def _check_linear(op: str, x, weight, scales, biases, group_size, bits, mode):
    """Validates ``linear``'s arguments; returns ``(group_size, bits)`` with MLX's
    affine defaults filled in (``(None, None)`` for a dense weight).

    Dense: ``weight`` (N, K) float, ``x`` (..., K). Quantized (``scales`` given):
    ``weight`` (N, K·bits/32) uint32 packed as ``mx.quantize`` packs it,
    ``scales`` / ``biases`` (N, K/group_size) float. Modes other than affine
    are checked by MLX's ``quantized_matmul`` itself.
    """
    check_array(op, "x", x)
    if not isinstance(weight, mx.array):
        _fail(op, f"weight must be an mx.array, got {type(weight).__name__}.", TypeError)
    if weight.ndim != 2:
        _fail(op, f"weight must have shape (N, K), got {weight.shape}.")
    if not isinstance(mode, str):
        _fail(op, f"mode must be a string, got {type(mode).__name__}.", TypeError)
    if scales is None:
        if biases is not None:
            _fail(op, "biases were given without scales (a quantized weight needs both).")
        if group_size is not None or bits is not None:
            _fail(op, "group_size and bits apply to a quantized weight; no scales were given.")
        check_array(op, "weight", weight, min_ndim=2)
        if weight.shape[1] != x.shape[-1]:
            _fail(op, f"x has {x.shape[-1]} features but weight {weight.shape} expects {weight.shape[1]} (K).")
        return None, None
    for name, v in (("group_size", group_size), ("bits", bits)):
        if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool)):
            _fail(op, f"{name} must be an int or None, got {type(v).__name__}.", TypeError)
    if weight.dtype != mx.uint32:
        _fail(op, f"a quantized weight must be uint32 (as mx.quantize packs it), got {weight.dtype}.", TypeError)
    for name, a in (("scales", scales), ("biases", biases)):
        if a is None:
            continue
        if not isinstance(a, mx.array):
            _fail(op, f"{name} must be an mx.array, got {type(a).__name__}.", TypeError)
        if mode == "affine" and a.dtype not in FLOAT_DTYPES:
            _fail(op, f"{name} must be float32, float16 or bfloat16, got {a.dtype}.", TypeError)
    if mode != "affine":
        return group_size, bits
    if biases is None:
        _fail(op, "affine quantization needs biases (mx.quantize returns weight, scales, biases).")
    group_size = AFFINE_DEFAULTS["group_size"] if group_size is None else int(group_size)
    bits = AFFINE_DEFAULTS["bits"] if bits is None else int(bits)
    if bits not in (2, 3, 4, 5, 6, 8):
        _fail(op, f"bits must be one of 2, 3, 4, 5, 6, 8 for affine quantization, got {bits}.")
    if group_size not in AFFINE_GROUP_SIZES:
        _fail(op, f"group_size must be 32, 64 or 128 for affine quantization, got {group_size}.")
    K = x.shape[-1]
    N = weight.shape[0]
    if K % group_size:
        _fail(op, f"x has {K} features, not a multiple of group_size {group_size}.")
    if weight.shape[1] * 32 != K * bits:
        _fail(
            op,
            f"weight {weight.shape} does not hold {K} features at {bits} bits "
            f"(expected ({N}, {K * bits // 32})).",
        )
    want = (N, K // group_size)
    for name, a in (("scales", scales), ("biases", biases)):
        if a.shape != want:
            _fail(op, f"{name} must have shape {want} (N, K/group_size), got {a.shape}.")
    return group_size, bits



# ---- one function per op: check, then normalize ------------------------------


def rms_norm_args(x, eps):
    """-> (x, eps)."""
    check_array("rms_norm", "x", x)
    return x, check_eps("rms_norm", eps)


def rope_args(x, offset, base):
    """-> (x, offset, base)."""
    op = "rope"
    check_rope_input(op, "x", x)
    return x, check_offset(op, offset, x.shape[0], x.shape[2]), check_base(op, base)


def rope_qk_norm_args(q, k, head_gain, offset, base, eps):
    """-> (q, k, head_gain, offset, base, eps)."""
    op = "rope_qk_norm"
    _check_rope_qk_norm(op, q, k, head_gain)
    offset = check_offset(op, offset, q.shape[0], q.shape[2])
    if head_gain.dtype == mx.float64:  # as the scalar gains: Metal has no double
        head_gain = head_gain.astype(mx.float32)
    return q, k, head_gain, offset, check_base(op, base), check_eps(op, eps)


def residual_norm_args(x, y, gain, skip, skip_gain, eps):
    """-> (x, y, gain, skip, skip_gain, eps), gains as (1,) arrays (see check_gain)."""
    op = "residual_norm"
    gain, skip_gain = _check_residual_norm(op, x, y, gain, skip, skip_gain)
    return x, y, gain, skip, skip_gain, check_eps(op, eps)


def swiglu_args(gate, x):
    """-> (gate, x)."""
    op = "swiglu"
    check_array(op, "gate", gate)
    check_array(op, "x", x)
    check_pair(op, "gate", gate, "x", x)
    return gate, x


def linear_args(x, weight, scales, biases, group_size, bits, mode):
    """-> (x, weight, scales, biases, group_size, bits, mode), affine defaults filled in."""
    group_size, bits = _check_linear("linear", x, weight, scales, biases, group_size, bits, mode)
    return x, weight, scales, biases, group_size, bits, mode


# ---- attention ------------------------------------------------------------------

#: K/V bits the native quantized attention runs (mlx-lm's kv_bits 4 and 8).
ATTENTION_BITS = (4, 8)


def _check_4d(op: str, name: str, a) -> None:
    if a.ndim != 4:
        _fail(op, f"{name} must have 4 dimensions (B, H, L, D), got shape {a.shape}.")


def _check_attention_input(op: str, name: str, a) -> None:
    check_array(op, name, a)
    _check_4d(op, name, a)


def _check_attention_shapes(op: str, q, k_shape, Dk: int, k_name: str) -> None:
    if q.shape[0] != k_shape[0] or q.shape[3] != Dk:
        _fail(
            op,
            f"q (B, Hq, L, D) and {k_name} (B, Hkv, S, D) must agree on B and D, got q {q.shape} "
            f"and B = {k_shape[0]}, D = {Dk}.",
        )
    if q.shape[1] % k_shape[1]:
        _fail(op, f"q's heads Hq = {q.shape[1]} must be a multiple of the kv heads Hkv = {k_shape[1]}.")


def _check_scale(op: str, scale) -> float:
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        _fail(op, f"scale must be a float, got {type(scale).__name__}.", TypeError)
    if not math.isfinite(scale):
        _fail(op, f"scale must be a finite float, got {float(scale)!r}.")
    return float(scale)


def _check_attention_mask(op: str, mask, scores: tuple, out_dtype) -> None:
    """``None``, ``"causal"`` or a bool/float array broadcastable to ``scores`` (B, Hq, L, S)."""
    if mask is None:
        return
    if isinstance(mask, str):
        if mask != "causal":
            _fail(op, f"mask must be None, 'causal' or an mx.array, got {mask!r}.")
        return
    if not isinstance(mask, mx.array):
        _fail(op, f"mask must be None, 'causal' or an mx.array, got {type(mask).__name__}.", TypeError)
    if mask.dtype != mx.bool_ and not mx.issubdtype(mask.dtype, mx.floating):
        _fail(op, f"mask must be bool or floating, got {mask.dtype}.", TypeError)
    if mask.dtype != mx.bool_ and mx.result_type(mask.dtype, out_dtype) != out_dtype:
        _fail(op, f"a float mask must not be wider than the output dtype {out_dtype}, got {mask.dtype}.")
    shape = mask.shape
    if len(shape) > 4 or any(m not in (1, s) for m, s in zip(shape[::-1], scores[::-1])):
        _fail(op, f"mask of shape {shape} does not broadcast to (B, Hq, L, S) = {tuple(scores)}.")


def scaled_dot_product_attention_args(q, k, v, scale, mask):
    """-> (q, k, v, scale, mask)."""
    op = "scaled_dot_product_attention"
    for name, a in (("q", q), ("k", k), ("v", v)):
        _check_attention_input(op, name, a)
    if k.shape[:3] != v.shape[:3]:
        _fail(op, f"k and v must have the same (B, Hkv, S), got k {k.shape} and v {v.shape}.")
    _check_attention_shapes(op, q, k.shape, k.shape[3], "k")
    scale = _check_scale(op, scale)
    out_dtype = mx.result_type(q, k, v)
    _check_attention_mask(op, mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), out_dtype)
    return q, k, v, scale, mask


def _quantized_triple(op: str, name: str, t):
    if not isinstance(t, (tuple, list)) or len(t) != 3 or not all(isinstance(a, mx.array) for a in t):
        _fail(op, f"{name} must be mx.quantize's (codes, scales, biases), got {type(t).__name__}.", TypeError)
    return tuple(t)


def quantized_scaled_dot_product_attention_args(q, q_keys, q_values, scale, mask, group_size, bits):
    """-> (q, q_keys, q_values, scale, mask, group_size, bits), K/V as tuples."""
    op = "quantized_scaled_dot_product_attention"
    _check_attention_input(op, "q", q)
    q_keys = _quantized_triple(op, "q_keys", q_keys)
    q_values = _quantized_triple(op, "q_values", q_values)
    for name, v in (("group_size", group_size), ("bits", bits)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            _fail(op, f"{name} must be an int, got {type(v).__name__}.", TypeError)
    group_size, bits = int(group_size), int(bits)
    if bits not in ATTENTION_BITS:
        _fail(op, f"bits must be 4 or 8, got {bits}.")
    if group_size not in AFFINE_GROUP_SIZES:
        _fail(op, f"group_size must be 32, 64 or 128, got {group_size}.")
    out_dtype = q.dtype
    for name, (codes, scales, biases) in (("q_keys", q_keys), ("q_values", q_values)):
        if codes.dtype != mx.uint32:
            _fail(op, f"{name}[0] must be uint32 (as mx.quantize packs it), got {codes.dtype}.", TypeError)
        _check_4d(op, f"{name}[0]", codes)
        _check_attention_input(op, f"{name}[1]", scales)
        _check_attention_input(op, f"{name}[2]", biases)
        D = codes.shape[3] * 32 // bits
        if D % group_size:
            _fail(op, f"{name} holds rows of {D} elements, not a multiple of group_size {group_size}.")
        want = (*codes.shape[:3], D // group_size)
        for i, a in ((1, scales), (2, biases)):
            if a.shape != want:
                _fail(op, f"{name}[{i}] must have shape {want} (B, Hkv, S, D/group_size), got {a.shape}.")
        out_dtype = mx.result_type(out_dtype, scales.dtype, biases.dtype)
        if name == "q_values":
            if codes.shape[:3] != q_keys[0].shape[:3]:
                _fail(
                    op,
                    f"q_keys and q_values must have the same (B, Hkv, S), got {q_keys[0].shape} and {codes.shape}.",
                )
        else:
            _check_attention_shapes(op, q, codes.shape, D, "k")
    scale = _check_scale(op, scale)
    scores = (q.shape[0], q.shape[1], q.shape[2], q_keys[0].shape[2])
    _check_attention_mask(op, mask, scores, out_dtype)
    return q, q_keys, q_values, scale, mask, group_size, bits
