"""Tensor- and pipeline-parallel Talkie over ``mx.distributed`` (``talkie_kernels.distributed``).

Two local processes over MLX's ring backend (TCP on 127.0.0.1, free ports, the
environment ``mlx.launch --backend ring`` sets: ``MLX_RANK`` and a JSON
``MLX_HOSTFILE``), each with one native thread, every run under a timeout. The
workers are this file run as a script (``python test_distributed.py worker
...``): each rank loads its share with ``tk.sharded_load``, records its peak
memory, then loads the whole model in the same process as the single-process
reference and prints one JSON line of results that the tests check:

* tensor parallel (fp32, checkpoint without an index): greedy tokens equal the
  single-process fused model's and every step's logits agree within 1e-5
  relative; ``mlx_lm.stream_generate`` and ``batch_generate`` (left-padded
  prompts of different lengths, BatchKVCache with per-sequence offsets) give
  the single-process tokens; 4-bit (``mlx_lm.convert -q``) too, within 1e-4;
* pipeline (fp32, checkpoint split in two files with
  ``model.safetensors.index.json``, launched through ``mlx.launch``): the same,
  plus chunked prefill (mlx-lm evaluates only the caches between chunks);
* peak memory per rank well below the whole model;
* a rank that dies mid-generation (tensor parallel: rank 1; pipeline: rank 0):
  the other exits with an error instead of hanging (the ring backend's
  RuntimeError, or ``exit_on_lost_peer`` for the collectives MLX leaves
  waiting).

The divisibility errors and the pipeline's layer assignment are checked in
this process with a stand-in group (only ``rank()`` and ``size()`` are used
before any communication).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from talkie_kernels.lost_peer import LOST_PEER_EXIT

import oracle as O
import ring

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

#: 8 small blocks: the replicated embedding and head are a small part of the
#: model, so a rank's share is visibly below the whole. Group size 64 divides
#: the per-rank columns of attn_resid (128) and mlp_resid (384).
CONFIG = {
    "model_type": "talkie",
    "hidden_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "head_dim": 64,
    "intermediate_size": 768,
    "vocab_size": 512,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 2048,
}
PROMPT = [5, 17, 99, 3, 250, 7, 42]
BATCH = [[5, 17, 99, 3, 250, 7, 42], [11, 300], [64, 65, 66, 67]]
STEPS = 6
RUN_TIMEOUT = 60


class StandInGroup:
    """``rank()`` / ``size()`` of a group that is never communicated over."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


# ---------------------------------------------------------------------------
# Worker (one rank)


