"""``talkie-kernels bench --depths``: attention by context length, at Talkie 13B's width.

* Decode by depth: greedy tok/s of one block at 13B width (``talkie-1l-13b-width``,
  bf16 weights, fused model) with 0, 512, 2048, 4096 positions already in
  mlx-lm's ``KVCache``, each against its floor: (weight bytes + the K/V bytes
  the step reads) ÷ the measured read bandwidth. ``--depths-mlx`` adds
  mlx-lm's plain model (MLX's CPU attention is its composed fallback).
* The op at 40 heads × 128, bf16: decode (L = 1) at S = 512/2048/4096 against
  MLX's CPU ``mx.fast.scaled_dot_product_attention`` and against reading K/V
  once; a causal 2048-token prefill, and its share of the block's 2048-token
  prefill (the blocks' forward without lm_head, timed on 256 tokens and
  scaled: all but attention grows linearly with the prompt).
* The KV append: mlx-lm's ``KVCache.update_and_fetch`` per token at each
  depth, evaluated as the model consumes it (the views released), pipelined
  as ``generate_step`` runs it (``mx.async_eval``), the same waiting for the
  step in flight first, the same through the fused model's in-place write
  (``kv_cache.update_and_fetch``), and with the previous step's views still
  referenced, which makes MLX copy the whole buffer on every step (its
  ``slice_update`` writes in place only into a buffer that nothing else
  holds).

``--quick`` runs the same on talkie-2l-256 at depths 0 and 16 (numbers not
meaningful). Records feed ``targets`` (the three attention targets).
"""

from __future__ import annotations

import time
from typing import Any

import mlx.core as mx
import numpy as np

from . import models as M
from . import timing as B

DEPTHS = (0, 512, 2048, 4096)
QUICK_DEPTHS = (0, 16)
BLOCK_13B = "talkie-1l-13b-width"
QUICK_MODEL = "talkie-2l-256"
#: Op shapes: Talkie 13B's heads, and the decode depths of the op table.
HEADS, HEAD_DIM = 40, 128
OP_DEPTHS = (512, 2048, 4096)
PREFILL_LEN = 2048
QUICK_OP = {"heads": 2, "depths": (64,), "prefill": 32}
#: Decode steps per sample, samples per depth.
DECODE_TOKENS, ROUNDS = 4, 7
#: The block's prefill is timed on this many tokens and extrapolated to
#: PREFILL_LEN (a 2048-token one is ~30-45 s here): all but attention grows
#: linearly with the prompt.
SHARE_PROMPT = 256


def _kv_bytes(cache) -> int:
    """Bytes of K and V one decode step reads: every cached position of every layer."""
    return sum(2 * c.offset * c.keys.shape[1] * c.keys.shape[3] * c.keys.itemsize for c in cache if c.keys is not None)


def _fill(cache, depth: int, heads: int, head_dim: int, seed: int) -> None:
    """``depth`` random positions in each layer's KVCache, written as a prefill writes them."""
    if depth == 0:
        return
    for i, c in enumerate(cache):
        shape = (1, heads, depth, head_dim)
        k = mx.random.normal(shape, key=mx.random.key(seed + 2 * i)).astype(mx.bfloat16)
        v = mx.random.normal(shape, key=mx.random.key(seed + 2 * i + 1)).astype(mx.bfloat16)
        c.update_and_fetch(k, v)
    mx.eval([(c.keys, c.values) for c in cache])


def _decode_case(model, depth: int, heads: int, head_dim: int, seed: int):
    """A decode_case-like sample maker starting at ``depth`` cached positions."""
    from mlx_lm.models.cache import make_prompt_cache

    state: dict[str, Any] = {}

    def run():
        tok, cache = state["tok"], state["cache"]
        for _ in range(DECODE_TOKENS):
            tok = mx.argmax(model(tok[:, None], cache=cache)[:, -1, :], axis=-1)
            mx.eval(tok)
        state["tok"] = tok

    def prepare():
        if not state:
            cache = make_prompt_cache(model)
            _fill(cache, depth, heads, head_dim, seed)
            state.update(cache=cache, tok=mx.array([1]))
        return run

    prepare.state = state
    return prepare


