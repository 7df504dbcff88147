"""Native-extension specifics (talkie_kernels._native): what the shared per-op
tests (test_<op>.py) do not cover.

* the extension loads and mx.array crosses into it and back;
* strided inputs: transposed (B, L, H, D) views are read in place, a strided
  last axis is copied (and still right);
* the multi-threaded path equals the single-threaded one, bit for bit, and the
  baseline-x86-64 loops agree with the AVX2 ones;
* the Primitives: names in the graph, mx.compile, vmap and bitwise vjp through
  the fallback.

Bad input (the C++ checks included) is in each op's table, test_<op>.py.
"""

from __future__ import annotations

import re
import sys

import mlx.core as mx
import numpy as np
import pytest
from impls import DTYPE_IDS, DTYPES, get_impl

import oracle as O
import talkie_kernels as tk
from talkie_kernels import _checks as C

N, R = get_impl("native"), get_impl("reference")
X = tk.native.ops  # the extension itself: threads, instruction sets, counters


def rand(shape, dtype=mx.float32, seed=0, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


def same(a, b):
    """Bitwise equal arrays (same dtype and shape)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    return bool(mx.array_equal(a, b, equal_nan=True).item())


@pytest.fixture
def threads():
    """Restores the thread count after a test changes it."""
    n = X.num_threads()
    yield
    X.set_num_threads(n)


@pytest.fixture(params=X.available_isas() if X else ["unbuilt"])
def isa(request):
    """Runs a test with each instruction set's loops this CPU supports."""
    before = X.isa()
    X.use_isa(request.param)
    yield request.param
    X.use_isa(before)


# ---- smoke --------------------------------------------------------------------


def test_extension_loaded():
    assert tk.native_available()
    assert tk.backend() in ("native", "metal")
    assert X.isa() in X.available_isas()
    assert X.num_threads() >= 1


@pytest.mark.parametrize("dtype", DTYPES + [mx.int32], ids=DTYPE_IDS + ["int32"])
def test_roundtrip(dtype):
    a = mx.arange(24).reshape(2, 3, 4).astype(dtype)
    b = X.roundtrip(a)
    assert isinstance(b, mx.array)
    assert same(a, b)
    view = a.transpose(2, 0, 1)
    assert same(X.roundtrip(view), view)


# ---- strided inputs -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_qkv_views_are_read_in_place(dtype):
    B, L, H, D = 2, 17, 3, 64
    qkv = rand((B, L, 3, H, D), dtype)
    q, k = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(2))
    g = mx.random.uniform(0.5, 2, (H,), key=mx.random.key(1))
    mx.eval(qkv, g)
    before = X.contiguous_copies()
    got = N.rope_qk_norm(q, k, g, 5000)
    rot = N.rope(q, -3)
    mx.eval(got, rot)
    assert X.contiguous_copies() == before
    # Same values as from contiguous copies of the views.
    qc, kc = mx.contiguous(q), mx.contiguous(k)
    want = N.rope_qk_norm(qc, kc, g, 5000)
    assert same(got[0], want[0]) and same(got[1], want[1])
    assert same(rot, N.rope(qc, -3))
    # And the outputs are row-contiguous (B, H, L, D) arrays.
    assert got[0].shape == (B, H, L, D)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_last_axis_is_copied(dtype):
    x = rand((64, 6), dtype).T  # (6, 64) with last-axis stride 6
    y = rand((64, 6), dtype, seed=1).T
    mx.eval(x, y)
    before = X.contiguous_copies()
    normed = N.rms_norm(x)
    x_new, n2 = N.residual_norm(x, y, 0.5)
    mx.eval(normed, x_new, n2)
    assert X.contiguous_copies() == before + 3
    O.assert_accurate(normed, O.rms_norm(x), dtype, baseline=R.rms_norm(x))
    O.assert_accurate(x_new, O.residual_sum(x, y, mx.array([0.5])), dtype, baseline=R.residual_norm(x, y, 0.5)[0])

    q = rand((2, 3, 16, 6), dtype).swapaxes(-1, -2)  # (2, 3, 6, 16), D strided
    before = X.contiguous_copies()
    got = N.rope(q, 9)
    mx.eval(got)
    assert X.contiguous_copies() == before + 1
    assert same(got, N.rope(mx.contiguous(q), 9))
    O.assert_accurate(got, O.rope(q, 9), dtype, baseline=R.rope(q, 9))


