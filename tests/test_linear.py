"""linear: ``x @ weight.T``, dense or MLX-quantized, against the float64 oracle and MLX's own op.

The accuracy rule for every case: the relative error against the float64 oracle
(the quantized weight dequantized in float64) is no worse than MLX's own
``matmul`` / ``quantized_matmul`` on the same inputs (``oracle.SLACK``), and
within ``oracle.TOL`` of the output dtype wherever MLX's own result is. MLX's
CPU ``quantized_matmul`` accumulates bf16·bf16 and fp16·fp16 in the input
dtype, so its own error there can exceed the tolerance; the native kernel
accumulates in fp32 and is held to the tolerance wherever MLX meets it.
Two native paths round where MLX's op does not, and say so in their rule:
the integer decode path (x rounded to int8 per 32 columns:
``assert_int8_accurate``) and the prefill GEMM with a quantized weight (each
dequantized weight rounded to fp32 once: ``weight_rounding`` is added to the
comparison with MLX).

Shape, output dtype (MLX's promotion of x, weight / scales, biases) and the
``[linear]`` errors are the same on every backend. ``linear`` has no Metal
kernel (on the GPU it is MLX's own op), so the backends are the reference and
the native extension; the accuracy sweeps run the native one (the reference is
MLX's op, the baseline itself).
"""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import ALL_IMPLS, DTYPE_IDS, DTYPES, FUSED, Bad, bad_input_test, get_impl

import oracle as O
import talkie_kernels as tk

#: The backends the gradient tests run (Metal's linear is MLX's op, as the reference).
GRADIENT_IMPLS = ("reference", *FUSED)
MS = (1, 2, 7, 32, 33, 64)
BITS = (4, 6, 8)
GROUP_SIZES = (32, 64, 128)
DTYPE_PAIRS = [(a, b) for a in DTYPES for b in DTYPES]
DTYPE_PAIR_IDS = [f"{a}-{b}" for a in DTYPE_IDS for b in DTYPE_IDS]


def rand(shape, dtype=mx.float32, seed=0, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


def quantized(N, K, dtype, group_size, bits, seed=1, bias_dtype=None):
    """``mx.quantize`` of a random (N, K) weight held in ``dtype``: (weight, scales, biases)."""
    w, s, b = mx.quantize(rand((N, K), dtype, seed, K**-0.5), group_size=group_size, bits=bits)
    if bias_dtype is not None:
        b = b.astype(bias_dtype)
    return w, s, b


def weight(N, K, dtype, bits, seed=1, group_size=64):
    """``linear``'s arguments after x for an (N, K) weight: dense (``bits`` None)
    or affine-quantized -> (positional, keyword)."""
    if bits is None:
        return (rand((N, K), dtype, seed, K**-0.5),), {}
    return quantized(N, K, dtype, group_size, bits, seed), dict(group_size=group_size, bits=bits)


def mlx_linear(x, w, s=None, b=None, group_size=None, bits=None, mode="affine"):
    """MLX's own op: the baseline."""
    if s is None:
        return x @ w.T
    return mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group_size, bits=bits, mode=mode)


def assert_no_worse_than_mlx(got, want, baseline, what, extra=0.0):
    """The accuracy rule (module docstring) for an output of ``got.dtype``;
    ``extra``: a rounding the kernel makes and MLX's op does not, bounded
    (``weight_rounding``), added to the comparison with MLX."""
    err, base = O.rel_err(got, want), O.rel_err(baseline, want)
    tol = O.TOL[got.dtype]
    msg = f"{what}: rel. error {err:.3g} vs the float64 oracle, MLX's own {base:.3g}"
    # MLX can beat a correct kernel by luck on tiny inputs: an absolute floor.
    assert err <= max(O.SLACK * base, 0.25 * tol) + extra, msg + f" (> {O.SLACK}× MLX's + {extra:.2g})"
    if base <= tol:
        assert err <= tol, msg + f" (> tolerance {tol:g} for {got.dtype}, which MLX meets)"


def check(impl, x, w, s=None, b=None, group_size=None, bits=None, what=""):
    """One case: shape and dtype as MLX's op, accuracy by the rule."""
    kw = {} if s is None else dict(group_size=group_size, bits=bits)
    got = impl.linear(x, w, s, b, **kw)
    base = mlx_linear(x, w, s, b, **kw)
    what = f"{impl} linear {what} x{tuple(x.shape)} {x.dtype} w{tuple(w.shape)} {w.dtype}" + (
        "" if s is None else f" scales {s.dtype} biases {b.dtype} gs={group_size} bits={bits}"
    )
    assert got.shape == base.shape == (*x.shape[:-1], w.shape[0]), what
    assert got.dtype == base.dtype, f"{what}: dtype {got.dtype}, MLX gives {base.dtype}"
    want = O.linear(x, w, s, b, group_size or 64, bits or 4)
    if impl.name == "native" and int8_path(x, s, bits, got.dtype):
        assert_int8_accurate(got, want, x, O.dequantize(w, s, b, group_size or 64, bits or 4), what)
    elif impl.name == "native" and dequantizing_gemm(x, s):
        w64 = O.dequantize(w, s, b, group_size or 64, bits or 4)
        assert_no_worse_than_mlx(got, want, base, what, extra=weight_rounding(x, w64, want))
    else:
        assert_no_worse_than_mlx(got, want, base, what)
    return got


def dequantizing_gemm(x, s):
    """Whether the native op takes the prefill GEMM with a quantized weight
    (csrc/cpu/linear.cpp: kLinearGemmMinM = 8 rows of x or more), which
    dequantizes the weight into fp32 panels: w = s·q + b rounded once per
    weight, a rounding MLX's op (which scales per group) does not make."""
    return s is not None and int(np.prod(x.shape[:-1])) >= 8


