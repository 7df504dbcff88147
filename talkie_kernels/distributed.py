"""Talkie across processes: tensor and pipeline parallelism over ``mx.distributed``.

What mlx-lm's models offer through ``Model.shard(group)`` and
``model.model.pipeline(group)``, for the fused Talkie model, plus
``sharded_load`` (mlx-lm's ``sharded_load`` for Talkie checkpoints) and
``maybe_shard`` (what a command line entry point calls under ``mlx.launch``).

**Tensor parallel** (``shard``): every rank keeps ``H / n`` heads and
``intermediate / n`` MLP columns. The fused projections are split per segment
(the rows of each of q, k, v, and of each of gate, linear, by rank: what
``mlx.nn.layers.distributed.shard_inplace(..., segments=3)`` / ``segments=2``
do), ``attn_resid`` / ``mlp_resid`` by input columns, ``head_gain`` with its
heads; the embedding and ``lm_head`` stay whole on every rank. The layers stay
this package's ``Linear`` / ``QuantizedLinear`` (their arrays are sliced in
place, so the products still run through ``talkie_kernels.linear``); the
attention and MLP add an explicit ``mx.distributed.all_sum`` of the partial
output of ``attn_resid`` / ``mlp_resid``. A quantized weight split by columns
keeps whole quantization groups only when ``(K / n) % group_size == 0``;
heads, MLP width or groups that do not divide raise ``ValueError`` before any
array is touched.

**Pipeline** (``pipeline``): mlx-lm's convention (``mlx_lm.models.pipeline``):
the blocks are split in order, the low ranks take the extra block of an uneven
split, and rank ``n-1`` runs the first blocks, rank 0 the last ones. A stage
receives the residual stream and its norm from rank ``r+1``, runs its blocks and
sends both to rank ``r-1``; rank 0's final norm reaches every rank through an
``all_gather``, so every rank computes the same logits (and samples the same
token). The embedding skip ``e_x = rms_norm(embed(ids))`` is recomputed on
every stage from the token ids instead of being sent. ``model.layers`` is the
stage's own blocks, so mlx-lm's ``make_prompt_cache`` makes caches for them
only.

Both run on any ``mx.distributed`` backend; the ring backend (TCP, or
Thunderbolt between Macs) cannot split a group, so tensor and pipeline
parallelism are used one at a time there. ``exit_on_lost_peer`` (installed by
``sharded_load``) ends a rank whose ring peer died instead of letting it wait
forever; ``share_cores`` (called by ``maybe_shard``) splits a host's cores
among its ranks for the native ops.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx
from mlx.nn.layers.distributed import shard_inplace

__all__ = [
    "shard",
    "pipeline",
    "sharded_load",
    "maybe_shard",
    "check_tensor_parallel",
    "check_pipeline",
    "exit_on_lost_peer",
    "local_ranks",
    "share_cores",
]

_BLOCK_KEY = re.compile(r"^model\.blocks\.(\d+)\.")


# ---------------------------------------------------------------------------
# Checks (from the config, before loading; from the layers, before sharding)


def _layer_quantization(config: dict, path: str) -> Optional[dict]:
    """The quantization ``mlx_lm.utils.load_model`` will give the layer at ``path``
    according to ``config`` (its per-layer entries first): a dict or None."""
    q = config.get("quantization")
    if q is None:
        legacy = config.get("quantization_config") or {}
        if legacy.get("quant_method") in ("mxfp4", "mxfp8"):
            return {"group_size": 32, "bits": 4 if legacy["quant_method"] == "mxfp4" else 8}
        return None
    if path in q:
        return q[path] if isinstance(q[path], dict) else None
    return q


def check_tensor_parallel(config: dict, n: int) -> None:
    """Raise ``ValueError`` if a Talkie checkpoint with ``config`` (a config.json
    dict, quantization entry included) cannot be split ``n`` ways by heads."""
    if n <= 1:
        return
    heads = config["num_attention_heads"]
    head_dim = config["head_dim"]
    inter = config["intermediate_size"]
    problems = []
    if heads % n:
        problems.append(f"{heads} attention heads do not split evenly across {n} ranks")
    if inter % n:
        problems.append(f"intermediate_size {inter} does not split evenly across {n} ranks")
    if not problems:
        for i in range(config["num_hidden_layers"]):
            for path, k in (
                (f"model.blocks.{i}.attn.attn_resid", heads * head_dim),
                (f"model.blocks.{i}.mlp.mlp_resid", inter),
            ):
                q = _layer_quantization(config, path)
                if q is not None and (k // n) % q["group_size"]:
                    problems.append(_group_message(path, k, n, q["group_size"]))
    if problems:
        raise ValueError(
            f"cannot shard Talkie across {n} ranks (tensor parallel): " + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )


def _group_message(path: str, k: int, n: int, group_size: int) -> str:
    return (
        f"{path} is quantized with group_size {group_size} and its {k} input columns "
        f"split {n} ways give {k // n} columns per rank, not a multiple of {group_size} "
        f"(quantize with a group size dividing {k // n}, or use pipeline parallelism)"
    )


def check_pipeline(num_layers: int, n: int, split=None) -> list:
    """The number of blocks of each rank, or ``ValueError``."""
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


def _check_model(model, n: int) -> None:
    """``check_tensor_parallel`` from the model's own layers (quantization included)."""
    from .models.talkie import QuantizedLinear

    problems = []
    args = model.args
    heads = args.num_attention_heads
    if heads % n:
        problems.append(f"{heads} attention heads do not split evenly across {n} ranks")
    if args.intermediate_size % n:
        problems.append(
            f"intermediate_size {args.intermediate_size} does not split evenly across {n} ranks"
        )
    if not problems:
        for i, block in enumerate(model.model.blocks):
            if block is None:
                continue
            if block.attn.n_heads != heads:
                problems.append(f"model.blocks.{i}.attn is already sharded")
                continue
            for path, layer in (
                (f"model.blocks.{i}.attn.attn_resid", block.attn.attn_resid),
                (f"model.blocks.{i}.mlp.mlp_resid", block.mlp.mlp_resid),
            ):
                if "bias" in layer:
                    problems.append(f"{path} has a bias (a sharded-to-all layer cannot)")
                if isinstance(layer, QuantizedLinear) or "scales" in layer:
                    k = layer["weight"].shape[-1] * 32 // layer.bits
                    if (k // n) % layer.group_size:
                        problems.append(_group_message(path, k, n, layer.group_size))
    if problems:
        raise ValueError(
            f"cannot shard Talkie across {n} ranks (tensor parallel): " + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )


# ---------------------------------------------------------------------------
# Tensor parallel


def shard(model, group: Optional[mx.distributed.Group] = None) -> None:
    """``Model.shard(group)``: split every block's heads and MLP across ``group``, in place.

    Checks everything first (``ValueError``, nothing changed), then slices the
    arrays. The slices are lazy: on a lazily loaded model, evaluating one reads
    its full array once and keeps only the rank's part.
    """
    group = group or mx.distributed.init()
    n = group.size()
    if n == 1:
        return
    _check_model(model, n)
    for block in model.model.blocks:
        if block is None:
            continue
        attn, mlp = block.attn, block.mlp
        shard_inplace(attn.attn_qkv, "all-to-sharded", segments=3, group=group)
        shard_inplace(attn.head_gain, "all-to-sharded", group=group)
        shard_inplace(attn.attn_resid, "sharded-to-all", group=group)
        attn.n_heads //= n
        attn.tp_group = group
        shard_inplace(mlp.mlp_gate_linear, "all-to-sharded", segments=2, group=group)
        shard_inplace(mlp.mlp_resid, "sharded-to-all", group=group)
        mlp.tp_group = group
    model.tp_group = group


# ---------------------------------------------------------------------------
# Pipeline


def pipeline(talkie_model, group: mx.distributed.Group, split=None) -> None:
    """``TalkieModel.pipeline(group, split=None)``: keep this rank's blocks only.

    As mlx-lm's ``PipelineMixin.pipeline``: ``split[r]`` blocks for rank ``r``
    (default: even, the low ranks take the extra ones); rank ``r`` runs the
    blocks after those of ranks ``r+1 .. n-1``. ``blocks`` keeps its indices
    (earlier blocks are ``None``, later ones dropped) so checkpoint keys still
    match; ``pipeline_layers`` are the stage's blocks.
    """
    n, r = group.size(), group.rank()
    blocks = talkie_model.blocks
    if any(b is None for b in blocks) or talkie_model.pipeline_group is not None:
        raise ValueError("this model is already split into pipeline stages")
    split = check_pipeline(len(blocks), n, split)
    start = sum(split[r + 1:])
    end = start + split[r]
    kept = blocks[:end]
    kept[:start] = [None] * start
    talkie_model.blocks = kept
    talkie_model.start_idx, talkie_model.end_idx = start, end
    talkie_model.pipeline_rank, talkie_model.pipeline_size = r, n
    talkie_model.pipeline_group = group if n > 1 else None


def pipeline_recv(talkie_model, x: mx.array, normed: mx.array):
    """Before the stage's blocks: ``(x, normed)`` from rank ``r+1`` (unless last rank)."""
    r, n = talkie_model.pipeline_rank, talkie_model.pipeline_size
    if r < n - 1:
        both = mx.distributed.recv_like(
            mx.stack([x, normed]), r + 1, group=talkie_model.pipeline_group
        )
        x, normed = both[0], both[1]
    return x, normed


def pipeline_send(talkie_model, x: mx.array, normed: mx.array, cache) -> mx.array:
    """After the stage's blocks: send to rank ``r-1``; every rank gets rank 0's ``normed``."""
    r, group = talkie_model.pipeline_rank, talkie_model.pipeline_group
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


# ---------------------------------------------------------------------------
# A lost peer

#: What MLX's ring backend prints when it gives up on a socket.
_RING_ABORT = b"[ring] Too many send/recv errors"
#: The exit status of a rank that lost a peer.
LOST_PEER_EXIT = 75
_watchdog: Optional[threading.Thread] = None


def exit_on_lost_peer(grace: float = 3.0) -> None:
    """Make this process exit (status ``LOST_PEER_EXIT``) when the ring backend
    loses a peer, instead of waiting forever.

    MLX's ring backend raises ``RuntimeError("[ring] connection to a peer was
    lost")`` for the collectives in flight when a peer dies, but abandons the
    ones queued after it: a generation loop, which queues the next step's
    all_sums while the current one runs, then blocks in C++ for good (no
    exception, no timeout). The only trace is the backend's message on stderr,
    so this watches it: fd 2 goes through a pipe that a daemon thread copies to
    the real stderr; on the message, the process gets ``grace`` seconds to
    raise and exit on its own, then ends with ``os._exit``. Installed once per
    process by ``sharded_load`` when the world has more than one rank; fd 2 is
    restored (and the pipe drained) at exit.
    """
    global _watchdog
    if _watchdog is not None:
        return
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        tail = b""
        forward = True
        while True:
            try:
                data = os.read(read_end, 65536)
            except OSError:
                return
            if not data:
                return
            view = memoryview(data)
            while forward and view:
                try:
                    view = view[os.write(real, view):]
                except OSError:
                    forward = False  # the real stderr is gone: keep draining the pipe
            tail = (tail + data)[-len(_RING_ABORT) - 65536:]
            if _RING_ABORT in tail:
                tail = b""
                threading.Thread(target=_exit_later, args=(real, grace), daemon=True).start()

    def restore():
        # Closing the pipe's write end (fd 2) lets pump copy what is left and stop.
        os.dup2(real, 2)
        _watchdog.join(timeout=2.0)

    _watchdog = threading.Thread(target=pump, name="talkie-lost-peer", daemon=True)
    _watchdog.start()
    atexit.register(restore)


def _exit_later(fd: int, grace: float) -> None:
    time.sleep(grace)
    try:
        os.write(
            fd,
            b"talkie_kernels: a peer of the distributed group is gone (MLX's ring backend "
            b"aborted its connection); exiting instead of waiting for it forever\n",
        )
    finally:
        os._exit(LOST_PEER_EXIT)


# ---------------------------------------------------------------------------
# Loading


def _local_path(path_or_repo, pipeline_layers=None) -> Path:
    """A local checkpoint directory; a Hugging Face repo is downloaded (for a
    pipeline stage, only the weight files with its blocks when the checkpoint
    has an index)."""
    from mlx_lm.utils import _download

    path = str(path_or_repo)
    if path.startswith(("/", ".", "~")) or Path(path).is_dir():
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such model directory")
        return p
    meta = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jsonl", "*.jinja"]
    model_path = Path(_download(path, allow_patterns=meta))
    index = model_path / "model.safetensors.index.json"
    if pipeline_layers is not None and index.exists():
        _download(path, allow_patterns=sorted(_files_for(index, pipeline_layers)))
    else:
        _download(path)
    return model_path


def _files_for(index: Path, layers: range) -> set:
    """The weight files of ``index`` holding blocks in ``layers`` or non-block weights."""
    files = set()
    for key, f in json.loads(index.read_text())["weight_map"].items():
        m = _BLOCK_KEY.match(key)
        if m is None or int(m.group(1)) in layers:
            files.add(f)
    return files


def sharded_load(
    path_or_repo,
    pipeline_group: Optional[mx.distributed.Group] = None,
    tensor_group: Optional[mx.distributed.Group] = None,
    return_config: bool = False,
    *,
    tokenizer_config: Optional[Dict[str, Any]] = None,
    model_config: Optional[Dict[str, Any]] = None,
    pipeline_split=None,
):
    """Load this rank's share of a Talkie checkpoint -> ``(model, tokenizer[, config])``.

    As ``mlx_lm.utils.sharded_load``: with neither group, tensor parallel over
    ``mx.distributed.init()``. The config is checked first (heads, MLP width and
    quantization groups for tensor parallelism, block count for the pipeline):
    ``ValueError`` before any weight is read. A pipeline stage loads only its
    blocks (with ``model.safetensors.index.json`` a downloaded repo fetches
    only their files; without it, every file is opened but only the stage's
    arrays are read); a tensor-parallel rank reads each projection whole once
    and keeps its slices. Weights are evaluated one projection at a time, so a
    rank's peak memory is its share plus about one projection (a fused one's
    parts and their concatenation).
    """
    from mlx_lm.utils import load_tokenizer

    from .loader import get_model_classes, load_model_only
    from .models import talkie

    if pipeline_group is None and tensor_group is None:
        tensor_group = mx.distributed.init()

    # The config alone decides whether the split is possible.
    path = str(path_or_repo)
    local = path.startswith(("/", ".", "~")) or Path(path).is_dir()
    if local:
        model_path = _local_path(path)
    else:
        from mlx_lm.utils import _download

        model_path = Path(_download(path, allow_patterns=["*.json"]))
    cfg_file = model_path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{model_path}: no config.json (not a model directory)")
    config = json.loads(cfg_file.read_text())
    if model_config:
        config.update(model_config)
    get_model_classes(config)  # model_type must be talkie
    if tensor_group is not None:
        check_tensor_parallel(config, tensor_group.size())
    layers = None
    if pipeline_group is not None:
        split = check_pipeline(config["num_hidden_layers"], pipeline_group.size(), pipeline_split)
        r = pipeline_group.rank()
        start = sum(split[r + 1:])
        layers = range(start, start + split[r])
    if not local:
        model_path = _local_path(path, layers)

    def model_classes(config):
        model_class, args_class = get_model_classes(config)

        def build(args):
            model = model_class(args)
            if pipeline_group is not None:
                model.model.pipeline(pipeline_group, split=pipeline_split)
                sanitize = model.sanitize
                # Drop other stages' block weights before the strict load: they
                # are never read (mx.load is lazy) and never referenced.
                object.__setattr__(
                    model,
                    "sanitize",
                    lambda w: sanitize(
                        {k: v for k, v in w.items() if _keep(k, layers)}
                    ),
                )
            return model

        return build, args_class

    model, config = load_model_only(model_path, lazy=True, model_config=model_config, model_classes=model_classes)
    if "sanitize" in vars(model):
        object.__delattr__(model, "sanitize")
    if tensor_group is not None:
        model.shard(tensor_group)
    _evaluate(model)

    tokenizer = load_tokenizer(
        model_path, tokenizer_config, eos_token_ids=config.get("eos_token_id", None)
    )
    # Every rank is ready before the first collective of generation.
    world = mx.distributed.init()
    if world.size() > 1:
        exit_on_lost_peer()
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world, stream=mx.cpu))
    if return_config:
        return model, tokenizer, config
    return model, tokenizer


def _keep(key: str, layers: range) -> bool:
    m = _BLOCK_KEY.match(key)
    return m is None or int(m.group(1)) in layers


def _evaluate(model) -> None:
    """Evaluate the weights one projection at a time: each reads its full
    arrays once (the parts of a fused one, and their concatenation), keeps its
    slice and frees the rest before the next."""
    for block in model.layers:
        for layer in (
            block.attn.attn_qkv,
            block.attn.attn_resid,
            block.mlp.mlp_gate_linear,
            block.mlp.mlp_resid,
        ):
            mx.eval(layer.parameters())
        mx.eval(block.parameters())
    mx.eval(model.parameters())


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
    from . import native

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
        from .loader import load

        model, tokenizer = load(path_or_repo, **kwargs)
        return model, tokenizer, None
    share_cores()
    groups = {"pipeline_group": world} if pipeline else {"tensor_group": world}
    model, tokenizer = sharded_load(path_or_repo, **groups, **kwargs)
    return model, tokenizer, world