def build(quick: bool, with_mlx: bool, seed: int, progress) -> dict:
    """{"fused": the model[, "reference": mlx-lm's]}: the random-weight bf16 block(s) of the run."""
    from mlx.utils import tree_flatten

    name = QUICK_MODEL if quick else BLOCK_13B
    progress(f"depths: building {name} bfloat16")
    if with_mlx:
        return M.build_models(name, "bfloat16", seed)
    ref = M.build_reference_model(name, "bfloat16", seed)
    return {"fused": M.build_fused_model(name, dict(tree_flatten(ref.parameters())))}


def run_depths(models: dict, quick: bool, seed: int, progress, depths=None) -> list[dict]:
    """Decode tok/s by cached positions (see the module docstring)."""
    name = QUICK_MODEL if quick else BLOCK_13B
    depths = depths or (QUICK_DEPTHS if quick else DEPTHS)
    cfg = M.config_args(name)
    heads, head_dim = cfg["num_attention_heads"], cfg["head_dim"]
    weight_bytes = M.decode_weight_bytes(models["fused"])
    progress(f"depths: decode at {', '.join(map(str, depths))} cached positions")
    # Every depth and implementation interleaved round by round: the extra
    # time at 2048 positions is a few % of a step, below a loaded machine's drift.
    cases = {(impl, d): _decode_case(models[impl], d, heads, head_dim, seed) for impl in models for d in depths}
    results = B.interleaved({f"{i}@{d}": c for (i, d), c in cases.items()}, rounds=2 if quick else ROUNDS,
                            min_rounds=2, work=DECODE_TOKENS, slow_s=None if quick else 3.0,
                            reuse_warmup=tuple(f"{i}@{d}" for i, d in cases))
    records = []
    for (impl, depth), prepare in cases.items():
        cache = prepare.state.get("cache")
        rec = {"kind": "depth", "model": name, "dtype": "bfloat16", "phase": "decode", "depth": depth,
               "impl": "fused" if impl == "fused" else "reference", "weight_bytes_per_token": weight_bytes,
               "kv_bytes_per_token": _kv_bytes(cache) if cache else None, "status": "ok"}
        res = results[f"{impl}@{depth}"]
        if isinstance(res, BaseException):
            rec.update(status="error", error=f"{type(res).__name__}: {res}")
        else:
            rec.update(median_ms=res.median, samples=len(res.samples_ms), ms_per_token=res.median,
                       tokens_per_s=1e3 / res.median)
        records.append(rec)
    return records


