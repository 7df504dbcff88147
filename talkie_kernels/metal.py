"""Metal kernels (``mx.fast.metal_kernel``) for the four Talkie ops.

Same signatures, validation and semantics as ``talkie_kernels.reference``; the
differences are numerical: every output is computed in fp32 from the inputs and
rounded to the input dtype once (the reference rounds after each step), and the
RoPE angle is carried in extended precision (see ``_HEADER``), so fp32 results
stay within 3e-6 of the float64 oracle at any position |offset + l| < 2^24 —
positions must be exactly representable as fp32.

Kernels (DESIGN §4):

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
CPU emulator). Every op is an ``mx.custom_function`` whose vjp is the vjp of
the plain-MLX reference, so gradients equal plain MLX's.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from . import _checks as C
from . import reference

__all__ = ["rms_norm", "rope", "rope_qk_norm", "residual_norm", "rope_qk_norm_qkv"]

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
        kernel = _built[key] = _factory(name=name, header=_HEADER, **_KERNELS[name])
    return kernel


# ---------------------------------------------------------------------------
# Kernel sources


def _f32_literal(value: float) -> str:
    return f"{float(np.float32(value)):.9e}f"


def _two_pi_parts():
    # Three fp32 parts whose sum is 2π to ~2^-72 (Cody–Waite constants).
    two_pi = 2.0 * math.pi
    p1 = float(np.float32(two_pi))
    p2 = float(np.float32(two_pi - p1))
    p3 = float(np.float32(two_pi - p1 - p2))
    return p1, p2, p3


_P1, _P2, _P3 = _two_pi_parts()

_HEADER = f"""
// cos and sin of theta = pos * inv_freq, pos an exact integer in fp32 and
// inv_freq = f_hi + f_lo (an fp32 pair holding the float64 value).
// 1. theta = p + e exactly enough: p = fl(pos * f_hi), e = (pos * f_hi - p) by
//    fma, plus pos * f_lo.
// 2. Cody-Waite reduction by k = rint(p / 2pi), 2pi = P1 + P2 + P3:
//    p - k * P1 is exact (|k| < 2^22, p and k * P1 share the grid of P1's ulp);
//    the small terms go into t.
// 3. a + a_lo = r + t by two-sum; sin/cos(a + a_lo) to first order in a_lo.
// The reduced angle is correct to ~1e-8 for |pos| < 2^24, where plain fp32
// (pos * inv_freq rounded) is off by up to ulp(theta) / 2, e.g. 2e-4 at 5000.
// Should a compiler reassociate the two-sum (fast math), a_lo becomes 0 and
// the angle is still within ulp(a) / 2.
inline float2 talkie_rope_cos_sin(float pos, float f_hi, float f_lo) {{
  const float P1 = {_f32_literal(_P1)};
  const float P2 = {_f32_literal(_P2)};
  const float P3 = {_f32_literal(_P3)};
  const float INV_2PI = {_f32_literal(1.0 / (2.0 * math.pi))};
  const float p = pos * f_hi;
  const float e = metal::fma(pos, f_hi, -p) + pos * f_lo;
  const float k = metal::rint(p * INV_2PI);
  const float r = metal::fma(-k, P1, p);
  const float t = metal::fma(-k, P3, metal::fma(-k, P2, e));
  const float a = r + t;
  const float t_part = a - r;
  const float a_lo = (r - (a - t_part)) + (t - t_part);
  const float s = metal::precise::sin(a);
  const float c = metal::precise::cos(a);
  return float2(c - a_lo * s, s + a_lo * c);
}}

