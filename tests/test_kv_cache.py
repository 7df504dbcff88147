"""The fused model's in-place KV appends (talkie_kernels/kv_cache.py, native ``kv_write``).

``kv_write`` is the one op that is not functional: it writes into the buffer
it is given. These tests hold it to what kv_cache.py relies on: the rows land
where asked and nowhere else, in the buffer's own memory; bad arguments are
ValueError/TypeError naming the op; and the model only writes in place into
buffers its cache wrote last, so copies, trims and restored states of a cache
append functionally. End to end, mlx-lm's pipelined ``generate_step`` gives
the same greedy tokens as a step-by-step loop across the cache's 256-row
growth, with and without the in-place path.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import KVCache, make_prompt_cache

import talkie_kernels as tk
from talkie_kernels import kv_cache, native
from talkie_kernels.configs import CONFIGS

from checkpoints import write_checkpoint

pytestmark = pytest.mark.skipif(native.ops is None, reason="the native extension is not built")

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def values(shape, seed, dtype):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("start, n", [(0, 1), (5, 1), (3, 4), (9, 3)])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_kv_write_writes_the_rows_in_the_buffer(dtype, start, n, transposed):
    buf = values((2, 3, 12, 8), 0, dtype)
    mx.eval(buf)
    before = np.array(buf.astype(mx.float32))
    rows = values((2, n, 3, 8), 1, dtype).transpose(0, 2, 1, 3) if transposed else values((2, 3, n, 8), 1, dtype)
    out = native.ops.kv_write(buf, rows, start)
    want = before.copy()
    want[:, :, start:start + n] = np.array(rows.astype(mx.float32))
    np.testing.assert_array_equal(np.array(out.astype(mx.float32)), want)
    # In the buffer's own memory: the input array sees the rows too.
    np.testing.assert_array_equal(np.array(buf.astype(mx.float32)), want)


def test_kv_write_keeps_earlier_readers_results():
    """A reader of the old rows scheduled before the write reads them unchanged."""
    buf = values((1, 2, 8, 4), 2, mx.float32)
    mx.eval(buf)
    old = np.array(buf)
    read = buf[:, :, :4].sum(axis=-1)
    mx.async_eval(read)
    out = native.ops.kv_write(buf, values((1, 2, 4, 4), 3, mx.float32), 4)
    mx.eval(out)
    np.testing.assert_allclose(np.array(read), old[:, :, :4].sum(axis=-1), rtol=1e-6)


@pytest.mark.parametrize("rows, start, error, match", [
    ((1, 2, 2, 4), 7, ValueError, r"\[kv_write\] rows \[7, 9\) do not fit a buffer of 8 rows"),
    ((1, 2, 1, 4), -1, ValueError, r"\[kv_write\] rows \[-1, 0\)"),
    ((1, 3, 1, 4), 0, ValueError, r"\[kv_write\] rows .* do not match buffer"),
    ((1, 2, 1, 5), 0, ValueError, r"\[kv_write\] rows .* do not match buffer"),
    ((2, 1, 4), 0, ValueError, r"\[kv_write\] buffer and rows must have shape"),
])
def test_kv_write_bad_arguments(rows, start, error, match):
    buf = mx.zeros((1, 2, 8, 4), mx.float32)
    with pytest.raises(error, match=match):
        native.ops.kv_write(buf, mx.zeros(rows, mx.float32), start)


def test_kv_write_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"\[kv_write\] rows must have buffer's dtype"):
        native.ops.kv_write(mx.zeros((1, 2, 8, 4), mx.float32), mx.zeros((1, 2, 1, 4), mx.float16), 0)


def append(cache, seed, n=1):
    k = values((1, 2, n, 4), seed, mx.float32)
    return k, kv_cache.update_and_fetch(cache, k, k + 1)


def test_update_and_fetch_matches_mlx_lm_and_writes_in_place_after_the_first_append():
    ours, theirs = KVCache(), KVCache()
    for step, n in enumerate([5, 1, 1, 3, 1]):
        k = values((1, 2, n, 4), step, mx.float32)
        in_place = kv_cache._owns(ours, n)
        assert in_place == (step > 0), step  # the first append allocates through mlx-lm
        buffer = ours.keys
        got = kv_cache.update_and_fetch(ours, k, k + 1)
        want = theirs.update_and_fetch(k, k + 1)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.array(g), np.array(w))
        assert ours.offset == theirs.offset
        if in_place:  # the rows went into the buffer the cache held
            np.testing.assert_array_equal(np.array(buffer[:, :, :ours.offset]), np.array(want[0]))


def test_a_copied_cache_appends_functionally_and_leaves_the_original_alone():
    cache = KVCache()
    append(cache, 0, 6)
    append(cache, 1)
    kept = np.array(cache.keys[:, :, :cache.offset])
    twin = copy.copy(cache)  # shares the buffers
    assert not kv_cache._owns(twin, 1)
    append(twin, 2)
    np.testing.assert_array_equal(np.array(cache.keys[:, :, :cache.offset]), kept)
    assert kv_cache._owns(cache, 1) and kv_cache._owns(twin, 1)  # each now writes its own buffer


@pytest.mark.parametrize("change", ["trim", "state", "grow"])
def test_no_in_place_write_after_the_cache_changed_hands(change):
    cache = KVCache()
    append(cache, 0, 4)
    assert kv_cache._owns(cache, 1)
    if change == "trim":
        cache.trim(2)
        assert not kv_cache._owns(cache, 1)
    elif change == "state":
        cache.state = (mx.array(cache.keys), mx.array(cache.values), cache.offset)
        assert not kv_cache._owns(cache, 1)
    else:  # past the buffer's 256 rows mlx-lm grows it
        assert not kv_cache._owns(cache, KVCache.step)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("kv") / "fp32", CONFIGS["talkie-2l-256"], "float32", seed=5)
    return tk.load(path)[0]


def step_by_step(model, prompt, n):
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)
    out = []
    for _ in range(n):
        tok = mx.argmax(logits[:, -1, :], axis=-1)
        mx.eval(tok)
        out.append(int(tok[0]))
        logits = model(tok[:, None], cache=cache)
    return out


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "waiting"])
def test_pipelined_generate_step_equals_step_by_step_across_growth(model, monkeypatch, in_place):
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 256, 250)]
    want = step_by_step(model, prompt, 12)  # 250 + 12 rows: the cache grows past 256
    writes = []
    real = native.ops.kv_write
    monkeypatch.setattr(native.ops, "kv_write", lambda *a: writes.append(1) or real(*a))
    if not in_place:
        monkeypatch.setattr(kv_cache, "_owns", lambda cache, n: False)
    steps = generate_step(mx.array(prompt), model, max_tokens=12, sampler=lambda x: mx.argmax(x, axis=-1))
    assert [int(t) for t, _ in steps] == want
    # mlx-lm prefills 249 tokens, then forwards one token at positions 249-261
    # (the 250th prompt token and the 12 generated ones: the pipelined loop
    # forwards the 12th too, for a 13th token nobody takes): 13
    # appends per layer, K and V, all in place but the one that grows the
    # buffer at position 256.
    assert len(writes) == (2 * len(model.layers) * (13 - 1) if in_place else 0)