def weight_rounding(x, w64, want):
    """The most that rounding each dequantized weight to fp32 moves an output,
    relative to max|y| (rel_err's scale): 2^-24 · max_n Σ_k |x_k|·|w_nk|. Measured
    where it decided a case (x (141, 256) bf16 at scale 50, q6 g32, fp16
    scales): 8.5e-7 against MLX's 5.0e-7, this term 2.1e-7."""
    x64 = np.abs(O.to64(x).reshape(-1, w64.shape[1]))
    return 2.0**-24 * float(np.max(x64 @ np.abs(w64).T)) / max(float(np.max(np.abs(want))), 1e-30)


def int8_path(x, s, bits, out_dtype):
    """Whether the native op rounds x to int8 (csrc/cpu/linear.cpp's
    linear_int8 and linear_gemm8): a quantized weight, bf16 x, a half-precision
    output, on a table with AVX2; at most 7 rows of x (decode), or more where
    the table runs the integer prefill GEMM for these bits."""
    if s is None or x.dtype != mx.bfloat16 or out_dtype == mx.float32 or tk.native.ops.isa() == "base":
        return False
    rows = int(np.prod(x.shape[:-1]))
    return rows <= 7 or (bits or 4) in tk.native.ops.int8_gemm_bits()


def assert_int8_accurate(got, want, x, w, what):
    """The integer path's rule, in place of "no worse than MLX": it rounds x to
    int8 per 32 columns (an error of at most 1/254 of each block's max |x|),
    a documented lower-precision path held to the bf16 tolerance against the
    float64 oracle, relative to max|y| or, where that is smaller, to the size
    of those errors' sum: max_n sqrt(Σ_k (a_k·w_nk)²), a_k the max |x| of
    column k's block. (A y that happens to cancel does not shrink the
    rounding errors of x: single outputs of 64-224 column randomized cases
    reach 0.02 of their |y|.) test_int8_path holds Talkie's shapes to the
    plain tolerance, relative to max|y|."""
    x64 = O.to64(x).reshape(-1, w.shape[1])
    a = np.repeat(np.abs(x64.reshape(len(x64), -1, 32)).max(-1), 32, axis=-1)
    size = max(np.max(np.abs(want)), np.sqrt((a**2) @ (w**2).T).max(), 1e-30)
    err = np.max(np.abs(O.to64(got) - want)) / size
    assert err <= O.TOL[mx.bfloat16], f"{what}: integer path rel. error {err:.3g} vs the float64 oracle"


# ---- the oracle itself ------------------------------------------------------------


@pytest.mark.parametrize("bits", (2, 3, 4, 5, 6, 8))
def test_oracle_dequantize_matches_mlx(bits):
    # The float64 oracle unpacks MLX's layout: it agrees with mx.dequantize up
    # to fp32 rounding (a wrong code would be off by a whole scale step).
    w, s, b = quantized(7, 256, mx.float32, 64, bits)
    got = O.dequantize(w, s, b, 64, bits)
    want = O.to64(mx.dequantize(w, s, b, group_size=64, bits=bits))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ---- accuracy sweeps (native) -----------------------------------------------------


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("xd, wd", DTYPE_PAIRS, ids=DTYPE_PAIR_IDS)
def test_dense(native, xd, wd, M):
    # Odd K and N: every SIMD-width tail on both axes.
    for K, N in ((67, 33), (301, 70)):
        check(native, rand((M, K), xd, M), rand((N, K), wd, K, K**-0.5), what=f"M={M}")


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_quantized(native, dtype, bits, group_size, M):
    # x, scales and biases of one dtype; K three groups of 128 (a multiple of
    # every group size), N odd.
    w, s, b = quantized(37, 384, dtype, group_size, bits, seed=M)
    check(native, rand((M, 384), dtype, M + 100), w, s, b, group_size, bits, what=f"M={M}")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("xd, sd", DTYPE_PAIRS, ids=DTYPE_PAIR_IDS)
def test_quantized_mixed_dtypes(native, xd, sd, bits):
    # x and scales (and biases) of different float dtypes.
    w, s, b = quantized(45, 192, sd, 64, bits)
    for M in (1, 33):
        check(native, rand((M, 192), xd, M), w, s, b, 64, bits, what=f"M={M}")


MIXED_BIASES = [(s, b) for s in DTYPES for b in DTYPES if s != b]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sd, bd", MIXED_BIASES, ids=[f"scales_{s}-biases_{b}" for s in DTYPE_IDS for b in DTYPE_IDS if s != b])
@pytest.mark.parametrize("xd", DTYPES, ids=DTYPE_IDS)
def test_quantized_biases_dtype_differs_from_scales(native, xd, sd, bd, bits):
    # MLX accepts biases in another float dtype than scales (and promotes the
    # output with them too: fp16 x, fp16 scales, fp32 biases give fp32).
    w, s, b = quantized(45, 192, sd, 64, bits, bias_dtype=bd)
    for M in (1, 33):
        check(native, rand((M, 192), xd, M), w, s, b, 64, bits, what=f"M={M}")