// Sum of v over the threadgroup: simd_sum, one partial per simdgroup in
// threadgroup memory, simd_sum of the partials (every simdgroup does the last
// step itself, so a single barrier suffices). Call once per kernel.
inline float talkie_threadgroup_sum(
    float v,
    threadgroup float* partials,
    uint simd_group,
    uint simd_lane,
    uint n_simd_groups) {{
  v = simd_sum(v);
  if (simd_lane == 0) {{
    partials[simd_group] = v;
  }}
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return simd_sum(simd_lane < n_simd_groups ? partials[simd_lane] : 0.0f);
}}
"""

# Shared by both RoPE kernels: this simdgroup's (b, l) and head range, the
# lane, and cos/sin of the lane's rotation pairs, computed once for all
# HEADS heads (the angle does not depend on h).
_ROPE_RUN = """
  const uint lane = thread_position_in_grid.x;
  // Simdgroup row of the grid -> (b, l, run of heads), runs fastest.
  const uint run = thread_position_in_grid.y;
  const int H = {x}_shape[1];
  const int L = {x}_shape[2];
  const int D = {x}_shape[3];
  const int half_d = D / 2;
  const int n_runs = (H + HEADS - 1) / HEADS;
  const int h_begin = (run % n_runs) * HEADS;
  const int h_end = h_begin + HEADS < H ? h_begin + HEADS : H;
  const int l = (run / n_runs) % L;
  const int b = run / (n_runs * L);
  // offset is (1,) or (B,). Exact in fp32 for |offset + l| < 2^24.
  const float pos = float(offset[(offset_shape[0] == 1 ? 0 : b) * offset_strides[0]] + l);
  float cos_t[P], sin_t[P];
  for (int t = 0; t < P; t++) {{
    const int i = lane + 32 * t;
    const float2 cs = i < half_d
        ? talkie_rope_cos_sin(pos, inv_freq[i], inv_freq[half_d + i])
        : float2(1.0f, 0.0f);
    cos_t[t] = cs.x;
    sin_t[t] = cs.y;
  }}
"""

_ROPE_QK_NORM_SOURCE = (
    """
  // Template: T output type; P = ceil(D / 64) rotation pairs per lane; HEADS
  // heads per simdgroup. Grid (32, B * L * ceil(H / HEADS)): one simdgroup
  // per (b, l) and run of HEADS heads, doing those rows of q and of k.
"""
    + _ROPE_RUN.format(x="q")
    + """
  for (int h = h_begin; h < h_end; h++) {
    const int64_t q_row = b * q_strides[0] + h * q_strides[1] + l * q_strides[2];
    const int64_t k_row = b * k_strides[0] + h * k_strides[1] + l * k_strides[2];
    const int64_t q_d = q_strides[3];
    const int64_t k_d = k_strides[3];
    const int64_t out_row = ((int64_t(b) * H + h) * L + l) * D;

    // 1. Rotate in fp32 (inverse rotation: y1 = x1 c + x2 s, y2 = x2 c - x1 s).
    float q1[P], q2[P], k1[P], k2[P];
    float q_ss = 0.0f;
    float k_ss = 0.0f;
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      q1[t] = q2[t] = k1[t] = k2[t] = 0.0f;
      if (i < half_d) {
        const float qa = static_cast<float>(q[q_row + i * q_d]);
        const float qb = static_cast<float>(q[q_row + (i + half_d) * q_d]);
        const float ka = static_cast<float>(k[k_row + i * k_d]);
        const float kb = static_cast<float>(k[k_row + (i + half_d) * k_d]);
        q1[t] = qa * cos_t[t] + qb * sin_t[t];
        q2[t] = qb * cos_t[t] - qa * sin_t[t];
        k1[t] = ka * cos_t[t] + kb * sin_t[t];
        k2[t] = kb * cos_t[t] - ka * sin_t[t];
        q_ss += q1[t] * q1[t] + q2[t] * q2[t];
        k_ss += k1[t] * k1[t] + k2[t] * k2[t];
      }
    }

    // 2. RMS over D of the fp32 rotated rows: the simdgroup holds the whole
    //    row, so simd_sum alone reduces it (no threadgroup memory, no barrier).
    q_ss = simd_sum(q_ss);
    k_ss = simd_sum(k_ss);
    // 3. The head gain folds into q's scale; one rounding per output.
    const float q_scale = metal::precise::rsqrt(q_ss / D + eps) *
        static_cast<float>(head_gain[h * head_gain_strides[0]]);
    const float k_scale = metal::precise::rsqrt(k_ss / D + eps);
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      if (i < half_d) {
        q_out[out_row + i] = static_cast<T>(q1[t] * q_scale);
        q_out[out_row + i + half_d] = static_cast<T>(q2[t] * q_scale);
        k_out[out_row + i] = static_cast<T>(k1[t] * k_scale);
        k_out[out_row + i + half_d] = static_cast<T>(k2[t] * k_scale);
      }
    }
  }
"""
)

_ROPE_SOURCE = (
    """
  // Template: T output type; P = ceil(D / 64) rotation pairs per lane; HEADS
  // heads per simdgroup. Grid (32, B * L * ceil(H / HEADS)).