def _greedy(model, prompt, steps):
    """Greedy tokens and each step's logits (prefill's last row, then decode)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    ids = mx.array([prompt])
    tokens, logits = [], []
    for _ in range(steps):
        out = model(ids, cache=cache)[:, -1, :]
        mx.eval(out)
        logits.append(out)
        tok = int(mx.argmax(out, axis=-1).item())
        tokens.append(tok)
        ids = mx.array([[tok]])
    return tokens, logits, len(cache)


def _compare(model, ref, tokenizer, prompt_kwargs) -> dict:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    toks, logits, ncache = _greedy(model, PROMPT, STEPS)
    ref_toks, ref_logits, _ = _greedy(ref, PROMPT, STEPS)
    full = model(mx.array([PROMPT]))
    ref_full = ref(mx.array([PROMPT]))
    err = max([O.rel_err(a, b) for a, b in zip(logits, ref_logits)] + [O.rel_err(full, ref_full)])

    def stream(m):
        sampler = make_sampler(temp=0.0)
        return [
            r.token
            for r in stream_generate(
                m, tokenizer, PROMPT, max_tokens=STEPS, sampler=sampler, **prompt_kwargs
            )
        ]

    return {
        "tokens": toks,
        "ref_tokens": ref_toks,
        "rel_err": err,
        "stream": stream(model),
        "ref_stream": stream(ref),
        "caches": ncache,
    }


def worker(mode: str, path: str, q4_path: str) -> None:
    import talkie_kernels as tk

    world = mx.distributed.init()
    rank = world.rank()
    kind = "tensor_group" if mode == "tp" else "pipeline_group"
    out = {"rank": rank, "size": world.size()}

    if mode.startswith("die:"):
        # die:<tp|pp>:<rank that dies>
        _, split, dies = mode.split(":")
        group = {"tp": "tensor_group", "pp": "pipeline_group"}[split]
        model, tokenizer = tk.sharded_load(path, **{group: world})
        from mlx_lm import stream_generate

        print(json.dumps({"rank": rank, "loaded": True}), flush=True)
        for i, _ in enumerate(stream_generate(model, tokenizer, PROMPT, max_tokens=1000)):
            if rank == int(dies) and i == 2:
                os._exit(17)  # no goodbye: the socket just closes
        print(json.dumps({"rank": rank, "finished": True}), flush=True)
        return

    mx.reset_peak_memory()
    model, tokenizer = tk.sharded_load(path, **{kind: world})
    out["peak"] = mx.get_peak_memory()
    out["layers"] = len(model.layers)
    out["local_heads"] = model.layers[0].attn.n_heads
    out["start_idx"] = model.model.start_idx
    ref, _ = tk.load(path)
    # Chunked prefill under the pipeline: mlx-lm evaluates only the caches
    # between chunks, which must carry the send.
    kwargs = {"prefill_step_size": 3} if mode == "pp" else {}
    out["fp32"] = _compare(model, ref, tokenizer, kwargs)
    del model, ref

    model, _ = tk.sharded_load(q4_path, **{kind: world})
    ref, _ = tk.load(q4_path)
    out["q4"] = _compare(model, ref, tokenizer, kwargs)
    out["q4_linear"] = type(model.layers[0].attn.attn_qkv).__module__
    del model, ref

    if mode == "tp":
        from mlx_lm import batch_generate

        model, _ = tk.sharded_load(path, tensor_group=world)
        ref, _ = tk.load(path)
        out["batch"] = batch_generate(
            model, tokenizer, BATCH, max_tokens=STEPS, return_token_ids=True
        ).token_ids
        out["ref_batch"] = batch_generate(
            ref, tokenizer, BATCH, max_tokens=STEPS, return_token_ids=True
        ).token_ids
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------
# Launching


def run_ranks(args, n=2, timeout=RUN_TIMEOUT):
    """Run ``python this_file worker *args`` as ranks 0..n-1 of a ring on
    127.0.0.1 -> [(returncode, stdout, stderr)] per rank (None: killed at the timeout)."""
    return ring.run_ranks([sys.executable, HERE, "worker", *args], n, timeout)


def run_launch(args, n=2, timeout=RUN_TIMEOUT):
    """The same through ``mlx.launch --backend ring`` -> (returncode, stdout, stderr)."""
    return ring.run_launch(["--python", sys.executable, HERE, "worker", *args], n, timeout)


def _results(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            out[r["rank"]] = r
    return out


# ---------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from mlx_lm.convert import convert

    from talkie_kernels.checkpoint import write_checkpoint

    d = tmp_path_factory.mktemp("dist")
    fp32 = write_checkpoint(d / "fp32", CONFIG, "float32", seed=7)
    # The same weights in two files with an index (as a Hugging Face download).
    indexed = d / "fp32-indexed"
    shutil.copytree(fp32, indexed)
    (indexed / "model.safetensors").unlink()
    weights = mx.load(str(fp32 / "model.safetensors"))
    keys = sorted(weights)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        mx.save_safetensors(str(indexed / name), {k: weights[k] for k in part}, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (indexed / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    q4 = d / "q4"
    convert(str(fp32), str(q4), quantize=True, q_bits=4, q_group_size=64)
    model_bytes = sum(v.nbytes for v in weights.values())
    return {"fp32": fp32, "indexed": indexed, "q4": q4, "bytes": model_bytes}


def _check_run(results: dict, ckpts, *, pipeline: bool) -> None:
    assert set(results) == {0, 1}, results
    for rank, r in results.items():
        for fmt, tol in (("fp32", O.REORDERED_FP32), ("q4", O.MODEL_FP32)):
            c = r[fmt]
            assert c["tokens"] == c["ref_tokens"], (rank, fmt, c)
            assert c["stream"] == c["ref_stream"] == c["tokens"], (rank, fmt, c)
            assert c["rel_err"] < tol, (rank, fmt, c["rel_err"])
        # Each rank holds its share: well below the whole model (one full
        # projection at a time is read while loading).
        assert r["peak"] < 0.65 * ckpts["bytes"], (rank, r["peak"], ckpts["bytes"])
        assert r["q4_linear"] == "talkie_kernels.models.talkie"
    if pipeline:
        # mlx-lm's convention: rank 1 (the last) runs the first blocks.
        assert results[1]["start_idx"] == 0 and results[0]["start_idx"] == 4
        assert [results[r]["layers"] for r in (0, 1)] == [4, 4]
        assert [results[r]["fp32"]["caches"] for r in (0, 1)] == [4, 4]
    else:
        assert all(r["local_heads"] == 2 and r["layers"] == 8 for r in results.values())


# ---------------------------------------------------------------------------
# Tests


def test_tensor_parallel_matches_single_process(ckpts):
    runs = run_ranks(["tp", ckpts["fp32"], ckpts["q4"]])
    for rc, o, e in runs:
        assert rc == 0, (rc, o, e[-3000:])
    results = {}
    for _, o, _ in runs:
        results.update(_results(o))
    _check_run(results, ckpts, pipeline=False)
    for r in results.values():
        assert r["batch"] == r["ref_batch"], r
        assert len({len(t) for t in r["batch"]}) == 1  # all reached max_tokens


def test_pipeline_matches_single_process_under_mlx_launch(ckpts):
    rc, o, e = run_launch(["pp", ckpts["indexed"], ckpts["q4"]])
    assert rc == 0, (rc, o[-2000:], e[-3000:])
    _check_run(_results(o), ckpts, pipeline=True)


@pytest.mark.parametrize("split,dies", [("tp", 1), ("pp", 0)])
def test_dead_rank_fails_the_others(ckpts, split, dies):
    runs = run_ranks([f"die:{split}:{dies}", ckpts["fp32"], ckpts["q4"]], timeout=45)
    (rc_dead, _, _), (rc0, o0, e0) = runs[dies], runs[1 - dies]
    assert rc_dead == 17
    assert rc0 is not None, f"rank {1 - dies} hung after rank {dies} died"
    # The in-flight collective's RuntimeError, or exit_on_lost_peer for the
    # ones queued after it (which MLX's ring backend never completes).
    assert rc0 in (1, LOST_PEER_EXIT) and '"finished"' not in o0, (rc0, o0, e0[-2000:])
    assert "[ring]" in e0, e0[-2000:]


# -- in-process: the checks before loading, the pipeline split ------------


def _config_only(tmp_path, **overrides) -> Path:
    """A checkpoint directory with a config.json and no weights at all: the
    check must fail before any weight is looked for."""
    cfg = dict(CONFIG, **overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_heads_that_do_not_divide_fail_before_loading(tmp_path):
    import talkie_kernels as tk

    path = _config_only(tmp_path, num_attention_heads=3)
    with pytest.raises(ValueError, match="3 attention heads do not split evenly across 2 ranks"):
        tk.sharded_load(path, tensor_group=StandInGroup(0, 2))


def test_quantization_groups_that_do_not_divide_fail_before_loading(tmp_path):
    import talkie_kernels as tk

    # Talkie 13B's case: 13696 / 2 = 6848 columns, not a multiple of 128.
    path = _config_only(
        tmp_path, intermediate_size=13696, quantization={"group_size": 128, "bits": 4}
    )
    with pytest.raises(ValueError, match=r"mlp_resid is quantized with group_size 128.*6848"):
        tk.sharded_load(path, tensor_group=StandInGroup(1, 2))
    # A per-layer override is what counts for that layer (4 ranks: 64 columns
    # of attn_resid each, 192 of mlp_resid; groups of 32 fit, 128 don't).
    path = _config_only(
        tmp_path / "mixed",
        quantization={
            "group_size": 32, "bits": 4,
            "model.blocks.3.attn.attn_resid": {"group_size": 128, "bits": 8},
        },
    )
    with pytest.raises(ValueError, match=r"model\.blocks\.3\.attn\.attn_resid .* group_size 128"):
        tk.sharded_load(path, tensor_group=StandInGroup(0, 4))
    # Pipeline parallelism has no such constraint, but needs a block per rank.
    with pytest.raises(ValueError, match="cannot split 8 Talkie blocks across 9 pipeline ranks"):
        tk.sharded_load(path, pipeline_group=StandInGroup(0, 9))


def test_shard_checks_the_layers_before_changing_anything(ckpts):
    import mlx.nn as nn

    import talkie_kernels as tk

    model, _ = tk.load(ckpts["fp32"])
    before = model.layers[0].attn.attn_qkv.weight.shape
    with pytest.raises(ValueError, match="across 3 ranks"):
        model.shard(StandInGroup(0, 3))
    assert model.layers[0].attn.attn_qkv.weight.shape == before

    # Quantized in memory with groups of 128: attn_resid's 64 columns per rank
    # (4 ranks) don't hold one.
    nn.quantize(model, group_size=128, bits=4, class_predicate=lambda p, m: p.endswith("attn_resid"))
    with pytest.raises(ValueError, match=r"attn_resid is quantized with group_size 128"):
        model.shard(StandInGroup(0, 4))
    assert model.layers[0].attn.n_heads == 4
    assert model.layers[0].attn.attn_qkv.weight.shape == before


def test_shard_splits_segments_and_keeps_our_layers(ckpts):
    import talkie_kernels as tk
    from talkie_kernels.models.talkie import Linear, QuantizedLinear

    full, _ = tk.load(ckpts["q4"])
    for rank in (0, 1):
        model, _ = tk.load(ckpts["q4"])
        model.shard(StandInGroup(rank, 2))
        a, fa = model.layers[2].attn, full.layers[2].attn
        assert a.n_heads == 2 and isinstance(a.attn_qkv, QuantizedLinear)
        rows = 4 * 64
        for name in ("weight", "scales", "biases"):
            w, fw = a.attn_qkv[name], fa.attn_qkv[name]
            half = rows // 2
            expect = mx.concatenate(
                [fw[s * rows + rank * half: s * rows + (rank + 1) * half] for s in range(3)]
            )
            assert mx.array_equal(w, expect), name
            cols = fa.attn_resid[name].shape[1] // 2
            assert mx.array_equal(
                a.attn_resid[name], fa.attn_resid[name][:, rank * cols:(rank + 1) * cols]
            ), name
        assert mx.array_equal(a.head_gain.head_g, fa.head_gain.head_g[rank * 2:(rank + 1) * 2])
        g = model.layers[2].mlp.mlp_gate_linear.weight
        fg = full.layers[2].mlp.mlp_gate_linear.weight
        assert mx.array_equal(g[:384], fg[rank * 384:(rank + 1) * 384])
        assert mx.array_equal(g[384:], fg[768 + rank * 384:768 + (rank + 1) * 384])
        assert isinstance(model.lm_head, Linear) and model.lm_head.weight.shape[0] == 512


@pytest.mark.parametrize("size,split", [(2, [4, 4]), (3, [3, 3, 2]), (8, [1] * 8)])
def test_pipeline_assigns_blocks_as_mlx_lm(ckpts, size, split):
    from mlx_lm.models.cache import make_prompt_cache

    import talkie_kernels as tk

    end = 8
    for rank in range(size):
        # mlx-lm's convention: the low ranks take the extra blocks and run the
        # last ones; rank size-1 runs the first.
        m, _ = tk.load(ckpts["fp32"], lazy=True)
        ids = [id(b) for b in m.model.blocks]
        m.model.pipeline(StandInGroup(rank, size))
        start = end - split[rank]
        assert (m.model.start_idx, m.model.end_idx) == (start, end)
        assert [id(b) for b in m.layers] == ids[start:end]
        assert len(make_prompt_cache(m)) == split[rank]
        end = start
    assert end == 0


def test_local_ranks_and_core_share(tmp_path, monkeypatch):
    from talkie_kernels import launch, native

    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.1:5001"], ["10.0.0.2:5000"]]))
    monkeypatch.delenv("TALKIE_KERNELS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    monkeypatch.setenv("MLX_RANK", "1")
    assert launch.local_ranks() == 2
    monkeypatch.setenv("MLX_RANK", "2")
    assert launch.local_ranks() == 1 and launch.share_cores() is None
    monkeypatch.delenv("MLX_RANK")
    assert launch.local_ranks() is None
    if native.available():
        monkeypatch.setenv("MLX_RANK", "0")
        before = native.ops.num_threads()
        try:
            expect = max(1, len(os.sched_getaffinity(0)) // 2)
            assert launch.share_cores() == expect == native.ops.num_threads()
            monkeypatch.setenv("TALKIE_KERNELS_NUM_THREADS", "1")
            assert launch.share_cores() is None
        finally:
            native.ops.set_num_threads(before)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(*sys.argv[2:5])