def test_broadcast_and_sliced_inputs():
    # Stride-0 rows; offset and head_gain arrays that are strided views
    # (int32 offsets are read in place, not converted).
    row = rand((1, 128))
    x = mx.broadcast_to(row, (4, 128))
    O.assert_accurate(N.rms_norm(x), O.rms_norm(x), mx.float32, baseline=R.rms_norm(x))
    q = rand((3, 2, 4, 64))
    offsets = mx.array([10, 99, -4, 99, 7000, 99], dtype=mx.int32)[::2]
    gains = mx.array([0.5, 9.0, 1.5, 9.0], dtype=mx.float16)[::2]
    want_q, want_k = O.rope_qk_norm(q, q, gains, np.array(offsets))
    got_q, got_k = N.rope_qk_norm(q, q, gains, offsets)
    ref_q, ref_k = R.rope_qk_norm(q, q, gains, offsets)
    O.assert_accurate(got_q, want_q, mx.float32, baseline=ref_q)
    O.assert_accurate(got_k, want_k, mx.float32, baseline=ref_k)


def test_long_batched_prefill():
    # Per-row offsets with long prompts: the cos/sin table (B * L rows) is
    # bigger than the buffer the extension keeps between calls.
    B, L = 4, 4100
    q = rand((B, 1, L, 128))
    off = mx.array([0, 2000, -3000, 70000])
    got = N.rope(q, off)
    O.assert_accurate(got, O.rope(q, off), mx.float32, baseline=R.rope(q, off))
    assert same(N.rope(q, off), got)  # and again, with the table buffer reused


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", ["rms_norm", "rope"])
def test_chained_ops_run_in_place(op, dtype):
    # An input nothing else references lends its buffer to the output (as
    # MLX's own ops do): the op adds no memory, and the values are unchanged.
    # (Not for the two-output ops: MLX never reports their inputs donatable.)
    shape = (1, 4, 256, 128)
    q = rand(shape, dtype)
    size = q.nbytes
    mx.eval(q)
    run = {"rms_norm": lambda a: N.rms_norm(a), "rope": lambda a: N.rope(a, 5)}[op]
    held = q * 2
    mx.eval(held)
    want = run(held)  # input referenced from Python: a fresh output
    mx.eval(want)

    mx.eval(mx.zeros(1))
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    got = run(q * 2)  # a temporary: its buffer becomes the output's
    mx.eval(got)
    assert mx.get_peak_memory() - before <= size + (1 << 16)
    assert same(got, want)
    assert same(held, q * 2)  # the held input was not written


def test_norms_of_empty_rows():
    # Empty along D: the norms return empty arrays (RoPE refuses head_dim 0: test_rope.py).
    q = mx.zeros((2, 3, 4, 0))
    x_new, normed = N.residual_norm(q, q, 1.0, q, 0.5)
    mx.eval(N.rms_norm(q), x_new, normed)
    assert normed.shape == q.shape


@pytest.mark.parametrize("shape", [(0, 2, 3, 64), (1, 2, 0, 64)])
def test_empty(shape):
    q = mx.zeros(shape)
    g = mx.ones((shape[1],))
    a, b = N.rope_qk_norm(q, q, g, 3)
    assert a.shape == shape and b.shape == shape
    assert N.rope(q, 3).shape == shape
    assert N.rms_norm(q).shape == shape
    x_new, normed = N.residual_norm(q, q, 1.0, q, 0.5)
    mx.eval(a, b, x_new, normed)
    assert x_new.shape == shape


# ---- the machine probes -----------------------------------------------------------