"""
    + _ROPE_RUN.format(x="x")
    + """
  for (int h = h_begin; h < h_end; h++) {
    const int64_t x_row = b * x_strides[0] + h * x_strides[1] + l * x_strides[2];
    const int64_t x_d = x_strides[3];
    const int64_t out_row = ((int64_t(b) * H + h) * L + l) * D;
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      if (i < half_d) {
        const float x1 = static_cast<float>(x[x_row + i * x_d]);
        const float x2 = static_cast<float>(x[x_row + (i + half_d) * x_d]);
        out[out_row + i] = static_cast<T>(x1 * cos_t[t] + x2 * sin_t[t]);
        out[out_row + i + half_d] = static_cast<T>(x2 * cos_t[t] - x1 * sin_t[t]);
      }
    }
  }
"""
)

# Shared by both norm kernels: the row of this threadgroup, this thread's
# place in it, and the threadgroup-memory partials of the reduction.
_NORM_ROW = """
  threadgroup float partials[32];
  const int D = x_shape[x_ndim - 1];
  const int lid = thread_position_in_threadgroup.x;
  const int n_threads = threads_per_threadgroup.x;
  const int64_t row = int64_t(threadgroup_position_in_grid.x) * D;
"""

_NORM_SCALE = """
  const float scale = metal::precise::rsqrt(
      talkie_threadgroup_sum(
          ss, partials, simdgroup_index_in_threadgroup,
          thread_index_in_simdgroup, n_threads / 32) / D + eps);
"""

_RMS_NORM_SOURCE = (
    """
  // Template: T output type; N_READS elements per thread held in registers,
  // or LOOPED: any row length, read twice. Grid (n_threads * rows): one
  // threadgroup of n_threads (a multiple of 32) per row.
"""
    + _NORM_ROW
    + """
  // 1. Sum of squares in fp32.
  float v[N_READS];
  float ss = 0.0f;
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      const float a = static_cast<float>(x[row + i]);
      ss += a * a;
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      v[r] = i < D ? static_cast<float>(x[row + i]) : 0.0f;
      ss += v[r] * v[r];
    }
  }
  // 2. scale = rsqrt(mean + eps), 3. y = x * scale rounded once.
"""
    + _NORM_SCALE
    + """
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      out[row + i] = static_cast<T>(static_cast<float>(x[row + i]) * scale);
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      if (i < D) {
        out[row + i] = static_cast<T>(v[r] * scale);
      }
    }
  }
"""
)

_RESIDUAL_NORM_SOURCE = (
    """
  // Template: T output type; HAS_SKIP adds skip_gain * skip (otherwise skip
  // and skip_gain are unread placeholders); N_READS / LOOPED as in rms_norm.
  // Grid (n_threads * rows): one threadgroup of n_threads per row.
"""
    + _NORM_ROW
    + """
  const float g = static_cast<float>(gain[0]);
  const float sg = HAS_SKIP ? static_cast<float>(skip_gain[0]) : 0.0f;
  // 1. x_new = x + g*y (+ sg*skip) in fp32, rounded once to T; the norm reads
  //    the rounded value, as the next layer of the plain model does.
  float v[N_READS];
  float ss = 0.0f;
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      float a = metal::fma(g, static_cast<float>(y[row + i]), static_cast<float>(x[row + i]));
      if (HAS_SKIP) {
        a = metal::fma(sg, static_cast<float>(skip[row + i]), a);
      }
      const T stored = static_cast<T>(a);
      x_new[row + i] = stored;
      a = static_cast<float>(stored);
      ss += a * a;
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      v[r] = 0.0f;
      if (i < D) {
        float a = metal::fma(g, static_cast<float>(y[row + i]), static_cast<float>(x[row + i]));
        if (HAS_SKIP) {
          a = metal::fma(sg, static_cast<float>(skip[row + i]), a);
        }
        const T stored = static_cast<T>(a);
        x_new[row + i] = stored;
        v[r] = static_cast<float>(stored);
      }
      ss += v[r] * v[r];
    }
  }
  // 2. scale = rsqrt(mean + eps), 3. normed = x_new * scale rounded once.
"""
    + _NORM_SCALE
    + """
  if (LOOPED) {
    // Each thread rereads the elements it wrote itself.
    for (int i = lid; i < D; i += n_threads) {
      normed[row + i] = static_cast<T>(static_cast<float>(x_new[row + i]) * scale);
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      if (i < D) {
        normed[row + i] = static_cast<T>(v[r] * scale);
      }
    }
  }
