"""Pipeline parallelism for Talkie: mlx-lm's ``PipelineMixin`` over ``blocks``.

mlx-lm's convention (``mlx_lm.models.pipeline``): the blocks are split in
order, the low ranks take the extra block of an uneven split, and rank ``n-1``
runs the first blocks, rank 0 the last ones. A stage receives the residual
stream and its norm from rank ``r+1`` (``pipeline_recv``), runs its blocks and
sends both to rank ``r-1`` (``pipeline_send``); rank 0's final norm reaches
every rank through an ``all_gather``, so every rank computes the same logits
(and samples the same token). The embedding skip ``e_x = rms_norm(embed(ids))``
is recomputed on every stage from the token ids instead of being sent.
``pipeline_layers`` (the model's ``layers``) is the stage's own blocks, so
mlx-lm's ``make_prompt_cache`` makes caches for them only.

mlx-lm's own mixin splits ``self.layers``; Talkie's blocks are ``blocks`` (the
checkpoint keys are ``model.blocks.<i>.*``), hence this one.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx


def check_pipeline(num_layers: int, n: int, split=None) -> list:
    """The number of blocks of each of ``n`` ranks (``split``, or an even split), or ``ValueError``."""
    if split is None:
        if num_layers < n:
            raise ValueError(
                f"cannot split {num_layers} Talkie blocks across {n} pipeline ranks "
                "(each rank needs at least one block)"
            )
        base, extra = divmod(num_layers, n)
        return [base + (1 if r < extra else 0) for r in range(n)]
    split = list(split)
    if len(split) != n:
        raise ValueError(f"split has {len(split)} entries for group size {n}")
    if any(s <= 0 for s in split) or sum(split) != num_layers:
        raise ValueError(f"split {split} must be positive and sum to {num_layers} layers")
    return split


def stage_range(num_layers: int, n: int, rank: int, split=None) -> range:
    """The indices of the blocks rank ``rank`` of ``n`` runs (``check_pipeline``'s errors)."""
    split = check_pipeline(num_layers, n, split)
    start = sum(split[rank + 1:])
    return range(start, start + split[rank])


class PipelineMixin:
    """``pipeline(group, split=None)`` for a module holding its blocks in ``blocks``.

    Until ``pipeline`` is called the module runs every block (rank 0 of 1,
    ``end_idx`` None, no group).
    """

    def __init__(self):
        super().__init__()
        self.pipeline_rank = 0
        self.pipeline_size = 1
        #: The group a stage sends to and receives from; None when not split (or split 1 way).
        self.pipeline_group: Optional[mx.distributed.Group] = None
        #: This rank runs ``blocks[start_idx:end_idx]``.
        self.start_idx = 0
        self.end_idx: Optional[int] = None

    @property
    def pipeline_layers(self):
        """This rank's blocks (all of them unless split by ``pipeline``)."""
        return self.blocks[self.start_idx : self.end_idx]

    @property
    def stage_blocks(self) -> Optional[range]:
        """The indices of this stage's blocks once ``pipeline`` has run, else None."""
        return None if self.end_idx is None else range(self.start_idx, self.end_idx)

    def pipeline(self, group: mx.distributed.Group, split=None) -> None:
        """Keep this rank's blocks only, as mlx-lm's ``PipelineMixin.pipeline``.

        ``split[r]`` blocks for rank ``r`` (default: even, the low ranks take
        the extra ones); rank ``r`` runs the blocks after those of ranks
        ``r+1 .. n-1``. ``blocks`` keeps its indices (earlier blocks are
        ``None``, later ones dropped) so checkpoint keys still match.
        """
        n, r = group.size(), group.rank()
        if any(b is None for b in self.blocks) or self.pipeline_group is not None:
            raise ValueError("this model is already split into pipeline stages")
        stage = stage_range(len(self.blocks), n, r, split)
        kept = self.blocks[: stage.stop]
        kept[: stage.start] = [None] * stage.start
        self.blocks = kept
        self.start_idx, self.end_idx = stage.start, stage.stop
        self.pipeline_rank, self.pipeline_size = r, n
        self.pipeline_group = group if n > 1 else None

    def pipeline_recv(self, x: mx.array, normed: mx.array):
        """Before the stage's blocks: ``(x, normed)`` from rank ``r+1`` (unless last rank)."""
        r, n = self.pipeline_rank, self.pipeline_size
        if r < n - 1:
            both = mx.distributed.recv_like(mx.stack([x, normed]), r + 1, group=self.pipeline_group)
            x, normed = both[0], both[1]
        return x, normed

    def pipeline_send(self, x: mx.array, normed: mx.array, cache) -> mx.array:
        """After the stage's blocks: send to rank ``r-1``; every rank gets rank 0's ``normed``."""
        r, group = self.pipeline_rank, self.pipeline_group
        if r != 0:
            sent = mx.distributed.send(mx.stack([x, normed]), r - 1, group=group)
            normed = mx.depends(normed, sent)
            # mlx-lm evaluates only the caches while prefilling in chunks: the
            # send must be part of that graph too, or the next stage waits forever.
            last = cache[-1] if cache else None
            if last is not None and getattr(last, "keys", None) is not None:
                last.keys = mx.depends(last.keys, sent)
        rows = normed.shape[0]
        return mx.distributed.all_gather(normed, group=group)[:rows]