def test_probes_measure(isa, threads):
    # Each ISA's probes run on 1 and 2 threads and give a positive, finite rate.
    for n in (1, 2):
        X.set_num_threads(n)
        kept = mx.ones((1 << 17,), dtype=mx.uint64)  # 1 MiB of ones, read in place
        for rate in (X.fma_peak_gflops(1 << 22, 1), X.memory_read_gbps(1 << 20, 1), X.memory_read_gbps_of(kept, 2)):
            assert 0 < rate < float("inf"), (isa, n, rate)


@pytest.mark.parametrize("probe, args, message", [
    ("fma_peak_gflops", (0, 1), "[fma_peak_gflops] flops_per_thread must be at least 1e6 and repeats at least 1."),
    ("fma_peak_gflops", (1 << 22, 0), "[fma_peak_gflops] flops_per_thread must be at least 1e6 and repeats at least 1."),
    ("memory_read_gbps", (1 << 10, 1), "[memory_read_gbps] nbytes must be at least 1 MiB and repeats at least 1."),
    ("memory_read_gbps", (1 << 20, 0), "[memory_read_gbps] nbytes must be at least 1 MiB and repeats at least 1."),
])
def test_probes_validate_arguments(probe, args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(X, probe)(*args)


@pytest.mark.parametrize("buffer, repeats, error, message", [
    (lambda: mx.ones((1 << 17,), dtype=mx.int64), 1, TypeError,
     "[memory_read_gbps_of] buffer must be a 1-D mlx.core.uint64 array of ones, got (131072,) mlx.core.int64."),
    (lambda: mx.ones((2, 1 << 16), dtype=mx.uint64), 1, TypeError,
     "[memory_read_gbps_of] buffer must be a 1-D mlx.core.uint64 array of ones, got (2, 65536) mlx.core.uint64."),
    (lambda: mx.ones((1 << 10,), dtype=mx.uint64), 1, ValueError,
     "[memory_read_gbps_of] buffer must hold at least 1 MiB and repeats be at least 1."),
    (lambda: mx.ones((1 << 17,), dtype=mx.uint64), 0, ValueError,
     "[memory_read_gbps_of] buffer must hold at least 1 MiB and repeats be at least 1."),
    (lambda: mx.ones((1 << 18,), dtype=mx.uint64)[::2], 1, ValueError, "[memory_read_gbps_of] buffer must be contiguous."),
    # Its sum checks the read: a buffer of anything but ones is refused after it.
    (lambda: mx.zeros((1 << 17,), dtype=mx.uint64), 1, RuntimeError,
     "[memory_read_gbps_of] the read summed wrong (the buffer must hold ones)"),
])
def test_kept_read_probe_validates(buffer, repeats, error, message):
    with pytest.raises(error, match=re.escape(message)):
        X.memory_read_gbps_of(buffer(), repeats)


# ---- numerics the shared tests do not sweep -------------------------------------


@pytest.mark.parametrize("offset", [0, 5000, -5000, 123456, 2**31 - 1024])
def test_rope_angles_far_positions(isa, offset):
    # fp32 angles from pos * inv_freq in double, reduced mod pi/2: the error
    # stays at fp32 rounding however far the position.
    q = rand((1, 2, 8, 128))
    got = N.rope(q, offset)
    err = O.rel_err(got, O.rope(q, offset))
    assert err < 3e-7, err


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_isa_agree(isa, dtype):
    # Each instruction set against the oracle (the shared tests only run the best one).
    q, k = rand((2, 5, 33, 128), dtype), rand((2, 5, 33, 128), dtype, seed=1, scale=3)
    g = mx.random.uniform(0.5, 2, (5,), key=mx.random.key(2))
    off = mx.array([4099, -5])
    gq, gk = N.rope_qk_norm(q, k, g, off)
    wq, wk = O.rope_qk_norm(q, k, g, off)
    rq, rk = R.rope_qk_norm(q, k, g, off)
    O.assert_accurate(gq, wq, dtype, baseline=rq, what=f"{isa} q")
    O.assert_accurate(gk, wk, dtype, baseline=rk, what=f"{isa} k")
    x, y, s = (rand((3, 5120), dtype, seed=i) for i in (3, 4, 5))
    x_new, normed = N.residual_norm(x, y, mx.array([0.7]), s, mx.array([-1.3]))
    ref_x, ref_n = R.residual_norm(x, y, mx.array([0.7]), s, mx.array([-1.3]))
    want = O.residual_sum(x, y, mx.array([0.7]), s, mx.array([-1.3]))
    O.assert_accurate(x_new, want, dtype, baseline=ref_x, what=f"{isa} x_new")
    O.assert_accurate(normed, O.rms_norm(x_new), dtype, baseline=ref_n, what=f"{isa} normed")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["fp16", "bf16"])