"""
)

_KERNELS = {
    "talkie_rope_qk_norm": dict(
        input_names=["q", "k", "head_gain", "offset", "inv_freq", "eps"],
        output_names=["q_out", "k_out"],
        source=_ROPE_QK_NORM_SOURCE,
        ensure_row_contiguous=False,
    ),
    "talkie_rope": dict(
        input_names=["x", "offset", "inv_freq"],
        output_names=["out"],
        source=_ROPE_SOURCE,
        ensure_row_contiguous=False,
    ),
    "talkie_rms_norm": dict(
        input_names=["x", "eps"],
        output_names=["out"],
        source=_RMS_NORM_SOURCE,
        ensure_row_contiguous=True,
    ),
    "talkie_residual_norm": dict(
        input_names=["x", "y", "skip", "gain", "skip_gain", "eps"],
        output_names=["x_new", "normed"],
        source=_RESIDUAL_NORM_SOURCE,
        ensure_row_contiguous=True,
    ),
}

# ---------------------------------------------------------------------------
# Launch helpers

_SIMD = 32
# Heads per simdgroup share one cos/sin evaluation: 4 keeps decode
# (1, 40, 1, 128) at 10 simdgroups while cutting the transcendentals 4x.
_ROPE_HEADS_PER_SIMDGROUP = 4
_ROPE_SIMDGROUPS_PER_THREADGROUP = 8
_NORM_READS = 8
_NORM_MAX_THREADS = 1024

_inv_freq_tables: dict = {}
_eps_arrays: dict = {}


def _inv_freq_table(head_dim: int, base: float) -> mx.array:
    """(D,) fp32: base^(-2i/D) for i < D/2 as hi parts, then the lo parts (float64 on the host)."""
    key = (head_dim, base)
    table = _inv_freq_tables.get(key)
    if table is None:
        inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        hi = inv.astype(np.float32)
        lo = (inv - hi.astype(np.float64)).astype(np.float32)
        table = _inv_freq_tables[key] = mx.array(np.concatenate([hi, lo]))
    return table


def _eps_array(eps: float) -> mx.array:
    arr = _eps_arrays.get(eps)
    if arr is None:
        arr = _eps_arrays[eps] = mx.array(eps, dtype=mx.float32)
    return arr


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
# Forward passes (kernels) with the reference's vjp


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


@_rope_qk_norm_fn.vjp
def _rope_qk_norm_vjp(primals, cotangents, outputs):
    q, k, head_gain, offsets, base, eps = primals
    offset = mx.broadcast_to(offsets, (q.shape[0],))
    _, grads = mx.vjp(
        lambda q, k, g: reference.rope_qk_norm(q, k, g, offset, base=base, eps=eps),
        [q, k, head_gain],
        list(cotangents),
    )
    return (*grads, mx.zeros_like(offsets))


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


@_rope_fn.vjp
def _rope_vjp(primals, cotangent, output):
    x, offsets, base = primals
    offset = mx.broadcast_to(offsets, (x.shape[0],))
    _, (grad,) = mx.vjp(lambda x: reference.rope(x, offset, base=base), [x], [cotangent])
    return grad, mx.zeros_like(offsets)


@mx.custom_function
def _rms_norm_fn(x, eps):
    if x.size == 0:
        return mx.zeros(x.shape, x.dtype)
    launch = _norm_launch(x)
    return _kernel("talkie_rms_norm")(
        inputs=[x, _eps_array(eps)],
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
        **launch,
    )[0]


@_rms_norm_fn.vjp
def _rms_norm_vjp(primals, cotangent, output):
    x, eps = primals
    _, (grad,) = mx.vjp(lambda x: reference.rms_norm(x, eps), [x], [cotangent])
    return (grad,)


@mx.custom_function
def _residual_norm_fn(x, y, gain, skip, skip_gain, eps):
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


@_residual_norm_fn.vjp
def _residual_norm_vjp(primals, cotangents, outputs):
    x, y, gain, skip, skip_gain, eps = primals
    arrays = [x, y, gain] + ([skip, skip_gain] if skip is not None else [])

    def f(x, y, gain, skip=None, skip_gain=None):
        return reference.residual_norm(x, y, gain, skip, skip_gain, eps=eps)

    _, grads = mx.vjp(f, arrays, list(cotangents))
    return tuple(grads)


# ---------------------------------------------------------------------------
# Public ops


def rms_norm(x: mx.array, eps: float | None = None) -> mx.array:
    """Weightless RMSNorm over the last axis (any leading shape).

    1. ``ss = Σ x²`` in fp32 (one threadgroup per row).
    2. ``y = x · rsqrt(ss / D + eps)`` in fp32, rounded once to ``x.dtype``.
    """
    C.check_array("rms_norm", "x", x)
    return _rms_norm_fn(x, C.check_eps("rms_norm", eps))


def rope(x: mx.array, offset=0, *, base: float = 1e6) -> mx.array:
    """Talkie's inverse-rotation RoPE.

    Shapes: x (B, H, L, D), D even, any strides; offset int, () or (B,) -> (B, H, L, D).
    Positions ``offset[b] + l`` must satisfy |pos| < 2^24 (exact in fp32).

    1. ``θ_i = pos · base^(-2i/D)`` in extended precision, reduced mod 2π (fp32 math).
    2. ``y1 = x1·cos θ + x2·sin θ``; ``y2 = −x1·sin θ + x2·cos θ`` in fp32,
       rounded once to ``x.dtype``.
    """
    C.check_rope_input("rope", "x", x)
    offset = C.check_offset("rope", offset, x.shape[0])
    base = C.check_base("rope", base)
    return _rope_fn(x, _offsets(offset), base)


def rope_qk_norm(q, k, head_gain, offset=0, *, base: float = 1e6, eps=None):
    """RoPE, weightless RMSNorm over D and the per-head gain on q, for q and k in one dispatch.

    Shapes: q, k (B, H, L, D), any strides; head_gain (H,); offset int, () or
    (B,) -> (q, k), each (B, H, L, D) row-contiguous. |offset + l| < 2^24.

    1. Rotate as in ``rope``, in fp32 (not rounded).
    2. ``scale = rsqrt(mean(y²) + eps)`` over D, fp32.
    3. ``q = y_q · scale_q · head_gain[h]``, ``k = y_k · scale_k``, each rounded once.
    """
    op = "rope_qk_norm"
    C.check_rope_qk_norm(op, q, k, head_gain)
    offset = C.check_offset(op, offset, q.shape[0])
    base = C.check_base(op, base)
    eps = C.check_eps(op, eps)
    return _rope_qk_norm_fn(q, k, head_gain, _offsets(offset), base, eps)


def residual_norm(x, y, gain, skip=None, skip_gain=None, *, eps=None):
    """Gated residual add (plus optional gated skip), then weightless RMSNorm; one dispatch.

    Shapes: x, y, skip (..., D); gain, skip_gain (1,) or float -> (x_new, normed).

    1. ``x_new = x + gain·y [+ skip_gain·skip]`` in fp32 (gains at their own
       precision), rounded once to ``x.dtype``.
    2. ``normed = x_new · rsqrt(mean(x_new²) + eps)`` from the rounded x_new, fp32,
       rounded once.
    """
    op = "residual_norm"
    gain, skip_gain = C.check_residual_norm(op, x, y, gain, skip, skip_gain)
    eps = C.check_eps(op, eps)
    return _residual_norm_fn(x, y, gain, skip, skip_gain, eps)


def rope_qk_norm_qkv(qkv, head_gain, offset=0, *, base: float = 1e6, eps=None):
    """``rope_qk_norm`` reading the fused QKV projection; for the model (DESIGN §7).

    Shapes: qkv (B, L, 3·H·D) or (B, L, 3, H, D), with H = len(head_gain);
    head_gain (H,); offset int, () or (B,) -> (q, k, v), each (B, H, L, D).

    q and k are read in place through strided views (no transpose copy) and
    written row-contiguous; v is the (B, H, L, D) view of its third, as in the
    plain model. Differentiable through the views and ``rope_qk_norm``.
    """
    op = "rope_qk_norm_qkv"
    C.check_array(op, "qkv", qkv)
    if not isinstance(head_gain, mx.array) or head_gain.ndim != 1:
        C._fail(op, "head_gain must be an mx.array of shape (H,).", TypeError)
    H = head_gain.shape[0]
    if qkv.ndim == 3:
        B, L, width = qkv.shape
        if H == 0 or width % (3 * H):
            C._fail(op, f"qkv must have shape (B, L, 3·H·D) with H = {H}, got {qkv.shape}.")
        qkv = qkv.reshape(B, L, 3, H, width // (3 * H))
    elif qkv.ndim != 5 or qkv.shape[2] != 3 or qkv.shape[3] != H:
        C._fail(op, f"qkv must have shape (B, L, 3·H·D) or (B, L, 3, H, D) with H = {H}, got {qkv.shape}.")
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    C.check_rope_qk_norm(op, q, k, head_gain)
    offset = C.check_offset(op, offset, q.shape[0])
    base = C.check_base(op, base)
    eps = C.check_eps(op, eps)
    q, k = _rope_qk_norm_fn(q, k, head_gain, _offsets(offset), base, eps)
    return q, k, v
