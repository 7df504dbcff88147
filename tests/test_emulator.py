"""The Metal emulator (talkie_kernels.testing): small kernels against NumPy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

from talkie_kernels import metal, reference, testing
from talkie_kernels.testing import _build
from talkie_kernels.testing import metal_kernel

import oracle as O

DTYPES = [(mx.float32, 1e-6), (mx.float16, 1e-3), (mx.bfloat16, 8e-3)]


# ---------------------------------------------------------------------------
# Elementwise, templates, dtypes


EXP_SOURCE = """
    uint elem = thread_position_in_grid.x;
    T tmp = inp[elem];
    out[elem] = metal::exp(tmp) * scale + tmp;
"""


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_elementwise_template_dtype(dtype, tol):
    kernel = metal_kernel("exp_scale", ["inp", "scale"], ["out"], EXP_SOURCE)
    a = mx.random.normal((5, 37), key=mx.random.key(0)).astype(dtype)
    scale = mx.array(0.5, dtype=dtype)
    (out,) = kernel(
        inputs=[a, scale],
        template=[("T", dtype)],
        grid=(a.size, 1, 1),
        threadgroup=(64, 1, 1),
        output_shapes=[a.shape],
        output_dtypes=[dtype],
    )
    assert out.dtype == dtype and out.shape == a.shape
    x = O.to64(a)
    assert O.rel_err(out, np.exp(x) * 0.5 + x) <= 2 * tol


def test_half_and_bfloat_round_to_nearest_even():
    # Every float32 that lies exactly between two 16-bit values, plus edge cases.
    src = """
        uint i = thread_position_in_grid.x;
        h[i] = half(x[i]);
        b[i] = bfloat16_t(x[i]);
    """
    kernel = metal_kernel("round16", ["x"], ["h", "b"], src)
    vals = np.array(
        [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8, 65519.0, 65520.0, 1e-8,
         2**-24 * 1.5, -2.5e-5, np.inf, -np.inf, 3.0e38, 0.1, -0.0, 1.0 / 3.0],
        dtype=np.float32,
    )
    h, b = kernel(
        inputs=[mx.array(vals)],
        grid=(vals.size, 1, 1),
        threadgroup=(32, 1, 1),
        output_shapes=[vals.shape, vals.shape],
        output_dtypes=[mx.float16, mx.bfloat16],
    )
    with np.errstate(over="ignore"):
        want_h = vals.astype(np.float16)
    np.testing.assert_array_equal(np.array(h), want_h)
    want_b = np.array(mx.array(vals).astype(mx.bfloat16).view(mx.uint16))
    np.testing.assert_array_equal(np.array(b.view(mx.uint16)), want_b)
    nan = kernel(
        inputs=[mx.array(np.array([np.nan], dtype=np.float32))],
        grid=(1, 1, 1), threadgroup=(1, 1, 1),
        output_shapes=[(1,), (1,)], output_dtypes=[mx.float16, mx.bfloat16],
    )
    assert np.isnan(np.array(nan[0])).all() and np.isnan(O.to64(nan[1])).all()


def test_16_bit_conversions_bit_exact_on_random_patterns():
    # float -> half/bfloat16 (round to nearest even, subnormals, overflow) on
    # random bit patterns, and every half/bfloat16 pattern back to float.
    src = """
        uint i = thread_position_in_grid.x;
        h[i] = half(x[i]);
        b[i] = bfloat16_t(x[i]);
        hf[i] = float(as_type<half>(ushort(i)));
        bf[i] = float(as_type<bfloat16_t>(ushort(i)));
    """
    kernel = metal_kernel("conversions", ["x"], ["h", "b", "hf", "bf"], src)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=1 << 16, dtype=np.uint64).astype(np.uint32)
    near_half = rng.integers(0x30000000, 0x48000000, size=1 << 15).astype(np.uint32)
    bits[: 1 << 15] = near_half | (rng.integers(0, 2, size=1 << 15).astype(np.uint32) << 31)
    x = bits.view(np.float32)
    h, b, hf, bf = kernel(
        inputs=[mx.array(x)], grid=(x.size, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[x.shape] * 4,
        output_dtypes=[mx.float16, mx.bfloat16, mx.float32, mx.float32],
    )

    def same(got, want):
        return (got == want) | (np.isnan(got.view(np.float32 if got.itemsize == 4 else np.float16))
                                & np.isnan(want.view(np.float32 if want.itemsize == 4 else np.float16)))

    with np.errstate(over="ignore", invalid="ignore"):
        want_h = x.astype(np.float16).view(np.uint16)
    assert same(np.array(h).view(np.uint16), want_h).all()
    want_b = np.array(mx.array(x).astype(mx.bfloat16).view(mx.uint16))
    got_b = np.array(b.view(mx.uint16))
    nan_b = ((got_b & 0x7FFF) > 0x7F80) & ((want_b & 0x7FFF) > 0x7F80)
    assert ((got_b == want_b) | nan_b).all()
    patterns = np.arange(1 << 16, dtype=np.uint32)
    want_hf = patterns.astype(np.uint16).view(np.float16).astype(np.float32)
    assert same(np.array(hf).view(np.uint32), want_hf.view(np.uint32)).all()
    want_bf = (patterns << 16).view(np.float32)
    assert same(np.array(bf).view(np.uint32), want_bf.view(np.uint32)).all()


def test_half_arithmetic_rounds_each_operation():
    # half * half stays half (rounded), half * float is float, as in Metal.
    src = """
        uint i = thread_position_in_grid.x;
        half a = x[i];
        auto hh = a * a;        // half
        auto hf = a * 3.0f;     // float
        static_assert(sizeof(hh) == 2, "half * half must be half");
        static_assert(sizeof(hf) == 4, "half * float must be float");
        o1[i] = hh * a;         // rounded twice
        o2[i] = hf;
    """
    kernel = metal_kernel("half_arith", ["x"], ["o1", "o2"], src)
    x = np.array([1.1, 3.3, -7.7, 0.01], dtype=np.float16)
    o1, o2 = kernel(
        inputs=[mx.array(x)], grid=(4, 1, 1), threadgroup=(4, 1, 1),
        output_shapes=[(4,), (4,)], output_dtypes=[mx.float16, mx.float32],
    )
    np.testing.assert_array_equal(np.array(o1), (x * x) * x)
    np.testing.assert_array_equal(np.array(o2), x.astype(np.float32) * np.float32(3.0))


# ---------------------------------------------------------------------------
# simdgroups and threadgroups


def test_simd_sum_row_reduction():
    src = """
        uint row = thread_position_in_grid.y;
        uint lane = thread_index_in_simdgroup;
        float s = 0.0f;
        for (uint i = lane; i < N; i += threads_per_simdgroup) {
            s += float(x[row * N + i]);
        }
        s = simd_sum(s);
        float m = simd_max(float(x[row * N + lane]));
        if (lane == 0) {
            out[row] = s;
            mx_out[row] = m;
        }
    """
    kernel = metal_kernel("row_sum", ["x"], ["out", "mx_out"], src)
    x = mx.random.normal((70, 200), key=mx.random.key(1))
    out, m = kernel(
        inputs=[x], template=[("N", 200)], grid=(32, 70, 1), threadgroup=(32, 1, 1),
        output_shapes=[(70,), (70,)], output_dtypes=[mx.float32, mx.float32],
    )
    np.testing.assert_allclose(np.array(out), O.to64(x).sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.array(m), np.array(x)[:, :32].max(1))


TREE_SOURCE = """
    threadgroup float shared[TG];
    uint tid = thread_index_in_threadgroup;
    uint row = threadgroup_position_in_grid.x;
    shared[tid] = float(x[row * TG + tid]);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint stride = TG / 2; stride > 0; stride /= 2) {
        if (tid < stride) {
            shared[tid] += shared[tid + stride];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid == 0) {
        out[row] = shared[0];
    }
"""


def test_threadgroup_memory_tree_reduction():
    kernel = metal_kernel("tree_sum", ["x"], ["out"], TREE_SOURCE)
    x = mx.random.uniform(shape=(9, 256), key=mx.random.key(2))
    (out,) = kernel(
        inputs=[x], template=[("TG", 256)], grid=(9 * 256, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[(9,)], output_dtypes=[mx.float32],
    )
    np.testing.assert_allclose(np.array(out), O.to64(x).sum(1), rtol=1e-5)


def test_simd_then_threadgroup_then_simd():
    # The MLX rms_norm pattern: simd_sum, 32 partials, barrier, simd_sum.
    src = """
        threadgroup float partials[32];
        uint lane = thread_index_in_simdgroup;
        uint sg = simdgroup_index_in_threadgroup;
        uint row = threadgroup_position_in_grid.y;
        float v = 0.0f;
        for (uint i = thread_position_in_threadgroup.x; i < D; i += threads_per_threadgroup.x) {
            v += x[row * D + i];
        }
        v = simd_sum(v);
        if (lane == 0) {
            partials[sg] = v;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        v = simd_sum(lane < simdgroups_per_threadgroup ? partials[lane] : 0.0f);
        if (thread_position_in_threadgroup.x == 0) {
            out[row] = v;
        }
    """
    kernel = metal_kernel("tg_sum", ["x"], ["out"], src)
    x = mx.random.normal((6, 1000), key=mx.random.key(3))
    # 1000 threads = 31.25 simdgroups: the last simdgroup is partial.
    (out,) = kernel(
        inputs=[x], template=[("D", 1000)], grid=(1000, 6, 1), threadgroup=(1000, 1, 1),
        output_shapes=[(6,)], output_dtypes=[mx.float32],
    )
    np.testing.assert_allclose(np.array(out), O.to64(x).sum(1), rtol=1e-5, atol=1e-4)


def test_threadgroup_memory_starts_poisoned_in_every_threadgroup():
    # Reading partials that no simdgroup of *this* threadgroup wrote is a bug
    # (garbage on a GPU); the emulator makes it NaN, in every threadgroup.
    src = """
        threadgroup float partials[32], other[4];
        uint lane = thread_index_in_simdgroup;
        if (lane == 0) {
            partials[simdgroup_index_in_threadgroup] = 1.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float good = simd_sum(lane < simdgroups_per_threadgroup ? partials[lane] : 0.0f);
        float bad = simd_sum(partials[lane]);
        if (thread_index_in_threadgroup == 0) {
            out[2 * threadgroup_position_in_grid.x] = good;
            out[2 * threadgroup_position_in_grid.x + 1] = bad + 0.0f * other[0];
        }
    """
    kernel = metal_kernel("tg_poison", [], ["out"], src)
    (out,) = kernel(inputs=[], grid=(64 * 5, 1, 1), threadgroup=(64, 1, 1),
                    output_shapes=[(10,)], output_dtypes=[mx.float32])
    out = np.array(out).reshape(5, 2)
    np.testing.assert_array_equal(out[:, 0], 2.0)
    assert np.isnan(out[:, 1]).all()


def test_threadgroup_declarations_next_to_prose_and_in_lists():
    # Comment prose ("one threadgroup of ... per row.") must not be taken for
    # a declaration; several declarators in one statement all become shared.
    src = """
        // One threadgroup of 64 threads per row.
        threadgroup float a[64], b[2];
        /* threadgroup float fake[1]; */
        uint tid = thread_index_in_threadgroup;
        a[tid] = float(tid);
        if (tid < 2) {
            b[tid] = 10.0f * float(tid + 1);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[threadgroup_position_in_grid.x * 64 + tid] = a[63 - tid] + b[tid % 2];
    """
    kernel = metal_kernel("tg_lists", [], ["out"], src)
    (out,) = kernel(inputs=[], grid=(128, 1, 1), threadgroup=(64, 1, 1),
                    output_shapes=[(128,)], output_dtypes=[mx.float32])
    tid = np.arange(128) % 64
    np.testing.assert_array_equal(np.array(out), 63 - tid + 10.0 * (tid % 2 + 1))


def test_threadgroup_memory_limit():
    src = """
        threadgroup float big[9000];
        big[thread_index_in_threadgroup] = 1.0f;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[0] = big[0];
    """
    kernel = metal_kernel("tg_big", [], ["out"], src)
    with pytest.raises(testing.EmulatorError, match="32768 bytes"):
        kernel(inputs=[], grid=(32, 1, 1), threadgroup=(32, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


def test_partial_threadgroups_2d_with_scalar_input():
    src = """
        uint2 p = thread_position_in_grid.xy;
        out[p.y * W + p.x] = x[p.y * W + p.x] * alpha + float(threads_per_threadgroup.x * 100 + threads_per_threadgroup.y);
    """
    kernel = metal_kernel("axpb", ["x", "alpha"], ["out"], src)
    h, w = 13, 45
    x = mx.random.normal((h, w), key=mx.random.key(4))
    (out,) = kernel(
        inputs=[x, mx.array(2.5)], template=[("W", w)], grid=(w, h, 1), threadgroup=(16, 4, 1),
        output_shapes=[(h, w)], output_dtypes=[mx.float32], init_value=-1.0,
    )
    # Threads outside the grid do not run; the last threadgroups are partial.
    tpt_x = np.where(np.arange(w) >= 32, w - 32, 16)[None, :]
    tpt_y = np.where(np.arange(h) >= 12, h - 12, 4)[:, None]
    np.testing.assert_allclose(np.array(out), np.array(x) * 2.5 + tpt_x * 100 + tpt_y, rtol=1e-6)


def test_3d_grid_position_attributes():
    src = """
        uint3 g = thread_position_in_grid;
        uint3 n = threads_per_grid;
        uint idx = (g.z * n.y + g.y) * n.x + g.x;
        uint3 tg = threadgroup_position_in_grid;
        uint3 ntg = threadgroups_per_grid;
        uint3 lt = thread_position_in_threadgroup;
        uint4 v = uint4(
            (tg.z * ntg.y + tg.y) * ntg.x + tg.x,
            thread_index_in_threadgroup,
            (lt.z * threads_per_threadgroup.y + lt.y) * threads_per_threadgroup.x + lt.x,
            simdgroup_index_in_threadgroup * 32 + thread_index_in_simdgroup);
        for (int k = 0; k < 4; ++k) {
            out[4 * idx + k] = v[k];
        }
    """
    kernel = metal_kernel("pos3d", [], ["out"], src)
    grid, tgs = (6, 5, 4), (4, 2, 2)
    (out,) = kernel(
        inputs=[], grid=grid, threadgroup=tgs,
        output_shapes=[(4, 5, 6, 4)], output_dtypes=[mx.uint32],
    )
    out = np.array(out)
    z, y, x = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    ntg = [-(-g // t) for g, t in zip(grid, tgs)]
    group = ((z // 2) * ntg[1] + y // 2) * ntg[0] + x // 4
    size_x = np.where(x >= 4, 2, 4)  # partial groups along x
    size_y = np.where(y >= 4, 1, 2)
    local = ((z % 2) * size_y + y % 2) * size_x + x % 4
    np.testing.assert_array_equal(out[..., 0], group)
    np.testing.assert_array_equal(out[..., 1], local)
    np.testing.assert_array_equal(out[..., 2], local)
    np.testing.assert_array_equal(out[..., 3], local)


def test_shape_strides_ndim_on_transposed_input():
    src = """
        uint elem = thread_position_in_grid.x;
        int64_t loc = elem_to_loc(elem, inp_shape, inp_strides, inp_ndim);
        out[elem] = inp[loc] + float(inp_ndim * 1000);
    """
    base = mx.arange(24, dtype=mx.float32).reshape(2, 3, 4)
    x = base.transpose(2, 0, 1)
    for contiguous in (False, True):
        kernel = metal_kernel("strided", ["inp"], ["out"], src, ensure_row_contiguous=contiguous)
        (out,) = kernel(
            inputs=[x], grid=(x.size, 1, 1), threadgroup=(8, 1, 1),
            output_shapes=[x.shape], output_dtypes=[mx.float32],
        )
        np.testing.assert_array_equal(np.array(out), np.array(x) + 3000)

    # Without ensure_row_contiguous the kernel sees the transposed strides.
    src_strides = """
        uint i = thread_position_in_grid.x;
        out[i] = i < uint(inp_ndim) ? int(inp_strides[i]) * 100 + inp_shape[i] : -1;
    """
    kernel = metal_kernel("strides", ["inp"], ["out"], src_strides, ensure_row_contiguous=False)
    (out,) = kernel(inputs=[x], grid=(3, 1, 1), threadgroup=(3, 1, 1),
                    output_shapes=[(3,)], output_dtypes=[mx.int32])
    np.testing.assert_array_equal(np.array(out), [1 * 100 + 4, 12 * 100 + 2, 4 * 100 + 3])


def test_vectors_uint2_float4():
    src = """
        uint i = thread_position_in_grid.x;
        float4 v = float4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
        uint2 u = uint2(i, 2 * i);
        float2 lo = v.xy * 2.0f + float2(u);
        float4 w = float4(lo, v.zw) - 1.0f;
        w.w = metal::max(w.w, 0.0f);
        w.xy = w.yx;
        half4 h = half4(w);
        out[4 * i] = w.x;
        out[4 * i + 1] = w.y;
        out[4 * i + 2] = dot(v, float4(1.0f));
        out[4 * i + 3] = float(h.w) + float(u.y);
    """
    kernel = metal_kernel("vec", ["x"], ["out"], src)
    x = mx.random.normal((8 * 4,), key=mx.random.key(5))
    (out,) = kernel(inputs=[x], grid=(8, 1, 1), threadgroup=(8, 1, 1),
                    output_shapes=[x.shape], output_dtypes=[mx.float32])
    v = np.array(x).reshape(8, 4)
    i = np.arange(8)
    want = np.stack([
        v[:, 1] * 2 + 2 * i - 1,
        v[:, 0] * 2 + i - 1,
        v.sum(1),
        np.maximum(v[:, 3] - 1, 0).astype(np.float16).astype(np.float32) + 2 * i,
    ], axis=1)
    np.testing.assert_allclose(np.array(out).reshape(8, 4), want, rtol=1e-5, atol=1e-5)


def test_half_literals_and_mlx_limits():
    src = """
        uint i = thread_position_in_grid.x;
        half h = x[i] * 0.5h + 2h;
        out[3 * i] = h;
        out[3 * i + 1] = half(Limits<float>::finite_max > 1e30f) + half(metal::isinf(Limits<T>::min));
        out[3 * i + 2] = max3(h, 1.0h, -1e-3h);
    """
    kernel = metal_kernel("half_lit", ["x"], ["out"], src)
    x = np.array([1.5, -3.0, 7.25], dtype=np.float16)
    (out,) = kernel(inputs=[mx.array(x)], template=[("T", mx.bfloat16)], grid=(3, 1, 1),
                    threadgroup=(3, 1, 1), output_shapes=[(9,)], output_dtypes=[mx.float16])
    h = x * np.float16(0.5) + np.float16(2)
    want = np.stack([h, np.full(3, 2, np.float16), np.maximum(h, np.float16(1))], axis=1)
    np.testing.assert_array_equal(np.array(out).reshape(3, 3), want)


def test_precise_and_fast_math():
    src = """
        uint i = thread_position_in_grid.x;
        float v = x[i];
        float c;
        float s = metal::precise::sincos(v, c);
        out[6 * i + 0] = metal::precise::rsqrt(metal::abs(v) + 1.0f);
        out[6 * i + 1] = metal::fast::exp(v) + metal::exp2(v);
        out[6 * i + 2] = s * c;
        out[6 * i + 3] = metal::fma(v, v, 1.0f) + metal::clamp(v, -0.5f, 0.5f);
        out[6 * i + 4] = metal::select(metal::floor(v), metal::ceil(v), v > 0.0f) + metal::rint(2.5f);
        out[6 * i + 5] = float(metal::isnan(v / 0.0f)) + metal::pow(2.0f, v) + metal::tanh(v);
    """
    kernel = metal_kernel("math", ["x"], ["out"], src)
    x = np.linspace(-3, 3, 33).astype(np.float32)
    (out,) = kernel(inputs=[mx.array(x)], grid=(33, 1, 1), threadgroup=(32, 1, 1),
                    output_shapes=[(33 * 6,)], output_dtypes=[mx.float32])
    v = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        nan_of_div = np.isnan(v / 0.0).astype(float)
    want = np.stack([
        1 / np.sqrt(np.abs(v) + 1),
        np.exp(v) + np.exp2(v),
        np.sin(v) * np.cos(v),
        v * v + 1 + np.clip(v, -0.5, 0.5),
        np.where(v > 0, np.ceil(v), np.floor(v)) + 2.0,
        nan_of_div + 2.0**v + np.tanh(v),
    ], axis=1)
    np.testing.assert_allclose(np.array(out).reshape(33, 6), want, rtol=2e-6, atol=2e-6)


def test_simd_shuffles_and_broadcast():
    src = """
        uint i = thread_position_in_grid.x;
        int v = x[i];
        out[4 * i + 0] = simd_shuffle_xor(v, 5);
        out[4 * i + 1] = simd_broadcast(v, 7);
        out[4 * i + 2] = simd_shuffle_down(v, 3);
        out[4 * i + 3] = simd_prefix_exclusive_sum(v);
    """
    kernel = metal_kernel("shuffles", ["x"], ["out"], src)
    x = np.arange(64, dtype=np.int32) * 3 + 1
    (out,) = kernel(inputs=[mx.array(x)], grid=(64, 1, 1), threadgroup=(64, 1, 1),
                    output_shapes=[(64 * 4,)], output_dtypes=[mx.int32])
    out = np.array(out).reshape(64, 4)
    lane = np.arange(64) % 32
    base = np.arange(64) - lane
    np.testing.assert_array_equal(out[:, 0], x[base + (lane ^ 5)])
    np.testing.assert_array_equal(out[:, 1], x[base + 7])
    np.testing.assert_array_equal(out[:, 2], np.where(lane + 3 < 32, x[np.minimum(base + lane + 3, 63)], x))
    want_prefix = np.concatenate([np.cumsum(x[:32]) - x[:32], np.cumsum(x[32:]) - x[32:]])
    np.testing.assert_array_equal(out[:, 3], want_prefix)


def test_quad_operations():
    src = """
        uint i = thread_position_in_grid.x;
        int v = x[i];
        out[4 * i + 0] = quad_sum(v);
        out[4 * i + 1] = quad_max(v);
        out[4 * i + 2] = quad_shuffle_xor(v, 1);
        out[4 * i + 3] = quad_broadcast(v, 2);
    """
    kernel = metal_kernel("quads", ["x"], ["out"], src)
    x = np.random.default_rng(1).integers(-50, 50, size=64).astype(np.int32)
    (out,) = kernel(inputs=[mx.array(x)], grid=(64, 1, 1), threadgroup=(64, 1, 1),
                    output_shapes=[(256,)], output_dtypes=[mx.int32])
    out = np.array(out).reshape(64, 4)
    q = x.reshape(16, 4)
    np.testing.assert_array_equal(out[:, 0], np.repeat(q.sum(1), 4))
    np.testing.assert_array_equal(out[:, 1], np.repeat(q.max(1), 4))
    np.testing.assert_array_equal(out[:, 2], x[np.arange(64) ^ 1])
    np.testing.assert_array_equal(out[:, 3], np.repeat(q[:, 2], 4))


def test_simd_ballot_and_votes():
    src = """
        uint lane = thread_index_in_simdgroup;
        uint64_t bits = static_cast<uint64_t>(simd_ballot(lane % 3 == 0));
        out[2 * lane] = uint(bits & 0xFFFFFFFFu);
        out[2 * lane + 1] = uint(simd_any(lane == 31)) * 2u + uint(simd_all(lane < 31));
    """
    kernel = metal_kernel("ballot", [], ["out"], src)
    (out,) = kernel(inputs=[], grid=(32, 1, 1), threadgroup=(32, 1, 1),
                    output_shapes=[(64,)], output_dtypes=[mx.uint32])
    out = np.array(out).reshape(32, 2)
    want = sum(1 << i for i in range(0, 32, 3))
    np.testing.assert_array_equal(out[:, 0], want)
    np.testing.assert_array_equal(out[:, 1], 2)


def test_simd_sum_over_exited_lanes():
    # Lanes that returned early do not take part (the active set is the rest).
    src = """
        uint i = thread_position_in_grid.x;
        if (i % 3 == 0) {
            return;
        }
        out[i] = simd_sum(1.0f);
    """
    kernel = metal_kernel("exited", [], ["out"], src)
    (out,) = kernel(inputs=[], grid=(40, 1, 1), threadgroup=(40, 1, 1),
                    output_shapes=[(40,)], output_dtypes=[mx.float32], init_value=0.0)
    i = np.arange(40)
    active = np.array([np.sum((i // 32 == k) & (i % 3 != 0)) for k in (0, 1)])
    np.testing.assert_array_equal(np.array(out), np.where(i % 3 == 0, 0, active[i // 32]))


def test_divergent_simd_ops_resolve_per_branch_and_reconverge():
    # As on a GPU: each branch's simd_sum runs over the lanes in that branch;
    # lanes that leave a loop early wait for the others at the next operation.
    src = """
        uint lane = thread_index_in_simdgroup;
        float v;
        if (lane < 10) {
            v = simd_sum(1.0f);
        } else {
            v = simd_sum(2.0f);
        }
        float loop = 0.0f;
        for (uint k = 0; k < lane % 4; ++k) {
            loop += simd_sum(1.0f);
        }
        out[4 * lane] = v;
        out[4 * lane + 1] = loop;
        out[4 * lane + 2] = simd_sum(1.0f);
        out[4 * lane + 3] = simd_broadcast_first(float(lane) + 5.0f);
    """
    kernel = metal_kernel("diverge", [], ["out"], src)
    (out,) = kernel(inputs=[], grid=(32, 1, 1), threadgroup=(32, 1, 1),
                    output_shapes=[(128,)], output_dtypes=[mx.float32])
    out = np.array(out).reshape(32, 4)
    lane = np.arange(32)
    np.testing.assert_array_equal(out[:, 0], np.where(lane < 10, 10.0, 2.0 * 22))
    # Iteration k has the lanes with lane % 4 > k: 24, 16, 8 of them.
    want_loop = np.array([sum([24, 16, 8][:m]) for m in lane % 4], dtype=np.float32)
    np.testing.assert_array_equal(out[:, 1], want_loop)
    np.testing.assert_array_equal(out[:, 2], 32.0)
    np.testing.assert_array_equal(out[:, 3], 5.0)


def test_fiber_stacks_fit_large_thread_arrays():
    # 160 KB of thread-space array: the fiber stacks grow to the frame sizes
    # the compiler reports (-fstack-usage), beyond the 64 KiB default.
    src = """
        float big[40000];
        uint lane = thread_index_in_simdgroup;
        for (int i = 0; i < 40000; ++i) {
            big[i] = float(i % 7) + float(lane);
        }
        float v = big[39999 - lane * 13];
        out[lane] = simd_sum(v) + big[int(x[0])];
    """
    kernel = metal_kernel("big_stack", ["x"], ["out"], src)
    (out,) = kernel(inputs=[mx.array([3.0])], grid=(32, 1, 1), threadgroup=(32, 1, 1),
                    output_shapes=[(32,)], output_dtypes=[mx.float32])
    lane = np.arange(32)
    total = np.sum((39999 - lane * 13) % 7 + lane)
    np.testing.assert_array_equal(np.array(out), total + 3 + lane)


def test_init_value_and_uninitialized_poison():
    src = """
        uint i = thread_position_in_grid.x;
        if (i % 2 == 0) {
            out[i] = T(i);
        }
    """
    kernel = metal_kernel("init", [], ["out"], src)
    for dtype in (mx.float32, mx.bfloat16, mx.int32):
        (out,) = kernel(inputs=[], template=[("T", dtype)], grid=(6, 1, 1), threadgroup=(4, 1, 1),
                        output_shapes=[(6,)], output_dtypes=[dtype], init_value=7)
        np.testing.assert_array_equal(np.array(out.astype(mx.float32)), [0, 7, 2, 7, 4, 7])
    (out,) = kernel(inputs=[], template=[("T", mx.float32)], grid=(6, 1, 1), threadgroup=(4, 1, 1),
                    output_shapes=[(6,)], output_dtypes=[mx.float32])
    assert np.isnan(np.array(out)[1::2]).all()


def test_atomic_outputs():
    src = """
        uint i = thread_position_in_grid.x;
        atomic_fetch_add_explicit(&total[0], x[i], memory_order_relaxed);
        atomic_fetch_add_explicit(&count[i % 4], 1, memory_order_relaxed);
    """
    kernel = metal_kernel("atomics", ["x"], ["total", "count"], src, atomic_outputs=True)
    x = mx.ones((20000,)) * 0.5
    total, count = kernel(inputs=[x], grid=(20000, 1, 1), threadgroup=(256, 1, 1),
                          output_shapes=[(1,), (4,)], output_dtypes=[mx.float32, mx.int32],
                          init_value=0)
    assert float(total[0]) == 10000.0
    np.testing.assert_array_equal(np.array(count), [5000] * 4)


SURFACE_HEADER = """
template <typename T, int N>
METAL_FUNC T dot_n(const device T* a, thread const T* b) {
  T acc = T(0);
  for (int i = 0; i < N; ++i) acc += a[i] * b[i];
  return acc;
}
constant constexpr int kWidth = 4;
struct Pair { float a; half b; };
inline float load_pair(const device float* p, uint i) { Pair q{p[i], half(p[i + 1])}; return q.a + float(q.b); }
"""

SURFACE_SOURCE = """
  uint i = thread_position_in_grid.x;
  const device float4* v4 = reinterpret_cast<const device float4*>(x);
  float4 a = v4[i];
  float4 b = a * 2.0f + float4(1.0f, 2.0f, 3.0f, 4.0f);
  half4 h = half4(b);
  h += half4(1.0h);
  h = h * h;
  bfloat4 bf = bfloat4(b);
  float4 c = select(a, b, a > 0.5f);
  bool4 m = a > 0.0f;
  float s = metal::abs(dot(c, float4(1))) + float(all(m)) + float(any(!m));
  uint bits = as_type<uint>(a.x);
  float back = as_type<float>(bits);
  float4 cl = clamp(b, 0.0f, 1.0f);
  float2 sw = b.zw + a.xy;
  float3 f3 = float3(sw, 1.0f) + b.xyz;
  int2 i2 = int2(3, -4);
  uint2 u2 = uint2(i2);
  ushort us = ushort(7);
  uchar uc = uchar(200);
  short sh = short(-3);
  long lg = long(1) << 40;
  float thr[kWidth] = {1.0f, 2.0f, 3.0f, 4.0f};
  float d = dot_n<float, kWidth>(x + 4 * i, thr);
  float r = metal::precise::divide(1.0f, 3.0f) + metal::fast::divide(1.0f, 4.0f);
  float mm = metal::fmax(metal::fmin(a.x, 1.0f), -1.0f) + metal::copysign(1.0f, -a.y);
  float lmt = metal::numeric_limits<float>::max() > 1e38f ? 1.0f : 0.0f;
  half hl = metal::numeric_limits<half>::max();
  int im = metal::max(3, 4) + metal::min(int(us), 9) + metal::abs(-5) + int(popcount(bits) > 0u);
  float fr = metal::fract(1.25f) + metal::trunc(-1.5f) + metal::round(2.5f) + metal::step(0.5f, 0.7f);
  float vsum = 0; for (int k = 0; k < 4; ++k) vsum += b[k] + float(h[k]) + float(bf[k]);
  float4 n = normalize(float4(3, 4, 0, 0));
  float ln = length(float2(3.0f, 4.0f));
  float mx3 = max3(1.0f, 5.0f, 2.0f);
  float sm = metal::smoothstep(0.0f, 1.0f, 0.5f);
  out[i] = s + back + cl.w + f3.z + float(u2.y & 1u) + float(uc) + float(sh) + float(lg >> 40) + d + r + mm + lmt + float(hl > 60000.0h)
      + float(im) + fr + vsum + n.y + ln + mx3 + sm + load_pair(x, i) + float(kWidth);
"""


def test_msl_surface_compiles_and_runs():
    # A wide sample of MSL (vectors, swizzles, casts, limits, helpers in the
    # header, thread-space arrays, every scalar type): builds and gives finite results.
    kernel = metal_kernel("surface", ["x"], ["out"], SURFACE_SOURCE, header=SURFACE_HEADER)
    x = mx.random.uniform(shape=(32,), key=mx.random.key(7))
    (out,) = kernel(inputs=[x], grid=(8, 1, 1), threadgroup=(8, 1, 1),
                    output_shapes=[(8,)], output_dtypes=[mx.float32])
    assert np.isfinite(np.array(out)).all()


# ---------------------------------------------------------------------------
# Errors


DIVERGENT = """
    uint tid = thread_position_in_threadgroup.x;
    if (tid < 16) {
        return;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = 1.0f;
"""

TWO_BARRIERS = """
    uint tid = thread_position_in_threadgroup.x;
    if (tid < 40) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        threadgroup_barrier(mem_flags::mem_device);
    }
    out[tid] = 1.0f;
"""


def _run_guarded(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `code` in a subprocess so that a hang fails the test instead of the suite."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ),
    )


@pytest.mark.parametrize("source,needle", [(DIVERGENT, "16 have returned"),
                                           (TWO_BARRIERS, "line")])
def test_divergent_barrier_raises(source, needle):
    code = textwrap.dedent(f"""
        import mlx.core as mx
        from talkie_kernels.testing import metal_kernel, EmulatorError
        k = metal_kernel("divergent", [], ["out"], {source!r})
        try:
            k(inputs=[], grid=(64, 1, 1), threadgroup=(64, 1, 1),
              output_shapes=[(64,)], output_dtypes=[mx.float32])
        except EmulatorError as e:
            print("RAISED", e)
        else:
            print("NO ERROR")
    """)
    proc = _run_guarded(code)
    assert "RAISED" in proc.stdout, proc.stdout + proc.stderr
    assert "threadgroup_barrier" in proc.stdout and needle in proc.stdout, proc.stdout


@pytest.mark.parametrize("source,needle", [
    ("out[thread_position_in_grid.x * 1000000000u] = x[0];", "SIGSEGV"),
    ("out[0] = float(int(x[0]) / int(x[1]));", "SIGFPE"),
])
def test_crash_names_kernel_and_thread(source, needle):
    code = textwrap.dedent(f"""
        import mlx.core as mx
        from talkie_kernels.testing import metal_kernel
        k = metal_kernel("crashing", ["x"], ["out"], {source!r})
        k(inputs=[mx.array([1.0, 0.0])], grid=(8, 1, 1), threadgroup=(4, 1, 1),
          output_shapes=[(8,)], output_dtypes=[mx.float32])
    """)
    proc = _run_guarded(code)
    assert proc.returncode != 0
    assert f"talkie_kernels emulator: {needle}" in proc.stderr, proc.stderr
    assert "kernel `crashing`" in proc.stderr and "thread_position_in_grid" in proc.stderr


@pytest.mark.parametrize("snippet,reason", [
    ("double d = x[0]; out[0] = d;", "double"),
    ("out[0] = std::sqrt(x[0]);", "std::"),
    ("float* p = new float[4]; out[0] = p[0];", "new"),
    ("if (x[0] > 0) { throw 1; } out[0] = x[0];", "exceptions"),
    ("float (*f)(float) = metal::exp; out[0] = f(x[0]);", "function pointer"),
    ("static float total = 0; total += x[0]; out[0] = total;", "static"),
    ("int n = int(x[0]); float tmp[n]; tmp[0] = 1; out[0] = tmp[0];", "vla"),
])
def test_refuses_what_metal_refuses(snippet, reason):
    kernel = metal_kernel("bad", ["x"], ["out"], snippet)
    with pytest.raises(testing.MetalCompileError, match=reason):
        kernel(inputs=[mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


@pytest.mark.parametrize("header", ['#include "my_helpers.h"\n', "#include <cmath>\n"])
def test_refuses_non_metal_includes(header):
    kernel = metal_kernel("bad_include", ["x"], ["out"], "out[0] = x[0];", header=header)
    with pytest.raises(testing.MetalCompileError, match="#include"):
        kernel(inputs=[mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


def test_metal_headers_are_accepted():
    header = "#include <metal_stdlib>\n#include <metal_simdgroup>\nusing namespace metal;\n"
    kernel = metal_kernel("good_include", ["x"], ["out"], "out[0] = metal::abs(x[0]);", header=header)
    (out,) = kernel(inputs=[-mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
                    output_shapes=[(1,)], output_dtypes=[mx.float32])
    assert float(out[0]) == 1.0


def test_double_hidden_in_header_macro_is_refused():
    header = "#define WIDE dou##ble\n"
    kernel = metal_kernel("bad_macro", ["x"], ["out"], "WIDE d = x[0]; out[0] = d;", header=header)
    with pytest.raises(testing.MetalCompileError, match="double"):
        kernel(inputs=[mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


RECURSIVE_HEADER = """
inline float fact(float n) { return n <= 1.0f ? 1.0f : n * fact(n - 1.0f); }
template <typename T> T ping(T x);
template <typename T> T pong(T x) { return x > 0 ? ping(x - 1) : x; }
template <typename T> T ping(T x) { return x > 0 ? pong(x - 1) : x; }
inline float twice(float v) { return 2.0f * v; }
"""


@pytest.mark.parametrize("snippet,reason", [
    ("out[0] = fact(x[0]);", "recursion: float fact"),
    ("out[0] = ping(x[0]);", "recursion: T ping"),
    ("auto f = &twice; out[0] = f(x[0]);", "indirect call"),
])
def test_refuses_recursion_and_indirect_calls(snippet, reason):
    kernel = metal_kernel("bad_calls", ["x"], ["out"], snippet, header=RECURSIVE_HEADER)
    with pytest.raises(testing.MetalCompileError, match=reason):
        kernel(inputs=[mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


def test_out_of_bounds_write_raises_and_read_is_poisoned():
    src = """
        uint i = thread_position_in_grid.x;
        out[i] = x[i + shift];
    """
    kernel = metal_kernel("oob", ["x", "shift"], ["out"], src)
    x = mx.arange(8, dtype=mx.float32)
    (out,) = kernel(inputs=[x, mx.array(2, dtype=mx.int32)], grid=(8, 1, 1), threadgroup=(8, 1, 1),
                    output_shapes=[(8,)], output_dtypes=[mx.float32])
    assert np.isnan(np.array(out)[6:]).all()
    np.testing.assert_array_equal(np.array(out)[:6], np.arange(2, 8))
    with pytest.raises(testing.EmulatorError, match="past its end"):
        kernel(inputs=[x, mx.array(0, dtype=mx.int32)], grid=(9, 1, 1), threadgroup=(9, 1, 1),
               output_shapes=[(8,)], output_dtypes=[mx.float32])


def test_compile_error_reports_compiler_output_and_lines():
    kernel = metal_kernel("typo", ["x"], ["out"], "out[0] = x[0] + undefined_name;")
    with pytest.raises(testing.MetalCompileError) as info:
        kernel(inputs=[mx.ones((4,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])
    message = str(info.value)
    assert "undefined_name" in message and "generated:" in message
    assert "| out[0] = x[0] + undefined_name;" in message


def test_bad_arguments():
    kernel = metal_kernel("args", ["x"], ["out"], "out[0] = x[0];")
    with pytest.raises(ValueError, match="inputs"):
        kernel(inputs=[], grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])
    with pytest.raises(TypeError, match="list"):
        kernel(inputs={"x": mx.ones((1,))}, grid=(1, 1, 1), threadgroup=(1, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])
    with pytest.raises(TypeError):
        kernel([mx.ones((1,))], [(1,)], [mx.float32], (1, 1, 1), (1, 1, 1))  # keyword-only
    with pytest.raises(ValueError, match="greater than"):
        kernel(inputs=[mx.ones((1,))], grid=(2048, 1, 1), threadgroup=(2048, 1, 1),
               output_shapes=[(1,)], output_dtypes=[mx.float32])


def test_inside_compile_is_a_clear_error():
    kernel = metal_kernel("eager", ["x"], ["out"], "out[0] = x[0];")

    def f(x):
        return kernel(inputs=[x], grid=(1, 1, 1), threadgroup=(1, 1, 1),
                      output_shapes=[(1,)], output_dtypes=[mx.float32])[0]

    with pytest.raises(testing.EmulatorError, match="mx.compile"):
        mx.compile(f)(mx.ones((2,)))


# ---------------------------------------------------------------------------
# Caching and plumbing


def test_cache_hit_on_second_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKIE_KERNELS_EMULATOR_CACHE", str(tmp_path))
    src = "uint i = thread_position_in_grid.x; out[i] = x[i] + 41.0f;"

    def run():
        kernel = metal_kernel("cached", ["x"], ["out"], src)
        (out,) = kernel(inputs=[mx.ones((3,))], grid=(3, 1, 1), threadgroup=(3, 1, 1),
                        output_shapes=[(3,)], output_dtypes=[mx.float32])
        np.testing.assert_array_equal(np.array(out), [42, 42, 42])

    before = dict(_build.stats)
    run()
    assert _build.stats["compiles"] == before["compiles"] + 1
    assert len(list(tmp_path.glob("kernel-*.so"))) == 1
    run()  # same source, new kernel object: the loaded library is reused
    assert _build.stats["compiles"] == before["compiles"] + 1
    assert _build.stats["memory_hits"] > before["memory_hits"]
    _build.clear_memory_cache()
    run()  # from the disk cache
    assert _build.stats["compiles"] == before["compiles"] + 1
    assert _build.stats["disk_hits"] > before["disk_hits"]


def test_verbose_prints_mlx_style_source(capsys):
    kernel = metal_kernel("verbose", ["x"], ["out"], "out[0] = x[0] * thread_position_in_grid.x;")
    kernel(inputs=[mx.ones((16,))], template=[("T", mx.float32), ("N", 3), ("B", True)],
           grid=(1, 1, 1), threadgroup=(1, 1, 1), output_shapes=[(1,)],
           output_dtypes=[mx.float32], verbose=True)
    text = capsys.readouterr().out
    assert "template <typename T, int N, bool B>" in text
    assert "const device float* x [[buffer(0)]]" in text
    assert "device float* out [[buffer(1)]]" in text
    assert "uint3 thread_position_in_grid [[thread_position_in_grid]]" in text


def test_emulate_metal_runs_talkie_kernels_metal():
    x = mx.random.normal((3, 5, 96), key=mx.random.key(8))
    with testing.emulate_metal():
        got = metal.rms_norm(x)
    np.testing.assert_allclose(np.array(got), np.array(reference.rms_norm(x)), rtol=1e-5, atol=1e-6)


def test_emulate_metal_swaps_the_factory():
    before = metal._set_kernel_factory(None)
    metal._set_kernel_factory(before)
    with testing.emulate_metal():
        inside = metal._set_kernel_factory(None)
        metal._set_kernel_factory(inside)
        assert inside is testing.metal_kernel
    after = metal._set_kernel_factory(None)
    metal._set_kernel_factory(after)
    assert after is before