def test_half_conversions_exact(dtype):
    # Every fp16 (bf16) value survives the kernels' 16-bit <-> fp32
    # conversions, in their vector loops and their tails. rope at position 0
    # is the identity (cos 0 = 1, sin 0 = 0): it loads and stores each finite
    # element once, subnormals and -0 included (rows of 64 never pair a finite
    # value with an inf/nan one: both formats put them in aligned runs of
    # 0x400 / 0x80 codes). residual_norm's x + 0*y keeps every value but -0;
    # rows of 67 put elements in the loops' tails too.
    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32) if dtype == mx.float16 else (bits.astype(np.uint32) << 16).view(np.float32)
    x = mx.array(bits).view(dtype).reshape(-1, 1, 1, 64)  # L = 1: every row at position 0
    before = X.isa()
    for isa in X.available_isas():
        X.use_isa(isa)
        out = N.rope(x, 0)
        got = np.array(out.view(mx.uint16)).reshape(-1)
        finite = np.isfinite(want)
        assert np.array_equal(got[finite], bits[finite]), isa
        assert np.isnan(np.array(out.astype(mx.float32)).reshape(-1)[np.isnan(want)]).all(), isa
        for D in (64, 67):
            n = (1 << 16) // D * D
            xs = mx.array(bits[:n]).view(dtype).reshape(-1, D)
            x_new, _ = N.residual_norm(xs, mx.zeros(xs.shape, dtype=dtype), 0.0)
            got = np.array(x_new.astype(mx.float32)).reshape(-1)
            same = np.isfinite(want[:n]) & (bits[:n] != 0x8000)  # -0 + 0 is +0
            assert np.array_equal(np.array(x_new.view(mx.uint16)).reshape(-1)[same], bits[:n][same]), (isa, D)
            inf = np.isinf(want[:n])
            assert np.array_equal(got[inf], want[:n][inf]), (isa, D)
            assert np.isnan(got[np.isnan(want[:n])]).all(), (isa, D)
    X.use_isa(before)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["fp16", "bf16"])
def test_rounding_matches_mlx(isa, dtype):
    # The one rounding per output is round-to-nearest-even, like MLX's astype:
    # residual_norm with gain 1 and y = small rounds x + y exactly once.
    x = mx.random.uniform(-4, 4, (64, 256), key=mx.random.key(0))
    y = mx.random.uniform(-1e-2, 1e-2, (64, 256), key=mx.random.key(1))
    x_new, _ = N.residual_norm(x.astype(dtype), y.astype(dtype), 1.0)
    want = (x.astype(dtype).astype(mx.float32) + y.astype(dtype).astype(mx.float32)).astype(dtype)
    assert same(x_new, want)


# ---- threads ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_threads_bitwise_equal(threads, dtype):
    q, k = rand((1, 8, 512, 128), dtype), rand((1, 8, 512, 128), dtype, seed=1)
    g = mx.random.uniform(0.5, 2, (8,), key=mx.random.key(2))
    x, y, s = (rand((512, 1024), dtype, seed=i) for i in (3, 4, 5))

    def run():
        outs = [*N.rope_qk_norm(q, k, g, mx.array(77)), N.rope(q, -9), N.rms_norm(x)]
        outs += N.residual_norm(x, y, 0.3, s, 0.8)
        mx.eval(outs)
        return outs

    X.set_num_threads(1)
    single = run()
    X.set_num_threads(64)  # clamped to the CPU's cores
    assert 1 <= X.num_threads() <= 64
    multi = run()
    for a, b in zip(single, multi):
        assert same(a, b)


