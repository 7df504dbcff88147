"""What a command-line entry point does when ``mlx.launch`` may have started it.

``world`` finds the group (None in a single process); ``rank0_output`` keeps
the other ranks quiet; ``shared_seed`` gives every rank one seed; ``finish``
waits for all before the connections close.

``maybe_shard`` loads the model for the world it finds: ``loader.load`` in a
single process, ``loader.sharded_load`` over the world under ``mlx.launch``,
after ``share_cores`` gave the native ops this rank's share of the host's
cores (``local_ranks``: how many ranks of the launch run on this host).
"""

from __future__ import annotations

import contextlib
import json
import logging
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


def world():
    """The ``mx.distributed`` world group when this process is one of several
    (started by ``mlx.launch``), else None."""
    global _WORLD
    group = mx.distributed.init()
    if group.size() == 1:
        return None
    # Held for the life of the process: the ring backend closes its sockets when
    # the last reference goes, and doing that while the interpreter still runs
    # makes its receiving threads (and the peers') report errors on stderr.
    _WORLD = group
    return group


_WORLD = None


@contextlib.contextmanager
def rank0_output(group):
    """Within the block, only rank 0 of ``group`` (or a single process) prints:
    on the other ranks stdout, stderr and logging below ERROR go nowhere. An
    exception leaving the block is still reported (the streams are restored first)."""
    if group is None or group.rank() == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def shared_seed(seed: int | None, group) -> int:
    """``seed``, or (None) a random one drawn on rank 0: the same on every rank of ``group``."""
    if seed is not None:
        return seed
    mine = int.from_bytes(os.urandom(4), "little") >> 1 if group.rank() == 0 else 0
    total = mx.distributed.all_sum(mx.array(mine, dtype=mx.int32), group=group, stream=mx.cpu)
    return int(total.item())


def finish(group) -> None:
    """Wait until every rank of ``group`` is done, so none closes its connections
    while another still talks to it."""
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
