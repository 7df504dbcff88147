"""What a command-line entry point does when ``mlx.launch`` may have started it.

``maybe_shard`` loads the model for the world it finds: ``loader.load`` in a
single process, ``loader.sharded_load`` over the world under ``mlx.launch``,
after ``share_cores`` gave the native ops this rank's share of the host's
cores (``local_ranks``: how many ranks of the launch run on this host).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import mlx.core as mx

from . import native
from .loader import load, sharded_load


def local_ranks() -> Optional[int]:
    """How many ranks of a ring launch run on this host (this rank's IP in
    ``MLX_HOSTFILE``, the JSON ``mlx.launch --backend ring`` writes); None when
    not launched that way."""
    path, rank = os.environ.get("MLX_HOSTFILE"), os.environ.get("MLX_RANK")
    if not path or rank is None:
        return None
    try:
        hosts = json.loads(Path(path).read_text())
        ips = [h[0].rsplit(":", 1)[0] for h in hosts]
        return ips.count(ips[int(rank)])
    except (OSError, ValueError, IndexError, TypeError, AttributeError, KeyError):
        return None


def share_cores() -> Optional[int]:
    """Give the native ops an even share of this host's cores when several ranks
    of a ring launch run on it (unless ``TALKIE_KERNELS_NUM_THREADS`` is set);
    returns the thread count set, or None."""
    n = local_ranks()
    if not n or n < 2 or os.environ.get("TALKIE_KERNELS_NUM_THREADS") or not native.available():
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = max(1, cores // n)
    native.ops.set_num_threads(threads)
    return threads


def maybe_shard(path_or_repo, *, pipeline: bool = False, **kwargs):
    """``(model, tokenizer, group)`` for an entry point that may run under ``mlx.launch``.

    With a world of one process: ``talkie_kernels.load`` and ``group`` None.
    Otherwise ``sharded_load`` over the whole world, tensor parallel, or
    pipeline parallel with ``pipeline=True``; ``group`` is the world group
    (rank 0 prints; all ranks must sample with the same seed), and the native
    ops get an even share of the host's cores (``share_cores``). ``kwargs`` go
    to ``load`` / ``sharded_load`` (``tokenizer_config``, ``model_config``).
    """
    world = mx.distributed.init()
    if world.size() == 1:
        model, tokenizer = load(path_or_repo, **kwargs)
        return model, tokenizer, None
    share_cores()
    groups = {"pipeline_group": world} if pipeline else {"tensor_group": world}
    model, tokenizer = sharded_load(path_or_repo, **groups, **kwargs)
    return model, tokenizer, world