def _time(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def run_op(quick: bool, with_mlx: bool, seed: int, progress) -> list[dict]:
    """The op at 13B's heads, decode by S and a causal prefill, against MLX's CPU SDPA."""
    import talkie_kernels as tk

    H = QUICK_OP["heads"] if quick else HEADS
    D = HEAD_DIM
    model = "quick stand-in" if quick else "talkie-13b"
    records = []

    def rand(shape, s):
        return mx.random.normal(shape, key=mx.random.key(seed + s)).astype(mx.bfloat16)

    impls = {"fused": tk.scaled_dot_product_attention, "reference": mx.fast.scaled_dot_product_attention}
    for S in QUICK_OP["depths"] if quick else OP_DEPTHS:
        progress(f"depths: attention decode S={S}")
        # KVCache's views: [..., :S, :] of a buffer grown in steps of 256.
        size = (S + 256) // 256 * 256
        kb, vb, q = rand((1, H, size, D), 1), rand((1, H, size, D), 2), rand((1, H, 1, D), 3)
        k, v = kb[..., :S, :], vb[..., :S, :]
        mx.eval(kb, vb, q)
        cases = {impl: (lambda f=f: (lambda: mx.eval(f(q, k, v, scale=D**-0.5)))) for impl, f in impls.items()}
        res = B.interleaved(cases, rounds=3 if quick else 9, min_rounds=3)
        for impl in impls:
            records.append({"kind": "attention", "model": model, "phase": "decode", "shape": [1, H, 1, D], "S": S, "dtype": "bfloat16",
                            "impl": impl, "median_ms": res[impl].median, "samples": len(res[impl].samples_ms),
                            "kv_bytes": 2 * H * S * D * 2, "status": "ok"})
    for L in (QUICK_OP["prefill"] // 2, QUICK_OP["prefill"]) if quick else (SHARE_PROMPT, PREFILL_LEN):
        progress(f"depths: attention prefill L=S={L}")
        q, k, v = rand((1, H, L, D), 4), rand((1, H, L, D), 5), rand((1, H, L, D), 6)
        mx.eval(q, k, v)
        for impl, f in impls.items():
            if impl == "reference" and L == PREFILL_LEN and not with_mlx:
                continue  # MLX's composed CPU attention: ~40 s per 2048-token call here
            n = 1 if impl == "reference" else 3
            ms = _time(lambda f=f: mx.eval(f(q, k, v, scale=D**-0.5, mask="causal")), n)
            records.append({"kind": "attention", "model": model, "phase": "prefill", "shape": [1, H, L, D], "S": L,
                            "dtype": "bfloat16", "impl": impl, "median_ms": ms, "samples": n, "status": "ok"})
    return records


def run_prefill_share(model, quick: bool, seed: int, progress, attention_ms: dict) -> dict:
    """The causal attention op's share of one 13B-width block's 2048-token prefill.

    ``attention_ms``: the op's time by prompt length (SHARE_PROMPT and
    PREFILL_LEN). The blocks' forward (no lm_head) is timed on SHARE_PROMPT
    tokens; at PREFILL_LEN it is taken as (that − its attention) × the length
    ratio + the attention at PREFILL_LEN.
    """
    from mlx_lm.models.cache import make_prompt_cache

    name = QUICK_MODEL if quick else BLOCK_13B
    short, L = (QUICK_OP["prefill"] // 2, QUICK_OP["prefill"]) if quick else (SHARE_PROMPT, PREFILL_LEN)
    progress(f"depths: {name} prefill of {short} tokens")
    ids = M.prompt_ids(M.vocab_size(model), short, seed)
    blocks = len(model.layers)

    def prefill():
        cache = make_prompt_cache(model)
        mx.eval(model.model.hidden(ids, cache), [(c.keys, c.values) for c in cache])

    measured = _time(prefill, 3)
    attention = attention_ms[L] * blocks
    total = (measured - attention_ms[short] * blocks) * L / short + attention
    return {"kind": "attention_share", "model": name, "phase": "prefill", "dtype": "bfloat16", "prompt_len": L,
            "timed_prompt_len": short, "timed_prefill_ms": measured, "blocks": blocks, "prefill_ms": total,
            "attention_ms": attention_ms[L], "share": attention / total, "impl": "fused", "status": "ok"}


def run_kv_append(quick: bool, seed: int, progress, depths=None) -> list[dict]:
    """mlx-lm's KVCache.update_and_fetch per token at 13B width, by depth."""
    from mlx_lm.models.cache import KVCache

    from .. import kv_cache

    H = QUICK_OP["heads"] if quick else HEADS
    records = []
    for depth in depths or (QUICK_DEPTHS if quick else DEPTHS):
        progress(f"depths: KV append at {depth}")
        row = {"kind": "kv_append", "model": "quick stand-in" if quick else "talkie-13b", "phase": "decode",
               "impl": "mlx-lm", "depth": depth, "shape": [1, H, 1, HEAD_DIM], "dtype": "bfloat16", "status": "ok"}
        for mode in ("us", "held_us", "pipelined_us", "pipelined_wait_us", "pipelined_in_place_us"):
            c = KVCache()
            if depth:
                x = mx.random.normal((1, H, depth, HEAD_DIM), key=mx.random.key(seed)).astype(mx.bfloat16)
                c.update_and_fetch(x, x)
                mx.eval(c.keys, c.values)
            new = mx.random.normal((1, H, 1, HEAD_DIM), key=mx.random.key(seed + 1)).astype(mx.bfloat16)
            mx.eval(new)
            keep, ts, pending = [], [], None
            for _ in range(6 if quick else 12):
                t = time.perf_counter()
                if mode == "pipelined_wait_us":
                    mx.synchronize()  # the fused model's wait, for caches it cannot write in place
                if mode == "pipelined_in_place_us":
                    kv_cache.wait_for_previous_step([c])  # waits only where the write cannot be in place
                    k, v = kv_cache.update_and_fetch(c, new, new)
                else:
                    k, v = c.update_and_fetch(new, new)
                out = k[..., -1:, :] + v[..., -1:, :]  # a consumer of the views, as attention is
                if mode.startswith("pipelined"):
                    # As mlx-lm's generate_step: step n+1 is built and queued before step n is awaited.
                    mx.async_eval(out)
                    if pending is not None:
                        mx.eval(pending)
                    pending = out
                else:
                    mx.eval(out)
                ts.append(time.perf_counter() - t)
                if mode == "held_us":
                    keep = [k, v]  # the previous step's views, still referenced at the next update
                del k, v, out
            if pending is not None:
                mx.eval(pending)
            del keep, pending
            row[mode] = float(np.median(ts[2:])) * 1e6
        records.append(row)
    return records


def run(quick: bool, with_mlx: bool, seed: int, progress, depths=None) -> list[dict]:
    records = run_kv_append(quick, seed, progress, depths)
    records += run_op(quick, with_mlx, seed, progress)
    prefill = {r["S"]: r["median_ms"] for r in records
               if r["kind"] == "attention" and r["phase"] == "prefill" and r["impl"] == "fused"}
    mx.clear_cache()
    models = build(quick, with_mlx, seed, progress)
    records.append(run_prefill_share(models["fused"], quick, seed, progress, prefill))
    records += run_depths(models, quick, seed, progress, depths)
    del models
    mx.clear_cache()
    return records


def apply_bandwidth(records: list[dict], gbps: float | None) -> None:
    """Floors: a depth row's (weights + K/V) ÷ bandwidth, an attention row's K/V ÷ bandwidth."""
    for r in records:
        if r["kind"] == "depth" and gbps and r.get("kv_bytes_per_token") is not None:
            r["kv_floor_ms"] = r["kv_bytes_per_token"] / (gbps * 1e9) * 1e3
            r["floor_ms"] = r["weight_bytes_per_token"] / (gbps * 1e9) * 1e3 + r["kv_floor_ms"]
            r["floor_tokens_per_s"] = 1e3 / r["floor_ms"]
            r["x_floor"] = r["ms_per_token"] / r["floor_ms"] if r.get("ms_per_token") else None
        if r["kind"] == "attention" and r.get("kv_bytes") and gbps:
            r["floor_ms"] = r["kv_bytes"] / (gbps * 1e9) * 1e3
            r["x_floor"] = r["median_ms"] / r["floor_ms"]


def render(console, records: list[dict]) -> None:
    from rich.table import Table

    rows = [r for r in records if r["kind"] == "depth"]
    if rows:
        t = Table(title=f"Decode by cached positions: {rows[0]['model']} bf16 (tok/s; floor = (weights + K/V) ÷ read bandwidth)")
        for col in ("depth", "impl", "n", "tok/s", "ms/token", "K/V MB", "floor tok/s", "× floor"):
            t.add_column(col, justify="left" if col == "impl" else "right")
        for r in rows:
            ok = r["status"] == "ok"
            t.add_row(str(r["depth"]), r["impl"], str(r.get("samples", "")),
                      f"{r['tokens_per_s']:.2f}" if ok else r.get("error", ""), f"{r['ms_per_token']:.1f}" if ok else "",
                      f"{(r['kv_bytes_per_token'] or 0) / 1e6:.0f}", f"{r.get('floor_tokens_per_s') or 0:.2f}",
                      f"{r['x_floor']:.2f}" if r.get("x_floor") else "")
        console.print(t)
    rows = [r for r in records if r["kind"] == "attention"]
    if rows:
        t = Table(title="scaled_dot_product_attention, bf16 (reference = MLX's CPU mx.fast op; floor = K/V bytes ÷ read bandwidth)")
        for col in ("phase", "shape", "S", "impl", "median ms", "× floor", "vs reference"):
            t.add_column(col, justify="left" if col in ("phase", "shape", "impl") else "right")
        for r in rows:
            ref = next((x for x in rows if x["impl"] == "reference" and x["phase"] == r["phase"] and x["S"] == r["S"]), None)
            t.add_row(r["phase"], "×".join(map(str, r["shape"])), str(r["S"]), r["impl"], f"{r['median_ms']:.2f}",
                      f"{r['x_floor']:.2f}" if r.get("x_floor") else "",
                      f"{ref['median_ms'] / r['median_ms']:.1f}×" if ref and r["impl"] == "fused" else "")
        console.print(t)
    for r in records:
        if r["kind"] == "attention_share":
            console.print(f"attention share of a {r['prompt_len']}-token prefill, {r['model']} bf16: "
                          f"{r['attention_ms']:.0f} ms × {r['blocks']} block(s) of {r['prefill_ms']:.0f} ms = "
                          f"{100 * r['share']:.1f}% (the blocks' forward timed on {r['timed_prompt_len']} tokens: "
                          f"{r['timed_prefill_ms']:.0f} ms, scaled)", highlight=False)
    rows = [r for r in records if r["kind"] == "kv_append"]
    if rows:
        _, heads, _, dim = rows[0]["shape"]
        t = Table(title=f"mlx-lm KVCache.update_and_fetch per token, bf16 ({heads} heads × {dim})")
        for col in ("depth", "µs (views released)", "µs (async_eval pipeline)", "µs (pipeline, waiting first)",
                    "µs (pipeline, fused model's in-place write)", "µs (previous views held)"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(str(r["depth"]), f"{r['us']:.0f}", f"{r['pipelined_us']:.0f}", f"{r['pipelined_wait_us']:.0f}",
                      f"{r['pipelined_in_place_us']:.0f}", f"{r['held_us']:.0f}")
        console.print(t)


def plot(path: str, meta: dict, records: list[dict]) -> None:
    """tok/s against cached positions, with the floor, per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["kind"] == "depth" and r["status"] == "ok"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for impl, color in (("fused", "#1f77b4"), ("reference", "#8c8c8c")):
        pts = [r for r in rows if r["impl"] == impl]
        if pts:
            ax.plot([r["depth"] for r in pts], [r["tokens_per_s"] for r in pts], "o-", color=color,
                    label="fused" if impl == "fused" else "mlx-lm (plain MLX)")
    floor = [r for r in rows if r["impl"] == "fused" and r.get("floor_tokens_per_s")]
    if floor:
        ax.plot([r["depth"] for r in floor], [r["floor_tokens_per_s"] for r in floor], "--", color="#d62728",
                label="floor: (weights + K/V) ÷ read bandwidth")
    ax.set_xlabel("cached positions")
    ax.set_ylabel("decode tok/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{rows[0]['model']} bf16 decode by depth · {meta['date']} · mlx {meta['mlx']} · {meta['device']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
