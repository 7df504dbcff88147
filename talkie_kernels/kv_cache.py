"""The fused model's KV appends on the CPU: in place, so mlx-lm's pipelined loop gains.

mlx-lm's ``KVCache`` appends with ``keys[..., prev:offset, :] = new``, a
``slice_update`` that MLX writes in place only if nothing else holds the
buffer when the update is *scheduled*. ``generate_step`` schedules step n+1
(``mx.async_eval``) while step n's attention still holds its views of the
buffers, so every step copied every layer's whole K and V: 31 ms instead of
3 ms per layer at 2048 cached positions, 40 heads × 128, bf16.

Two ways out, used in this order:

1. ``update_and_fetch``: for a plain ``KVCache`` whose buffers this module
   wrote last (and nobody has replaced, trimmed or copied since: see
   ``_owns``), the new rows are written into the buffers in place
   (``native.ops.kv_write``). Readers of the other rows scheduled earlier on
   the stream read them unchanged (a CPU stream runs its tasks in order), and
   no reader can see the new rows before they are written, since every later
   reader is scheduled after the write. The step in flight then overlaps the
   next step's graph building, as mlx-lm's plain model does.
2. ``wait_for_previous_step``: for every other cache (the first append of a
   buffer, the step that grows it by mlx-lm's 256 rows, ``BatchKVCache``,
   ``RotatingKVCache``, ``QuantizedKVCache``), wait for the step in flight
   before appending, so mlx-lm's own ``slice_update`` finds the buffer free
   and writes in place. Step n+1 needs step n's token anyway; the wait only
   stops its graph being built while step n computes.

On the GPU mlx-lm's behaviour is kept as it is.
"""

from __future__ import annotations

import weakref

import mlx.core as mx
from mlx_lm.models.cache import KVCache

import talkie_kernels as tk

from . import native

# cache -> (keys, values, offset) as update_and_fetch left them. A cache
# whose attributes still match wrote its buffers last: no other cache shares
# them (a copy of the cache is another object, absent here, and appends
# functionally; a trim or a new state changes the match).
_written: "weakref.WeakKeyDictionary[KVCache, tuple]" = weakref.WeakKeyDictionary()


def _owns(cache, n: int) -> bool:
    """Whether ``n`` new rows can go into ``cache``'s buffers in place."""
    mark = _written.get(cache) if type(cache) is KVCache else None
    return (mark is not None and mark[0] is cache.keys and mark[1] is cache.values
            and mark[2] == cache.offset and cache.offset + n <= cache.keys.shape[2])


def wait_for_previous_step(cache, n: int = 1) -> None:
    """On a CPU stream, wait for the work in flight unless every cache of
    ``cache`` (the model's list, one per layer) takes its next ``n`` rows in place."""
    if not cache or tk.backend() != "native":
        return
    if any(getattr(c, "keys", None) is not None and not _owns(c, n) for c in cache):
        mx.synchronize()


def update_and_fetch(cache, keys, values):
    """``cache.update_and_fetch(keys, values)``, in place where ``_owns`` allows.

    keys, values (B, H, n, D) -> the cache's keys and values so far,
    (B, H, offset, D) each, as mlx-lm returns them.
    """
    if tk.backend() != "native":
        return cache.update_and_fetch(keys, values)
    n = keys.shape[2]
    if _owns(cache, n):
        prev = cache.offset
        cache.keys = native.ops.kv_write(cache.keys, keys, prev)
        cache.values = native.ops.kv_write(cache.values, values, prev)
        cache.offset = prev + n
        out = cache.keys_and_values()
    else:
        out = cache.update_and_fetch(keys, values)
    if type(cache) is KVCache:
        _written[cache] = (cache.keys, cache.values, cache.offset)
    return out