def test_concurrent_callers_share_the_workers(threads):
    # parallel_for hands the spinning workers to one caller at a time; a
    # second caller meanwhile (another CPU stream, here from another Python
    # thread) splits its loop over MLX's thread pool instead. Both give the
    # single-threaded bits, and neither waits on the other.
    import threading

    w = mx.random.normal((2048, 1024), key=mx.random.key(6)).astype(mx.bfloat16)
    qw = mx.quantize(w, 64, 4)
    xs = [rand((3, 1024), mx.bfloat16, seed=7 + i) for i in range(2)]
    norm_in = rand((512, 1024), mx.float32, seed=9)
    mx.eval(qw, xs, norm_in)

    def run(x):
        return [tk.linear(x, *qw, group_size=64, bits=4), N.rms_norm(norm_in)]

    X.set_num_threads(1)
    expected = [run(x) for x in xs]
    mx.eval(expected)
    X.set_num_threads(64)
    got, errors = [None, None], []

    def caller(i):
        try:
            stream = mx.new_stream(mx.cpu)
            with mx.stream(stream):
                outs = []
                for _ in range(20):
                    outs = run(xs[i])
                    mx.eval(outs)
                got[i] = outs
        except Exception as e:  # surfaced below, with the thread's error
            errors.append(e)

    ts = [threading.Thread(target=caller, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a caller hung"
    assert not errors, errors
    for want, have in zip(expected, got):
        assert all(same(a, b) for a, b in zip(want, have))


@pytest.mark.parametrize("n", [1, 2, 37, 64])
def test_parallel_for_rethrows_a_piece_that_throws(threads, n):
    # A loop body that throws, on whichever thread runs that piece (the
    # caller's or a worker's: pieces are handed out dynamically), reaches the
    # caller as that one exception, and the next loop still visits every item
    # once. (Before parallel_for caught it, a worker's exception ended the
    # process here.)
    X.set_num_threads(64)
    for fail_at in range(n):
        with pytest.raises(RuntimeError, match=rf"\[parallel_for_check\] item {fail_at}$"):
            X.parallel_for_check(n, fail_at)
        assert X.parallel_for_check(n) == n * (n - 1) // 2
    X.set_num_threads(1)
    with pytest.raises(RuntimeError, match=r"item 0$"):
        X.parallel_for_check(n, 0)
    assert X.parallel_for_check(n) == n * (n - 1) // 2


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_refuses_below_one(n):
    # As TALKIE_KERNELS_NUM_THREADS does (these silently meant one thread).
    before = X.num_threads()
    with pytest.raises(ValueError, match=rf"\[set_num_threads\] n must be >= 1, got {n}"):
        X.set_num_threads(n)
    assert X.num_threads() == before


# ---- the Primitives -----------------------------------------------------------------


def test_primitive_names_in_graph(tmp_path):
    q = rand((1, 2, 3, 8))
    g = mx.ones((2,))
    outs = [*N.rope_qk_norm(q, q, g, 1), N.rope(q, 2), N.rms_norm(q), *N.residual_norm(q, q, 0.5, q, 0.25)]
    path = tmp_path / "graph.dot"
    mx.export_to_dot(str(path), *outs)
    text = path.read_text()
    for name in ("TalkieRoPEQKNorm", "TalkieRoPE", "TalkieRMSNorm", "TalkieResidualNorm"):
        assert re.search(rf"\b{name}\b", text), name


def test_compile_matches_eager():
    q, k = rand((2, 4, 6, 64)), rand((2, 4, 6, 64), seed=1)
    g = mx.random.uniform(0.5, 2, (4,), key=mx.random.key(2))
    off = mx.array([7, 1999])

    def f(q, k, g, off):
        a, b = N.rope_qk_norm(q, k, g, off)
        x_new, normed = N.residual_norm(a, b, 0.5)
        return x_new, normed, N.rms_norm(N.rope(b, off))

    eager = f(q, k, g, off)
    compiled = mx.compile(f)(q, k, g, off)
    for a, b in zip(eager, compiled):
        assert same(a, b)


def test_vmap_uses_the_fallback():
    x = rand((3, 2, 4, 5, 32))  # vmapped axis 0 over (B, H, L, D) inputs
    g = mx.random.uniform(0.5, 2, (4,), key=mx.random.key(2))
    got = mx.vmap(lambda q: N.rope_qk_norm(q, q, g, 11)[0])(x)
    want = mx.vmap(lambda q: R.rope_qk_norm(q, q, g, 11)[0])(x)
    np.testing.assert_allclose(O.to64(got), O.to64(want), atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_vjp_all_ops(dtype):
    x, y, s = (rand((3, 64), dtype, seed=i) for i in range(3))
    a, b = mx.array([0.3]), mx.array([1.5])
    cot = [rand((3, 64), dtype, seed=7), rand((3, 64), dtype, seed=8)]
    _, got = mx.vjp(lambda *p: list(N.residual_norm(*p)), [x, y, a, s, b], cot)
    _, want = mx.vjp(lambda *p: list(R.residual_norm(*p)), [x, y, a, s, b], cot)
    for u, v in zip(got, want):
        assert same(u, v)
    _, got = mx.vjp(lambda p: N.rms_norm(p), [x], cot[:1])
    _, want = mx.vjp(lambda p: R.rms_norm(p), [x], cot[:1])
    assert same(got[0], want[0])
    q = rand((2, 2, 3, 64), dtype)
    off = mx.array([5, -2])
    cq = [rand(q.shape, dtype, seed=9)]
    _, got = mx.vjp(lambda p: N.rope(p, off), [q], cq)
    _, want = mx.vjp(lambda p: R.rope(p, off), [q], cq)
    assert same(got[0], want[0])


def test_eps_and_base_parameters():
    # Non-default eps/base reach the kernels (and is_equivalent keeps them apart under compile).
    q = rand((1, 2, 5, 64), scale=1e-3)
    g = mx.ones((2,))
    for eps, base in [(1e-6, 1e4), (C.FP32_EPS, 1e6)]:
        got = N.rope_qk_norm(q, q, g, 3, base=base, eps=eps)[1]
        O.assert_accurate(got, O.rms_norm(O.rope(q, 3, base), eps), mx.float32,
                          baseline=R.rope_qk_norm(q, q, g, 3, base=base, eps=eps)[1])

    f = mx.compile(lambda x: [N.rms_norm(x, 1e-2), N.rms_norm(x, 1e-6)])
    a, b = f(q)
    assert not same(a, b)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_huge_pages_collapses_in_place():
    # 24 MiB of distinct values: at least 10 whole 2 MiB pages, unchanged after.
    a = mx.arange(6 << 20, dtype=mx.uint32)
    mx.eval(a)
    try:
        done = X.huge_pages(a)
    except RuntimeError as e:
        pytest.skip(f"this kernel cannot collapse pages: {e}")
    if done == 0:
        pytest.skip("this kernel collapsed none of the pages (MADV_COLLAPSE needs Linux 6.1+)")
    assert 10 * (2 << 20) <= done <= a.nbytes
    assert mx.array_equal(a, mx.arange(6 << 20, dtype=mx.uint32)).item()
    assert X.huge_pages(mx.ones((10,))) == 0  # no whole 2 MiB page inside


def test_huge_pages_rejects_a_view():
    with pytest.raises(ValueError, match=r"^\[huge_pages\] array must be contiguous"):
        X.huge_pages(mx.ones((1024, 1024))[:, ::2])


def test_huge_pages_of_a_model_tree():
    from talkie_kernels.huge_pages import huge_pages

    tree = {"w": mx.zeros((3 << 20,), dtype=mx.float32) + 1, "small": mx.ones((8,)), "n": 3}
    mx.eval(tree["w"])
    got = huge_pages(tree)
    assert 0 <= got <= tree["w"].nbytes
    assert mx.all(tree["w"] == 1).item()
