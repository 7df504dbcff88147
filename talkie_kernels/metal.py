"""Metal kernels (``mx.fast.metal_kernel``) for four of the eight ops: ``rms_norm``,
``rope``, ``rope_qk_norm`` and ``residual_norm``. ``swiglu``, ``linear`` and the two
attention ops are MLX's own GPU ops, as in ``talkie_kernels.reference``.

Same signatures, validation and semantics as ``talkie_kernels.reference``; the
kernels' differences are numerical: every output is computed in fp32 from the
inputs and rounded to the input dtype once (the reference rounds after each
step), and the RoPE angle is carried in extended precision without
``double`` (see ``msl/rope.header.metal``): the position is split into two
16-bit halves, each exact in fp32, so fp32 results stay at fp32 rounding
(~1e-7) of the float64 oracle at every position ``offset + l``: any int32
offset, and sums past 2^31 - 1 from an offset array, as the native kernel's.

Kernels: each is a header and a body of plain MSL in ``msl/``
(``<op>.body.metal``; the norms share ``rms_norm.header.metal``, the RoPE
kernels ``rope.header.metal``), passed to ``mx.fast.metal_kernel`` as they are,
which wraps the body in the kernel's signature. Types and integer constants
(``T``, ``P``, ``HEADS``, ``N_READS``, ``LOOPED``, ``HAS_SKIP``) are its
``template=`` arguments; there is no other substitution.

* ``talkie_rope_qk_norm`` / ``talkie_rope``: one simdgroup (32 lanes) per
  (b, l) and run of 4 heads (template ``HEADS``), looping over the heads; lane
  j holds the rotation pairs (i, i + D/2) for i = j + 32·t, t < P = ceil(D/64)
  (template ``P``; for D = 128: elements j, j+32, j+64, j+96), so a rotation
  never leaves its lane. cos/sin are computed once per pair for the run of
  heads and for both q and k; each row's sum of squares goes through
  ``simd_sum`` alone, no threadgroup memory or barrier. q, k and the
  per-batch offsets are read through their strides
  (``ensure_row_contiguous=False``), so the transposed (B, L, H, D) ->
  (B, H, L, D) views the model passes are never copied. Offsets are an input
  array, so no recompilation per position; D is read at run time, so one
  compiled kernel serves every D with the same P.
* ``talkie_rms_norm`` / ``talkie_residual_norm``: one threadgroup per row of the
  last axis; fp32 sum of squares through ``simd_sum``, one partial per
  simdgroup in a 32-slot threadgroup array, ``simd_sum`` again;
  ``metal::precise::rsqrt``. Rows up to 8 · 1024 elements stay in registers
  (``LOOPED = false``); longer rows are read twice. Non-contiguous inputs are
  copied by MLX (``ensure_row_contiguous=True``): the model's residual stream
  is contiguous.

Each kernel object is built on first use, once per kernel factory
(``_set_kernel_factory``; ``talkie_kernels.testing.emulate_metal`` swaps in the
CPU emulator). Every kernel op is an ``mx.custom_function`` whose vjp and jvp
are the plain-MLX reference's, so derivatives equal plain MLX's.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from importlib import resources

import mlx.core as mx
import numpy as np

from . import _checks as C
from . import reference

__all__ = [
    "rms_norm",
    "rope",
    "rope_qk_norm",
    "residual_norm",
    "swiglu",
    "linear",
    "scaled_dot_product_attention",
    "quantized_scaled_dot_product_attention",
]

# ---------------------------------------------------------------------------
# Kernel factory and cache

_DEFAULT_FACTORY = mx.fast.metal_kernel
_factory = _DEFAULT_FACTORY
_built: dict = {}


def _set_kernel_factory(factory):
    """Build kernels with ``factory`` (``mx.fast.metal_kernel``'s signature) from now on.

    Returns the previous factory; ``None`` restores ``mx.fast.metal_kernel``.
    Kernels are cached per (factory, kernel name), so switching back and forth
    builds nothing twice.
    """
    global _factory
    previous = _factory
    _factory = _DEFAULT_FACTORY if factory is None else factory
    return previous


def _kernel(name: str):
    key = (_factory, name)
    kernel = _built.get(key)
    if kernel is None:
        spec = _KERNELS[name]
        kernel = _built[key] = _factory(
            name=name, **{**spec, "header": _msl(spec["header"]), "source": _msl(spec["source"])}
        )
    return kernel


# ---------------------------------------------------------------------------
# Kernels: metal_kernel's arguments, with header and source named by their
# files in msl/. Types and integer constants are template arguments
# (``_rope_launch``, ``_norm_launch``); the files are used as they are.

_KERNELS = {
    "talkie_rope_qk_norm": dict(
        header="rope.header.metal",
        source="rope_qk_norm.body.metal",
        input_names=["q", "k", "head_gain", "offset", "inv_freq", "eps"],
        output_names=["q_out", "k_out"],
        ensure_row_contiguous=False,
    ),
    "talkie_rope": dict(
        header="rope.header.metal",
        source="rope.body.metal",
        input_names=["x", "offset", "inv_freq"],
        output_names=["out"],
        ensure_row_contiguous=False,
    ),
    "talkie_rms_norm": dict(
        header="rms_norm.header.metal",
        source="rms_norm.body.metal",
        input_names=["x", "eps"],
        output_names=["out"],
        ensure_row_contiguous=True,
    ),
    "talkie_residual_norm": dict(
        header="rms_norm.header.metal",
        source="residual_norm.body.metal",
        input_names=["x", "y", "skip", "gain", "skip_gain", "eps"],
        output_names=["x_new", "normed"],
        ensure_row_contiguous=True,
    ),
}


def _msl(file: str) -> str:
    """The text of ``talkie_kernels/msl/<file>`` (from the installed package)."""
    return resources.files(__package__).joinpath("msl", file).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Launch helpers

_SIMD = 32
# Heads per simdgroup share one cos/sin evaluation: 4 keeps decode
# (1, 40, 1, 128) at 10 simdgroups while cutting the transcendentals 4x.
_ROPE_HEADS_PER_SIMDGROUP = 4
_ROPE_SIMDGROUPS_PER_THREADGROUP = 8
_NORM_READS = 8
_NORM_MAX_THREADS = 1024

# 2π to 60 digits, for the reduction of the frequency table.
_TWO_PI = 2 * Fraction("3.14159265358979323846264338327950288419716939937510582097494")


def _fp32_pair(values) -> np.ndarray:
    """(2, n) fp32: exact rationals as hi + lo, hi the fp32 rounding, lo that of the rest."""
    hi = np.array([float(v) for v in values], dtype=np.float32)
    lo = np.array([float(v - Fraction(float(h))) for v, h in zip(values, hi)], dtype=np.float32)
    return np.stack([hi, lo])


@functools.cache
def _inv_freq_table(head_dim: int, base: float) -> mx.array:
    """(2D,) fp32: four runs of D/2 for the RoPE kernels (msl/rope.header.metal).

    ``f = base^(-2i/D)`` (float64, as the native kernel and the oracle) as
    fp32 hi and lo parts, then ``g = 2^16 · f`` reduced mod 2π into [-π, π],
    computed exactly from the float64 ``f``, as hi and lo parts: the kernel
    splits the position as ``hi · 2^16 + lo`` and takes ``hi · g + lo · f``.
    """
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    f = [Fraction(float(v)) for v in inv]
    g = [v * 2**16 for v in f]
    g = [v - round(v / _TWO_PI) * _TWO_PI for v in g]
    return mx.array(np.concatenate([*_fp32_pair(f), *_fp32_pair(g)]))


@functools.cache
def _eps_array(eps: float) -> mx.array:
    return mx.array(eps, dtype=mx.float32)


def _offsets(offset) -> mx.array:
    """Offsets as (1,) or (B,) int32: a Python int becomes a leaf array, so no
    extra dispatch fills it on the GPU."""
    if isinstance(offset, int):
        return mx.array([offset], dtype=mx.int32)
    return offset.reshape(1) if offset.ndim == 0 else offset


def _rope_launch(x: mx.array):
    B, H, L, D = x.shape
    runs = B * L * -(-H // _ROPE_HEADS_PER_SIMDGROUP)
    pairs_per_lane = -(-(D // 2) // _SIMD)
    return dict(
        template=[("T", x.dtype), ("P", pairs_per_lane), ("HEADS", _ROPE_HEADS_PER_SIMDGROUP)],
        grid=(_SIMD, runs, 1),
        threadgroup=(_SIMD, min(runs, _ROPE_SIMDGROUPS_PER_THREADGROUP), 1),
    )


def _norm_launch(x: mx.array):
    D = x.shape[-1]
    rows = x.size // D
    looped = D > _NORM_READS * _NORM_MAX_THREADS
    threads = min(_NORM_MAX_THREADS, -(-D // (_NORM_READS * _SIMD)) * _SIMD)
    return dict(
        template=[("T", x.dtype), ("N_READS", _NORM_READS), ("LOOPED", looped)],
        grid=(threads * rows, 1, 1),
        threadgroup=(threads, 1, 1),
    )


# ---------------------------------------------------------------------------
# Forward passes (kernels) with the reference's vjp and jvp


def _reference_derivatives(fn, parts):
    """Give the custom function ``fn`` the vjp and jvp of the reference.

    ``parts(primals) -> (f, arrays)``: the reference as a function of the
    differentiable array inputs, and those inputs (the first ``len(arrays)``
    primals). Other array primals (the offsets) get zero cotangents.
    """

    def vjp(primals, cotangents, outputs):
        f, arrays = parts(primals)
        cotangents = list(cotangents) if isinstance(cotangents, (list, tuple)) else [cotangents]
        _, grads = mx.vjp(f, list(arrays), cotangents)
        rest = [mx.zeros_like(p) for p in primals[len(arrays):] if isinstance(p, mx.array)]
        return (*grads, *rest)

    def jvp(primals, tangents):
        f, arrays = parts(primals)
        # A None tangent (an input held constant) as zeros.
        tangents = [mx.zeros_like(a) if t is None else t for a, t in zip(arrays, tangents)]
        out = mx.jvp(f, list(arrays), tangents)[1]
        return out[0] if len(out) == 1 else tuple(out)

    fn.vjp(vjp)
    fn.jvp(jvp)


@mx.custom_function
def _rope_qk_norm_fn(q, k, head_gain, offsets, base, eps):
    if q.size == 0:
        return mx.zeros(q.shape, q.dtype), mx.zeros(k.shape, k.dtype)
    q_out, k_out = _kernel("talkie_rope_qk_norm")(
        inputs=[q, k, head_gain, offsets, _inv_freq_table(q.shape[-1], base), _eps_array(eps)],
        output_shapes=[q.shape, k.shape],
        output_dtypes=[q.dtype, k.dtype],
        **_rope_launch(q),
    )
    return q_out, k_out


def _rope_qk_norm_parts(primals):
    q, k, head_gain, offsets, base, eps = primals
    offset = mx.broadcast_to(offsets, (q.shape[0],))
    return (lambda q, k, g: reference._rope_qk_norm(q, k, g, offset, base, eps)), (q, k, head_gain)


_reference_derivatives(_rope_qk_norm_fn, _rope_qk_norm_parts)


@mx.custom_function
def _rope_fn(x, offsets, base):
    if x.size == 0:
        return mx.zeros(x.shape, x.dtype)
    return _kernel("talkie_rope")(
        inputs=[x, offsets, _inv_freq_table(x.shape[-1], base)],
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        **_rope_launch(x),
    )[0]


def _rope_parts(primals):
    x, offsets, base = primals
    offset = mx.broadcast_to(offsets, (x.shape[0],))
    return (lambda x: reference._rope(x, offset, base)), (x,)


_reference_derivatives(_rope_fn, _rope_parts)


@mx.custom_function
def _rms_norm(x, eps):
    if x.size == 0:
        return mx.zeros(x.shape, x.dtype)
    return _kernel("talkie_rms_norm")(
        inputs=[x, _eps_array(eps)],
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        **_norm_launch(x),
    )[0]


def _rms_norm_parts(primals):
    x, eps = primals
    return (lambda x: reference._rms_norm(x, eps)), (x,)


_reference_derivatives(_rms_norm, _rms_norm_parts)


@mx.custom_function
def _residual_norm(x, y, gain, skip, skip_gain, eps):
    if x.size == 0:
        return mx.zeros(x.shape, x.dtype), mx.zeros(x.shape, x.dtype)
    launch = _norm_launch(x)
    has_skip = skip is not None
    launch["template"].append(("HAS_SKIP", has_skip))
    x_new, normed = _kernel("talkie_residual_norm")(
        inputs=[
            x,
            y,
            # Without skip, the (1,) gain stands in for skip and skip_gain:
            # unread, and never copied for contiguity as x would be.
            skip if has_skip else gain,
            gain,
            skip_gain if has_skip else gain,
            _eps_array(eps),
        ],
        output_shapes=[x.shape, x.shape],
        output_dtypes=[x.dtype, x.dtype],
        **launch,
    )
    return x_new, normed


def _residual_norm_parts(primals):
    x, y, gain, skip, skip_gain, eps = primals
    arrays = (x, y, gain) + ((skip, skip_gain) if skip is not None else ())

    def f(x, y, gain, skip=None, skip_gain=None):
        return reference._residual_norm(x, y, gain, skip, skip_gain, eps)

    return f, arrays


_reference_derivatives(_residual_norm, _residual_norm_parts)


# ---------------------------------------------------------------------------
# The unchecked ops the dispatcher calls (arguments from _checks.<op>_args;
# _rms_norm and _residual_norm are the custom functions above)


def _rope(x, offset, base):
    return _rope_fn(x, _offsets(offset), base)


def _rope_qk_norm(q, k, head_gain, offset, base, eps):
    return _rope_qk_norm_fn(q, k, head_gain, _offsets(offset), base, eps)


# On the GPU MLX compiles the activation into one element-wise kernel.
_swiglu = mx.compile(reference._swiglu, shapeless=True)
# On the GPU MLX's own matmuls are already near the memory limit.
_linear = reference._linear
# Attention on the GPU is MLX's own fused op (and mlx-lm's quantized composition).
_scaled_dot_product_attention = reference._scaled_dot_product_attention
_quantized_scaled_dot_product_attention = reference._quantized_scaled_dot_product_attention


# ---------------------------------------------------------------------------
# Public ops


def rms_norm(x: mx.array, eps: float | None = None) -> mx.array:
    """Weightless RMSNorm over the last axis (any leading shape).

    1. ``ss = Σ x²`` in fp32 (one threadgroup per row).
    2. ``y = x · rsqrt(ss / D + eps)`` in fp32, rounded once to ``x.dtype``.
    """
    return _rms_norm(*C.rms_norm_args(x, eps))


def rope(x: mx.array, offset=0, *, base: float = 1e6) -> mx.array:
    """Talkie's inverse-rotation RoPE.

    Shapes: x (B, H, L, D), D even, any strides; offset int, () or (B,) -> (B, H, L, D).
    Any int32 offset works (positions ``offset[b] + l`` are never rounded).

    1. ``θ_i = pos · base^(-2i/D)`` in extended precision, reduced mod 2π (fp32
       math: ``pos = hi · 2^16 + lo``, ``θ ≡ hi · (2^16 · base^(-2i/D) mod 2π)
       + lo · base^(-2i/D)``, products and sums carried error-free): within
       ~2e-9 of the exact angle (of the float64 frequency) at any position.
    2. ``y1 = x1·cos θ + x2·sin θ``; ``y2 = −x1·sin θ + x2·cos θ`` in fp32,
       rounded once to ``x.dtype``.
    """
    return _rope(*C.rope_args(x, offset, base))


def rope_qk_norm(q, k, head_gain, offset=0, *, base: float = 1e6, eps=None):
    """RoPE, weightless RMSNorm over D and the per-head gain on q, for q and k in one dispatch.

    Shapes: q, k (B, H, L, D), any strides; head_gain (H,); offset int, () or
    (B,) -> (q, k), each (B, H, L, D) row-contiguous. Any int32 offset works,
    as in ``rope``.

    1. Rotate as in ``rope``, in fp32 (not rounded).
    2. ``scale = rsqrt(mean(y²) + eps)`` over D, fp32.
    3. ``q = y_q · scale_q · head_gain[h]``, ``k = y_k · scale_k``, each rounded once.
    """
    return _rope_qk_norm(*C.rope_qk_norm_args(q, k, head_gain, offset, base, eps))


def residual_norm(x, y, gain, skip=None, skip_gain=None, *, eps=None):
    """Gated residual add (plus optional gated skip), then weightless RMSNorm; one dispatch.

    Shapes: x, y, skip (..., D); gain, skip_gain (1,) or float -> (x_new, normed).

    1. ``x_new = x + gain·y [+ skip_gain·skip]`` in fp32 (gains at their own
       precision), rounded once to ``x.dtype``.
    2. ``normed = x_new · rsqrt(mean(x_new²) + eps)`` from the rounded x_new, fp32,
       rounded once.
    """
    return _residual_norm(*C.residual_norm_args(x, y, gain, skip, skip_gain, eps))


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) · x``: mlx-lm's composition, compiled into one MLX kernel
    (see ``reference.swiglu``)."""
    return _swiglu(*C.swiglu_args(gate, x))


def linear(x, weight, scales=None, biases=None, *, group_size=None, bits=None, mode="affine"):
    """``x @ weight.T``, dense or MLX-quantized: MLX's own ``matmul`` /
    ``quantized_matmul`` (see ``reference.linear``)."""
    return _linear(*C.linear_args(x, weight, scales, biases, group_size, bits, mode))


def scaled_dot_product_attention(q, k, v, *, scale, mask=None):
    """MLX's own ``mx.fast.scaled_dot_product_attention`` (see ``reference.scaled_dot_product_attention``)."""
    return _scaled_dot_product_attention(*C.scaled_dot_product_attention_args(q, k, v, scale, mask))


def quantized_scaled_dot_product_attention(q, q_keys, q_values, *, scale, mask=None, group_size=64, bits=8):
    """mlx-lm's composition (see ``reference.quantized_scaled_dot_product_attention``)."""
    return _quantized_scaled_dot_product_attention(
        *C.quantized_scaled_dot_product_attention_args(q, q_keys, q_values, scale, mask, group_size, bits)
    )