@pytest.mark.parametrize("M", (1, 33))
@pytest.mark.parametrize("bits", (None, *BITS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("activations", ["outliers", "offset"])
def test_hard_activations(native, activations, dtype, bits, M):
    # outliers: a few features ~100× the rest (as in LLM activations), which a
    # kernel quantizing x per group (int8) loses the small ones next to;
    # offset: mean 100 ≫ spread, where s·Σq·x and b·Σx nearly cancel.
    K = 256
    x = rand((M, K), mx.float32, M)
    if activations == "outliers":
        x = x * mx.where(mx.arange(K) % 61 == 5, 100.0, 1.0)
    else:
        x = x + 100.0
    x = x.astype(dtype)
    args, kw = weight(19, K, dtype, bits, seed=2)
    check(native, x, *args, **kw, what=activations)


def x_layouts(M, K, dtype, seed=0):
    """(id, x) views of M·K values that are not a plain row-major (M, K) array."""
    return [
        ("transposed", rand((K, M), dtype, seed).T),
        ("rows_strided", rand((2 * M, K), dtype, seed)[::2]),
        ("last_axis_strided", rand((M, 2 * K), dtype, seed)[:, ::2]),
        ("offset_view", rand((M + 1, K + 5), dtype, seed)[1:, 5:]),
        ("broadcast_row", mx.broadcast_to(rand((1, K), dtype, seed), (M, K))),
        ("leading_dims", rand((2, 3, M, K), dtype, seed)),
        ("leading_dims_transposed", rand((M, 3, 2, K), dtype, seed).transpose(2, 1, 0, 3)),
        ("vector", rand((K,), dtype, seed)),
    ]


LAYOUT_IDS = [name for name, _ in x_layouts(1, 2, mx.float32)]
WEIGHTS = {
    "dense_fp32": (mx.float32, None),
    "dense_bf16": (mx.bfloat16, None),
    "q4_bf16": (mx.bfloat16, 4),
    "q6_fp16": (mx.float16, 6),
    "q8_fp32": (mx.float32, 8),
}


@pytest.mark.parametrize("M", (1, 7, 33))
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("kind", WEIGHTS)
def test_non_contiguous_x(native, kind, layout, M):
    dtype, bits = WEIGHTS[kind]
    K, N = 128, 21
    x = dict(x_layouts(M, K, dtype, seed=M))[layout]
    args, kw = weight(N, K, dtype, bits, seed=3)
    check(native, x, *args, **kw, what=layout)


@pytest.mark.parametrize("M", (1, 40))
@pytest.mark.parametrize("kind", WEIGHTS)
def test_many_output_rows(native, kind, M):
    # Enough output rows to be split across threads (odd, so the split is uneven).
    dtype, bits = WEIGHTS[kind]
    x = rand((M, 256), dtype, M)
    args, kw = weight(1031, 256, dtype, bits)
    check(native, x, *args, **kw, what="N=1031")


@pytest.mark.parametrize("M", (1, 33))
@pytest.mark.parametrize("kind", WEIGHTS)
def test_long_rows(native, kind, M):
    # Talkie 13B's widest input (intermediate 13696): fp32 accumulation over long rows.
    dtype, bits = WEIGHTS[kind]
    x = rand((M, 13696), dtype, M)
    for group_size in (64,) if bits is None else (64, 128):
        args, kw = weight(9, 13696, dtype, bits, group_size=group_size)
        check(native, x, *args, **kw, what="K=13696")


@pytest.mark.parametrize("kind", WEIGHTS)
def test_non_contiguous_weight(native, kind):
    # Views of the weight (and of scales and biases): read as MLX reads them.
    dtype, bits = WEIGHTS[kind]
    x = rand((5, 128), dtype)
    if bits is None:
        check(native, x, rand((128, 30), dtype, 1).T, what="transposed weight")
        check(native, x, rand((60, 128), dtype, 2)[::2], what="row-strided weight")
    else:
        w, s, b = quantized(31, 128, dtype, 64, bits)
        check(native, x, w[1:], s[1:], b[1:], 64, bits, what="row-offset views")
        check(native, x, w[::2], s[::2], b[::2], 64, bits, what="row-strided views")
        st_, bt = mx.contiguous(s.T).T, mx.contiguous(b.T).T
        check(native, x, w, st_, bt, 64, bits, what="column-major scales and biases")


@pytest.mark.parametrize("kind", WEIGHTS)
def test_empty_x(native, kind):
    dtype, bits = WEIGHTS[kind]
    args, kw = weight(9, 128, dtype, bits)
    got = native.linear(mx.zeros((0, 128), dtype), *args, **kw)
    mx.eval(got)
    # MLX 0.32.4's CPU quantized_matmul dies of SIGFPE on an empty x: its
    # output dtype comes from a one-row x instead.
    want = mlx_linear(mx.zeros((1, 128), dtype), *args, **kw)
    assert got.shape == (0, 9) and got.dtype == want.dtype


def test_defaults_are_mlx_affine_defaults(native):
    # group_size=None, bits=None mean mx.quantize's affine defaults (64, 4).
    w, s, b = quantized(19, 256, mx.float32, 64, 4)
    x = rand((3, 256))
    for impl in (native, get_impl("reference")):
        got = impl.linear(x, w, s, b)
        np.testing.assert_allclose(O.to64(got), O.to64(impl.linear(x, w, s, b, group_size=64, bits=4)), rtol=0, atol=0)
    check(native, x, w, s, b, None, None, what="defaults")


# ---- every instruction set and thread count ------------------------------------------

ISA_KINDS = {**WEIGHTS, "dense_fp16": (mx.float16, None), "q4_fp32": (mx.float32, 4), "q8_bf16": (mx.bfloat16, 8)}
#: x in another dtype than the weight / scales (fp32 output): (weight dtype, bits, x dtype).
ISA_MIXED = {"q4_fp32_bf16x": (mx.float32, 4, mx.bfloat16), "q8_fp16_bf16x": (mx.float16, 8, mx.bfloat16),
             "q6_bf16_fp16x": (mx.bfloat16, 6, mx.float16), "dense_fp32_bf16x": (mx.float32, None, mx.bfloat16)}


def check_threads(native, x, args, kw, what):
    """``check`` with two threads, then the same call with one: the same bits
    (the op splits its output rows, or the GEMM its columns, across threads,
    and no thread's sums depend on another's). The two-thread result."""
    N = tk.native.ops
    N.set_num_threads(2)
    two = check(native, x, *args, **kw, what=what)
    N.set_num_threads(1)
    one = native.linear(x, *args, **kw)
    assert mx.array_equal(one, two).item(), f"{what}: 1 thread != 2 threads"
    return two


@pytest.mark.parametrize("kind", [*ISA_KINDS, *ISA_MIXED])
def test_isa_and_threads(native, isa, restore_threads, kind):
    # Each ISA's kernels by the accuracy rule (decode and prefill rows, odd N,
    # a split-sized N); one thread and two give the same bits (split by rows).
    dtype, bits, xdtype = ISA_MIXED[kind] if kind in ISA_MIXED else (*ISA_KINDS[kind], ISA_KINDS[kind][0])
    for M in (1, 2, 7, 33, 64):
        for n_out in (37, 515):
            args, kw = weight(n_out, 192, dtype, bits, seed=n_out)
            check_threads(native, rand((M, 192), xdtype, M), args, kw, f"isa={isa} M={M} N={n_out}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dense_decode_rows_side_by_side(native, isa, restore_threads, dtype):
    # Dense rows of 4 KB or more are read 4 at a time (csrc/kernels/linear.cpp,
    # kDecodeNR; shorter rows one at a time, as test_isa_and_threads' K = 192):
    # each ISA by the accuracy rule at K = 2083 (whole 32-column blocks and a
    # 3-column tail) and N = 515 (4-row blocks and a remainder of 3 in the last
    # thread's rows), every decode M through its row tiles; 1 and 2 threads
    # give the same bits.
    args, kw = weight(515, 2083, dtype, None, seed=7)
    for M in (1, 2, 5, 7):
        check_threads(native, rand((M, 2083), dtype, M), args, kw, f"isa={isa} M={M} K=2083")


#: Prefill GEMM shapes (M, N): M from just above the decode/prefill switch (8)
#: past every register block's height (AVX2 6, AVX-512 14) and past one row
#: block (~512 rows); N past a register block's width (16 / 32) and a column
#: block (256). K: three K blocks (256) with a short last one, and for dense
#: weights a last 32-column block that is partly past K.
GEMM_SHAPES = ((8, 33), (29, 300), (531, 17))
GEMM_K = {"dense": 600, "quantized": 576}


@pytest.mark.parametrize("kind", [*ISA_KINDS, *ISA_MIXED])
def test_prefill_gemm_edges(native, isa, restore_threads, kind):
    # The prefill GEMM's edge tiles in every direction, on each ISA, by the
    # accuracy rule; 1 and 2 threads give the same bits (split by columns).
    dtype, bits, xdtype = ISA_MIXED[kind] if kind in ISA_MIXED else (*ISA_KINDS[kind], ISA_KINDS[kind][0])
    K = GEMM_K["dense" if bits is None else "quantized"]
    for M, n_out in GEMM_SHAPES:
        args, kw = weight(n_out, K, dtype, bits, seed=n_out)
        check_threads(native, rand((M, K), xdtype, M), args, kw, f"isa={isa} M={M} N={n_out} K={K}")


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "last_axis_strided"])
def test_bf16_x_bf16_w(native, isa, restore_threads, layout):
    # bf16 x against bf16 w: on v4-bf16 the bf16 dot-product loops
    # (csrc/kernels/linear.cpp, linear_bf16: vdpbf16ps; the GEMM's word-pair
    # panels for M >= 8, decode_dot's four rows side by side below),
    # elsewhere the fp32 loops; by the accuracy rule, on every ISA, 1 and 2
    # threads the same bits. K = 613: 19 whole 32-column blocks and an odd
    # tail of 5 (the GEMM's last word pairs a column with a zero past K, the
    # decode loop's tail is a masked load); K = 13696: Talkie's widest input,
    # 54 GEMM K blocks. Prefill M and N as GEMM_SHAPES plus a 14-row block
    # (two register blocks) against two micro-panels and a part; decode M = 1
    # and 5 (a 4-row tile and a 1-row one) with N = 515 (4-row blocks and a
    # remainder of 3).
    for M, n_out, K in ((8, 33, 613), (14, 130, 613), (100, 51, 613), (29, 70, 13696), (1, 515, 613),
                        (5, 515, 13696)):
        x = rand((M, K), mx.bfloat16, M)
        if layout == "transposed":
            x = rand((K, M), mx.bfloat16, M).T
        elif layout == "last_axis_strided":
            x = rand((M, 2 * K), mx.bfloat16, M)[:, ::2]
        args, kw = weight(n_out, K, mx.bfloat16, None, seed=n_out)
        check_threads(native, x, args, kw, f"isa={isa} {layout} M={M} N={n_out} K={K}")


@pytest.mark.parametrize("M", (1, 8))
def test_bf16_tail_reads_only_its_row(native, isa, M):
    # K = 613: a row's last 32-column block ends 19 columns in, where the next
    # row begins. An infinity there must not reach this row (inf · 0 = NaN:
    # x is zero past K in the dot loops' copy, so a plain 64-byte load of the
    # tail would pass the check above and fail here).
    K = 613
    w = rand((5, K), mx.float32, 3, K**-0.5)
    w = mx.where((mx.arange(5)[:, None] == 1) & (mx.arange(K)[None, :] < 32), float("inf"), w).astype(mx.bfloat16)
    x = rand((M, K), mx.bfloat16, M)
    got = native.linear(x, w)
    finite = mx.isfinite(got.astype(mx.float32))
    assert mx.all(finite[:, [0, 2, 3, 4]]).item(), f"isa={isa} M={M}: a neighbour's infinity reached a row"
    assert not mx.any(finite[:, 1]).item(), f"isa={isa} M={M}: row 1 holds an infinity"


def int8_x(M, K, seed):
    """bf16 x of Talkie's kind for the integer path: normal, a few outliers 300×
    the rest in some 32-column blocks, and some blocks all zero."""
    x = rand((M, K), mx.float32, seed)
    col = mx.arange(K)
    x = x * mx.where(col % 997 == 11, 300.0, 1.0)
    x = mx.where((col // 32) % 7 == 3, 0.0, x)
    return x.astype(mx.bfloat16)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", BITS)
def test_int8_path(native, isa, restore_threads, bits, group_size):
    # The integer path at Talkie's widths (hidden 5120, intermediate 13696;
    # N small), every M it takes (1..7), within the bf16 tolerance of the
    # float64 oracle relative to max|y|; 1 and 2 threads give the same bits.
    # N = 51: 8-row tiles, a remainder, and enough rows to split across threads.
    # Measured (every ISA, q4/q6/q8): at most 0.014 with int8_x's 300×
    # outliers (the small values sharing their blocks round to a step of
    # 300σ/127), 0.007 for plain normal x (q8 on v3, whose x is pair-scaled:
    # 0.0093); the bf16 output's own rounding is 0.002-0.004, MLX's own op
    # 0.047 on the same inputs (it accumulates in bf16).
    for M in range(1, 8):
        K = 5120 if M % 2 else 13696
        x = int8_x(M, K, M)
        w, s, b = quantized(51, K, mx.bfloat16, group_size, bits, seed=M + bits)
        two = check_threads(native, x, (w, s, b), dict(group_size=group_size, bits=bits), f"isa={isa} M={M}")
        err = O.rel_err(two, O.linear(x, w, s, b, group_size, bits))
        assert err <= O.TOL[mx.bfloat16], f"isa={isa} M={M}: rel. error {err:.3g} vs the float64 oracle"


@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_int8_decode_rows_side_by_side(native, isa, restore_threads, group_size):
    # 8-bit codes against one row of bf16 x are read 4 rows of w at a time on
    # the AVX2 tables (csrc/kernels/linear_int8.cpp, side_by_side): N = 515
    # leaves 4-row blocks and a remainder in each thread's rows, K = 2080 (65
    # blocks: group size 32) ends in a unit of one block. Within the bf16
    # tolerance of the float64 oracle; 1 and 2 threads give the same bits
    # (a remainder row sums in the same order as a block's).
    K = 2080 if group_size == 32 else 2176
    x = int8_x(1, K, 5)
    w, s, b = quantized(515, K, mx.bfloat16, group_size, 8, seed=group_size)
    two = check_threads(native, x, (w, s, b), dict(group_size=group_size, bits=8), f"isa={isa} K={K}")
    err = O.rel_err(two, O.linear(x, w, s, b, group_size, 8))
    assert err <= O.TOL[mx.bfloat16], f"isa={isa}: rel. error {err:.3g} vs the float64 oracle"


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", BITS)
def test_int8_gemm(native, isa, restore_threads, bits, group_size):
    # The integer prefill GEMM (csrc/kernels/linear_gemm8.cpp) on each ISA
    # that runs it for these bits, by the integer path's rule (check); at
    # Talkie's widths (13696, 5120) within the bf16 tolerance of the float64
    # oracle relative to max|y|, as the decode path; 1 and 2 threads give the
    # same bits. M: the decode/prefill switch (8), odd (13: the last register
    # block reads padding rows), a prefill (100). K: past two K blocks (512)
    # with a short last one; group size 32: 32·odd (a last half unit). N = 51:
    # a second, partial micro-panel. Measured
    # (v3, v4, v4-vnni; q4/q6/q8), relative to max|y|: at most 0.014 at
    # Talkie's widths with int8_x's 300× outliers and zero blocks (as the
    # decode path: test_int8_path), up to 0.018 at K = 1152 / 1184, where an
    # outlier's block is a larger share of y (check's rule holds there).
    # q8 on v3 (pair-scaled x, Zen 3): 0.0123-0.0127 at M = 13, K = 13696
    # (q4 there: 0.0088-0.0094), 0.0062-0.0076 for normal x.
    if bits not in tk.native.ops.int8_gemm_bits():
        pytest.skip(f"{isa} runs the fp32 GEMM for q{bits} prefill (csrc/kernels/table.cpp: no AVX2)")
    K = 32 * 37 if group_size == 32 else 1152
    for M, k in ((8, K), (13, K), (100, K), (13, 13696), (100, 5120)):
        x = int8_x(M, k, M)
        w, s, b = quantized(51, k, mx.bfloat16, group_size, bits, seed=M + bits)
        two = check_threads(native, x, (w, s, b), dict(group_size=group_size, bits=bits), f"isa={isa} M={M} K={k}")
        if k >= 5120:
            err = O.rel_err(two, O.linear(x, w, s, b, group_size, bits))
            assert err <= O.TOL[mx.bfloat16], f"isa={isa} M={M} K={k}: rel. error {err:.3g} vs the float64 oracle"


def test_int8_q8_pair_sums(native, isa):
    # 8-bit codes near 255 against blocks of x whose adjacent entries are both
    # at the block's max |x|: scaled by max |x| to ±127, vpmaddubsw's pair
    # sums (255·127·2) would saturate int16 and lose half of y; without VNNI
    # the integer paths scale such blocks by their largest adjacent pair
    # (csrc/kernels/quantize_x.inc), so y stays within the integer path's
    # tolerance (measured 0.008: x̂ = 64/63.5 of x in every block). Decode
    # (M = 3) and the prefill GEMM (M = 9). (With max-scaled x: 1.47.)
    if isa == "base":
        pytest.skip("base has no integer path (csrc/kernels/table.cpp)")
    K, N = 512, 24
    col = mx.arange(K)
    # Per 64-column group: 63 weights at -0.5 (code 255) and one at 1.0 (code 0).
    w = mx.where(col % 64 == 5, 1.0, -0.5)[None, :] * mx.linspace(0.5, 1.5, N)[:, None]
    w, s, b = mx.quantize(w.astype(mx.bfloat16), group_size=64, bits=8)
    assert (np.array(w).view(np.uint8) == 255).mean() > 0.9  # (four 8-bit codes per uint32 word)
    sign = mx.where((col // 4) % 2 == 0, 1.0, -1.0)  # pairs of equal entries, sign flips every 4 columns
    for M in (3, 9):
        x = (mx.arange(1, M + 1)[:, None] * mx.where(col < 256, 1.0, sign)[None, :]).astype(mx.bfloat16)
        got = native.linear(x, w, s, b, group_size=64, bits=8)
        err = O.rel_err(got, O.linear(x, w, s, b, 64, 8))
        assert err <= O.TOL[mx.bfloat16], f"isa={isa} M={M}: rel. error {err:.3g} vs the float64 oracle (saturated?)"


@pytest.mark.parametrize("K, group_size", [(32 * 37, 32), (64 * 37, 64), (64 * 37 + 32, 32)],
                         ids=["half_unit", "odd_units", "odd_units_and_half"])
def test_int8_path_odd_units(native, isa, K, group_size):
    # half_unit: K = 32·odd, so the last 64-column unit holds one block.
    # odd_units: an odd number of whole units, so on AVX-512 tables (two units
    # per vector) the last one runs alone at 256 bits, and on AVX2 tables q4's
    # four units a step (quad_step) leave one to the unit-at-a-time loop; then
    # both (K = 32·37: four quads, two units and a half).
    for M in (1, 2, 3):
        x = int8_x(M, K, 5)
        for bits in BITS:
            w, s, b = quantized(21, K, mx.bfloat16, group_size, bits, seed=bits)
            check(native, x, w, s, b, group_size, bits, what=f"isa={isa} M={M} K={K}")



@pytest.mark.parametrize("bits", BITS)
def test_int8_quantizer_views_same_bits(native, isa, bits):
    # The integer paths quantize contiguous bf16 x in place and strided x
    # gathered into a buffer first (csrc/kernels/quantize_x.inc's bf16_run),
    # as decode's last unit of one block; a strided view of the same values
    # gives the same bits. K = 64·37 + 32 (decode's gathered tail in both);
    # decode M = 1 (expanded dx, two accumulators), 2 (compact dx) and 3
    # (expanded), the prefill GEMM M = 9; outliers and all-zero blocks in x
    # (int8_x).
    if isa == "base":
        pytest.skip("base has no integer path (csrc/kernels/table.cpp)")
    K = 64 * 37 + 32
    w, s, b = quantized(19, K, mx.bfloat16, 32, bits, seed=bits)
    for M in (1, 2, 3, 9):
        x = int8_x(M, K, 7)
        strided = mx.repeat(x, 2, axis=1)[:, ::2]
        assert mx.array_equal(strided, x).item()
        one = native.linear(x, w, s, b, group_size=32, bits=bits)
        two = native.linear(strided, w, s, b, group_size=32, bits=bits)
        assert mx.array_equal(one, two).item(), f"isa={isa} bits={bits} M={M}: contiguous x != strided view"



@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("bits", (None, *BITS))
@pytest.mark.parametrize("xd", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_non_finite_x(native, isa, xd, bits, value):
    # A NaN or an infinity in a row of x makes that row of y non-finite, never
    # finite garbage: the integer paths (bf16 x) round x to int8, where NaN
    # would convert to an arbitrary integer, so a block holding one gets
    # d = NaN (quantize_x.inc) and its row is NaN (inf too: MLX's own op
    # gives ±inf or NaN). The other rows keep their bits. Decode (M 1, 3)
    # and the prefill GEMM (M 9).
    K = 256
    args, kw = weight(21, K, xd, bits, seed=4)
    for M in (1, 3, 9):
        clean = rand((M, K), xd, M)
        col = mx.arange(K)[None, :]
        row = mx.arange(M)[:, None]
        x = mx.where((row == 0) & (col == 37), mx.array(value, xd), clean)
        got, want = native.linear(x, *args, **kw), native.linear(clean, *args, **kw)
        assert not mx.isfinite(got[0]).any().item(), f"isa={isa} M={M}: a finite output from a row of x holding {value}"
        if value != value:  # NaN
            assert mx.isnan(got[0]).all().item(), f"isa={isa} M={M}: NaN in x, not NaN in y"
        assert mx.array_equal(got[1:], want[1:]).item(), f"isa={isa} M={M}: the other rows changed"


# ---- modes and bits the native kernels do not run: MLX's op, its exact result --------


def _mode_case(mode, bits, xd):
    K, N = 128, 23
    w = rand((N, K), mx.float32, 5, K**-0.5)
    x = rand((4, K), xd, 6)
    if mode == "affine":
        packed = mx.quantize(w.astype(xd), group_size=32, bits=bits)
        return x, packed, dict(group_size=32, bits=bits, mode=mode)
    packed = mx.quantize(w, mode=mode)
    return x, (*packed, None)[:3], dict(mode=mode)


OTHER = [("affine", 2), ("affine", 3), ("affine", 5), ("mxfp4", None), ("mxfp8", None), ("nvfp4", None)]


@pytest.mark.parametrize("xd", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode, bits", OTHER, ids=[f"{m}{b or ''}" for m, b in OTHER])
@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_other_modes_and_bits_are_mlx_op(impl, mode, bits, xd):
    x, (w, s, b), kw = _mode_case(mode, bits, xd)
    got = impl.linear(x, w, s, b, **kw)
    want = mx.quantized_matmul(x, w, s, b, transpose=True, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert mx.array_equal(got, want).item(), f"{impl} {mode} bits={bits}: differs from mx.quantized_matmul"


def test_public_linear_is_native_on_the_cpu(native):
    assert mx.default_device() == mx.cpu and tk.backend() == "native"
    x = rand((3, 128), mx.bfloat16)
    w, s, b = quantized(17, 128, mx.bfloat16, 32, 6)
    assert mx.array_equal(tk.linear(x, w, s, b, group_size=32, bits=6),
                          native.linear(x, w, s, b, group_size=32, bits=6)).item()
    wd = rand((17, 128), mx.float16)
    assert mx.array_equal(tk.linear(x, wd), native.linear(x, wd)).item()


# ---- gradients: through MLX's op (the fallback) -------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", GRADIENT_IMPLS, indirect=True)
def test_dense_gradients(impl, dtype):
    x, w = rand((2, 5, 96), dtype, 1), rand((37, 96), dtype, 2, 0.1)
    cot = rand((2, 5, 37), dtype, 3)
    _, got = mx.vjp(lambda x, w: impl.linear(x, w), [x, w], [cot])
    _, base = mx.vjp(lambda x, w: x @ w.T, [x, w], [cot])
    want = (O.to64(cot) @ O.to64(w), np.einsum("bln,blk->nk", O.to64(cot), O.to64(x)))
    for name, g, gb, gw in zip(("dx", "dw"), got, base, want):
        assert g.dtype == gb.dtype and g.shape == gb.shape, name
        assert_no_worse_than_mlx(g, gw, gb, f"{impl} {name}")
    # mx.grad of a scalar loss, both arguments: d/dx sum(x @ w.T) is the column sums of w.
    def loss(f):
        return lambda x, w: f(x, w).astype(mx.float32).sum()

    got = mx.grad(loss(impl.linear), argnums=(0, 1))(x, w)
    base = mx.grad(loss(lambda x, w: x @ w.T), argnums=(0, 1))(x, w)
    want = (np.broadcast_to(O.to64(w).sum(0), x.shape), np.broadcast_to(O.to64(x).sum((0, 1)), w.shape))
    for name, g, gb, gw in zip(("grad x", "grad w"), got, base, want):
        assert_no_worse_than_mlx(g, gw, gb, f"{impl} {name}")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", GRADIENT_IMPLS, indirect=True)
def test_quantized_gradient_wrt_x(impl, dtype, bits):
    w, s, b = quantized(37, 128, dtype, 32, bits)
    x, cot = rand((3, 4, 128), dtype, 1), rand((3, 4, 37), dtype, 2)
    f = lambda x: impl.linear(x, w, s, b, group_size=32, bits=bits)  # noqa: E731
    _, (got,) = mx.vjp(f, [x], [cot])
    _, (base,) = mx.vjp(lambda x: mlx_linear(x, w, s, b, 32, bits), [x], [cot])
    assert got.dtype == base.dtype and got.shape == base.shape == x.shape
    assert_no_worse_than_mlx(got, O.to64(cot) @ O.dequantize(w, s, b, 32, bits), base, f"{impl} dx")
    # And mx.grad with the weight held fixed.
    g = mx.grad(lambda x: f(x).astype(mx.float32).sum())(x)
    gb = mx.grad(lambda x: mlx_linear(x, w, s, b, 32, bits).astype(mx.float32).sum())(x)
    assert_no_worse_than_mlx(g, np.broadcast_to(O.dequantize(w, s, b, 32, bits).sum(0), x.shape), gb, f"{impl} grad")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", GRADIENT_IMPLS, indirect=True)
def test_quantized_gradients_wrt_scales_and_biases(impl, dtype, bits):
    # What DWQ trains: d/ds and d/db of w = s·q + b, per group.
    gs = 32
    w, s, b = quantized(37, 128, dtype, gs, bits)
    x, cot = rand((2, 3, 128), dtype, 1), rand((2, 3, 37), dtype, 2)
    _, got = mx.vjp(lambda s, b: impl.linear(x, w, s, b, group_size=gs, bits=bits), [s, b], [cot])
    _, base = mx.vjp(lambda s, b: mlx_linear(x, w, s, b, gs, bits), [s, b], [cot])
    q = O.unpack(w, bits).astype(np.float64).reshape(37, -1, gs)  # (N, groups, gs)
    xg = O.to64(x).reshape(6, -1, gs)  # (M, groups, gs)
    c = O.to64(cot).reshape(6, 37)
    want = (np.einsum("mn,mgk,ngk->ng", c, xg, q), np.einsum("mn,mgk->ng", c, xg))
    for name, g, gb, gw in zip(("d scales", "d biases"), got, base, want):
        assert g.dtype == gb.dtype and g.shape == gb.shape, name
        assert_no_worse_than_mlx(g, gw, gb, f"{impl} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_derivatives_match_mlx(impl, dtype):
    # vjp and jvp through each fused backend: MLX's op's, dense and quantized.
    x, cot = rand((3, 96), dtype, 1), [rand((3, 37), dtype, 3)]
    dense = [x, rand((37, 96), dtype, 2, 0.1)]
    O.assert_derivatives_match(lambda x, w: impl.linear(x, w), lambda x, w: x @ w.T, dense, cot, dtype)
    w, s, b = quantized(37, 96, dtype, 32, 4)
    # (MLX's quantized_matmul has a jvp with respect to x only.)
    O.assert_derivatives_match(
        lambda x: impl.linear(x, w, s, b, group_size=32, bits=4), lambda x: mlx_linear(x, w, s, b, 32, 4), [x], cot, dtype
    )


# ---- bad input: one table, every backend ---------------------------------------------


def _q(N=8, K=128, gs=64, bits=4, dtype=mx.float32):
    return quantized(N, K, dtype, gs, bits)


X = lambda K=128, dtype=mx.float32: mx.zeros((2, K), dtype)  # noqa: E731
WQ, SQ, BQ = _q()
W8, S8, B8 = _q(bits=8)
MXFP4 = mx.quantize(mx.zeros((8, 128)), mode="mxfp4")

test_bad_input = bad_input_test("linear", [
    Bad("x not an array", ([[1.0] * 128], mx.zeros((8, 128))), TypeError, "[linear] x must be an mx.array, got list."),
    Bad("x integer", (mx.zeros((2, 128), mx.int32), mx.zeros((8, 128))), TypeError,
        "[linear] x must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("x scalar", (mx.array(1.0), mx.zeros((8, 1))), ValueError,
        "[linear] x must have at least 1 dimensions, got shape ().", cpp=True),
    Bad("weight not an array", (X(), [[0.0] * 128]), TypeError, "[linear] weight must be an mx.array, got list."),
    Bad("weight 1-D", (X(), mx.zeros((128,))), ValueError, "[linear] weight must have shape (N, K), got (128,).", cpp=True),
    Bad("weight 3-D", (X(), mx.zeros((1, 8, 128))), ValueError,
        "[linear] weight must have shape (N, K), got (1, 8, 128).", cpp=True),
    Bad("dense weight integer", (X(), mx.zeros((8, 128), mx.int32)), TypeError,
        "[linear] weight must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("dense K mismatch", (X(127), mx.zeros((8, 128))), ValueError,
        "[linear] x has 127 features but weight (8, 128) expects 128 (K).", cpp=True),
    Bad("biases without scales", (X(), mx.zeros((8, 128)), None, BQ), ValueError,
        "[linear] biases were given without scales (a quantized weight needs both).", cpp=True),
    Bad("group_size on dense", (X(), mx.zeros((8, 128))), ValueError,
        "[linear] group_size and bits apply to a quantized weight; no scales were given.", {"group_size": 64}, cpp=True),
    Bad("bits on dense", (X(), mx.zeros((8, 128))), ValueError,
        "[linear] group_size and bits apply to a quantized weight; no scales were given.", {"bits": 4}, cpp=True),
    Bad("mode not a string", (X(), WQ, SQ, BQ), TypeError, "[linear] mode must be a string, got int.", {"mode": 4}),
    Bad("float quantized weight", (X(), mx.zeros((8, 16)), SQ, BQ), TypeError,
        "[linear] a quantized weight must be uint32 (as mx.quantize packs it), got mlx.core.float32.", cpp=True),
    Bad("scales not an array", (X(), WQ, SQ.tolist(), BQ), TypeError, "[linear] scales must be an mx.array, got list."),
    Bad("biases not an array", (X(), WQ, SQ, 0.0), TypeError, "[linear] biases must be an mx.array, got float."),
    Bad("scales integer", (X(), WQ, SQ.astype(mx.int32), BQ), TypeError,
        "[linear] scales must be float32, float16 or bfloat16, got mlx.core.int32.", cpp=True),
    Bad("biases integer", (X(), WQ, SQ, BQ.astype(mx.uint8)), TypeError,
        "[linear] biases must be float32, float16 or bfloat16, got mlx.core.uint8.", cpp=True),
    Bad("affine without biases", (X(), WQ, SQ, None), ValueError,
        "[linear] affine quantization needs biases (mx.quantize returns weight, scales, biases).", cpp=True),
    Bad("bits 7", (X(), WQ, SQ, BQ), ValueError,
        "[linear] bits must be one of 2, 3, 4, 5, 6, 8 for affine quantization, got 7.", {"bits": 7}, cpp=True),
    Bad("bits 16", (X(), WQ, SQ, BQ), ValueError,
        "[linear] bits must be one of 2, 3, 4, 5, 6, 8 for affine quantization, got 16.", {"bits": 16}, cpp=True),
    Bad("group_size 48", (X(), WQ, SQ, BQ), ValueError,
        "[linear] group_size must be 32, 64 or 128 for affine quantization, got 48.", {"group_size": 48}, cpp=True),
    Bad("group_size 16", (X(), WQ, SQ, BQ), ValueError,
        "[linear] group_size must be 32, 64 or 128 for affine quantization, got 16.", {"group_size": 16}, cpp=True),
    Bad("group_size float", (X(), WQ, SQ, BQ), TypeError, "[linear] group_size must be an int or None, got float.",
        {"group_size": 64.0}),
    Bad("bits bool", (X(), WQ, SQ, BQ), TypeError, "[linear] bits must be an int or None, got bool.", {"bits": True}),
    Bad("K not a multiple of group_size", (X(96), WQ[:, :12], SQ[:, :1], BQ[:, :1]), ValueError,
        "[linear] x has 96 features, not a multiple of group_size 64.", cpp=True),
    Bad("packed width vs bits", (X(), W8, S8, B8), ValueError,
        "[linear] weight (8, 32) does not hold 128 features at 4 bits (expected (8, 16)).", {"bits": 4}, cpp=True),
    Bad("packed width vs K", (X(256), WQ, SQ, BQ), ValueError,
        "[linear] weight (8, 16) does not hold 256 features at 4 bits (expected (8, 32)).", cpp=True),
    Bad("scales shape", (X(), WQ, SQ[:, :1], BQ), ValueError,
        "[linear] scales must have shape (8, 2) (N, K/group_size), got (8, 1).", cpp=True),
    Bad("biases shape", (X(), WQ, SQ, BQ[:4]), ValueError,
        "[linear] biases must have shape (8, 2) (N, K/group_size), got (4, 2).", cpp=True),
    Bad("scales rows", (X(), WQ, SQ[:5], BQ[:5]), ValueError,
        "[linear] scales must have shape (8, 2) (N, K/group_size), got (5, 2).", cpp=True),
    # Other modes: MLX's quantized_matmul checks them (its messages, behind "[linear] ").
    Bad("unknown mode", (X(), WQ, SQ, BQ), ValueError,
        re.compile(r"^\[linear\] \[quantized_matmul\] Invalid quantization mode 'bogus'"), {"mode": "bogus"}, cpp=True),
    Bad("mxfp4 with biases", (X(), *MXFP4, mx.zeros((8, 4))), ValueError,
        re.compile(r"^\[linear\] \[quantized_matmul\] Biases must be null for quantization mode 'mxfp4'"),
        {"mode": "mxfp4"}, cpp=True),
    Bad("mxfp4 K mismatch", (X(96), *MXFP4), ValueError,
        re.compile(r"^\[linear\] \[quantized_matmul\] Last dimension of first input with shape \(\.\.\., 96\)"),
        {"mode": "mxfp4"}, cpp=True),
])


# ---- randomized -----------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    M=st.integers(1, 70),
    N=st.integers(1, 70),
    xd=st.sampled_from(DTYPES),
    wd=st.sampled_from(DTYPES),
    quant=st.sampled_from([None, *BITS]),
)
def test_randomized(data, M, N, xd, wd, quant):
    native = get_impl("native")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    scale = data.draw(st.sampled_from([1e-2, 1.0, 50.0]), label="x scale")
    lead = data.draw(st.sampled_from([(), (2,), (1, 3)]), label="leading dims")
    x_shape = (*lead, M)
    if quant is None:
        K = data.draw(st.integers(1, 384), label="K")
        x = rand((*x_shape, K), xd, seed, scale)
        check(native, x, rand((N, K), wd, seed + 1, K**-0.5), what="randomized")
    else:
        gs = data.draw(st.sampled_from(GROUP_SIZES), label="group_size")
        K = gs * data.draw(st.integers(1, 384 // gs), label="groups")
        x = rand((*x_shape, K), xd, seed, scale)
        if data.draw(st.booleans(), label="transposed x"):
            x = mx.swapaxes(rand((*x_shape[:-1], K, M), xd, seed, scale), -1, -2)
        w, s, b = quantized(N, K, wd, gs, quant, seed + 1)
        check(native, x, w, s, b, gs, quant, what="randomized")
