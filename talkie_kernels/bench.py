"""``talkie-kernels bench``: fused ops and model against plain MLX, measured in one run.

Three implementations, interleaved round by round (see ``benchmarking.py``):
``reference`` (plain MLX, eager: ``talkie_kernels.reference`` and mlx-lm's
``models/talkie.py``), ``reference_compiled`` (the same under ``mx.compile``
where it applies) and ``fused`` (the top-level ops, dispatched to the current
backend, and ``talkie_kernels.models.talkie``).

* Per-op: rms_norm, rope, rope_qk_norm, residual_norm (with skip) at Talkie's
  shapes (40 heads × 128, hidden 5120), decode L=1 and prefill L=512, bf16.
* Models: random-weight Talkie-shaped models built in memory from
  ``talkie_kernels.configs`` (no download), or a real checkpoint (``--model``):
  prefill tokens/s (one prompt forward with a fresh KV cache) and decode
  tokens/s (greedy steps with mlx-lm's KVCache after a short prompt).

Reports medians with p20/p80, ratios against ``reference``, the DESIGN §8
targets, versions, device and backend; ``--json`` and ``--plot`` save them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import benchmarking as B
from .benchmarking import DEFAULT_MODELS
from .configs import CONFIGS


class Settings:
    """Everything a run depends on; the defaults, or the tiny ``--quick`` ones."""

    def __init__(self, args):
        q = args.quick
        self.quick = q
        self.rounds_ops = args.rounds or (2 if q else 7)
        self.rounds_models = args.rounds or (2 if q else 7)
        self.min_rounds = 2 if q else 3
        self.op_seq_len = {"decode": 1, "prefill": 8 if q else 512}
        self.op_sample_ms = 1.0 if q else 25.0
        # Seconds of timed work per model workload: rounds are cut to fit, never
        # below min_rounds (keeps the default run under 2 minutes on 2 cores).
        # An explicit --rounds is exact.
        self.model_budget_s = (
            {"prefill": None, "decode": None} if args.rounds
            else {"prefill": 1.0, "decode": 1.0} if q else {"prefill": 8.0, "decode": 14.0}
        )
        self.decode_tokens = args.decode_tokens or (4 if q else B.DECODE_TOKENS)
        self.decode_prompt = args.decode_prompt or (4 if q else B.DECODE_PROMPT)
        self.seed = args.seed
        self.dtype = args.dtype
        self.op_dtype = args.op_dtype
        if args.model:
            self.models = [(str(args.model), args.prompt_len or (16 if q else 512))]
        elif args.configs:
            names = [c.strip() for c in args.configs.split(",") if c.strip()]
            default = 16 if q else 512
            self.models = [(n, args.prompt_len or default) for n in names]
        elif q:
            self.models = [("talkie-2l-256", args.prompt_len or 16)]
        else:
            self.models = [(n, args.prompt_len or L) for n, L in DEFAULT_MODELS]
        self.model_workloads = [
            w for w in B.MODEL_WORKLOADS if not (args.no_generate_step and w[1] == "generate_step")
        ]
        self.checkpoint = bool(args.model)
        self.do_ops = args.only in (None, "ops")
        self.do_models = args.only in (None, "models")

    def as_dict(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "rounds_ops": self.rounds_ops,
            "rounds_models": self.rounds_models,
            "min_rounds": self.min_rounds,
            "op_seq_len": self.op_seq_len,
            "op_sample_target_ms": self.op_sample_ms,
            "model_budget_s": self.model_budget_s,
            "decode_tokens": self.decode_tokens,
            "decode_prompt_len": self.decode_prompt,
            "model_dtype": self.dtype if not self.checkpoint else "checkpoint",
            "op_dtype": self.op_dtype,
            "models": [{"model": m, "prompt_len": L} for m, L in self.models],
            "model_workloads": [f"{p}/{m}" for p, m in self.model_workloads],
            "seed": self.seed,
        }


def _model_bytes(config: dict, dtype: str) -> int:
    """Weights of the reference and the fused model together (two copies)."""
    H, I, V, L = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["num_hidden_layers"]
    A = config["num_attention_heads"] * config["head_dim"]
    params = 2 * V * H + L * (4 * H * A + 3 * H * I)
    return 2 * params * (4 if dtype == "float32" else 2)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="talkie-kernels bench",
        description=(
            "Benchmark the fused Talkie ops and model against plain MLX (eager and "
            "mx.compile'd) in one interleaved run. The default needs no download: it "
            "builds random-weight Talkie-shaped models in memory."
        ),
    )
    p.add_argument("--model", metavar="PATH", help="benchmark a real checkpoint (mlx_lm.load vs talkie_kernels.load) instead of the random-weight configs")
    p.add_argument("--configs", metavar="NAMES", help=f"comma-separated configs from talkie_kernels.configs ({', '.join(CONFIGS)}); default: "
                   + ", ".join(n for n, _ in DEFAULT_MODELS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weight dtype of the random-weight models (default float32)")
    p.add_argument("--op-dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"], help="dtype of the per-op inputs (default bfloat16, as Talkie's weights)")
    p.add_argument("--prompt-len", type=int, metavar="N", help="prefill prompt length for every model (default 512, but 64 for talkie-8l-512 so the default run stays under 2 minutes on a 2-core CPU)")
    p.add_argument("--decode-tokens", type=int, metavar="N", help="decode steps per sample; samples continue one sequence (default 32)")
    p.add_argument("--decode-prompt", type=int, metavar="N", help="prompt prefilled (untimed) before decoding (default 16)")
    p.add_argument("--no-generate-step", action="store_true", help="skip the second decode measurement, through mlx_lm's generate_step (async_eval pipelining, as mlx_lm.generate runs it)")
    p.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds, exactly (default 7 per op; per model up to 7, fewer (>= 3) to fit a time budget)")
    p.add_argument("--only", choices=["ops", "models"], help="run only the per-op or only the model benchmarks")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    p.add_argument("--json", metavar="PATH", help="write the records and metadata as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw the speedups against reference (matplotlib, Agg)")
    p.add_argument("--quick", action="store_true", help="a tiny, fast run (used by the tests; numbers are not meaningful)")
    return p


# --------------------------------------------------------------------------- running


def _record(base: dict, impl: str, res, work_tokens: int | None = None) -> dict:
    rec = dict(base, impl=impl, status="ok", median_ms=None, p20_ms=None, p80_ms=None, samples=0, error=None)
    if isinstance(res, B.NotApplicable):
        rec.update(status="n/a", error=str(res))
    elif isinstance(res, BaseException):
        rec.update(status="error", error=f"{type(res).__name__}: {res}")
    elif isinstance(res, B.Stats):
        rec.update(median_ms=res.median, p20_ms=res.p20, p80_ms=res.p80, samples=len(res.samples_ms))
        if work_tokens:
            rec["tokens_per_s"] = work_tokens / (res.median / 1e3)
            rec["tokens_per_s_p20"] = work_tokens / (res.p80 / 1e3)
            rec["tokens_per_s_p80"] = work_tokens / (res.p20 / 1e3)
            rec["ms_per_token"] = res.median / work_tokens
    return rec


def _add_speedups(records: list[dict]) -> None:
    groups: dict[tuple, dict] = {}
    for r in records:
        key = (r["kind"], r["model"], r.get("op"), r["phase"], r.get("method"))
        if r["impl"] == "reference" and r["median_ms"]:
            groups[key] = r
    for r in records:
        ref = groups.get((r["kind"], r["model"], r.get("op"), r["phase"], r.get("method")))
        ok = ref is not None and r["median_ms"]
        r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ok else None


def run_ops(s: Settings, progress) -> list[dict]:
    dtype = B.parse_dtype(s.op_dtype)
    records = []
    for op in B.OPS:
        for phase in ("decode", "prefill"):
            shape = B.op_shape(op, phase, s.op_seq_len[phase])
            progress(f"op {op} {phase} {shape}")
            state = B.op_inputs(op, shape, dtype, s.seed)
            steps, errors = {}, {}
            for impl in B.IMPLS:
                try:
                    steps[impl] = B.op_step(op, impl, phase)
                except Exception as e:
                    errors[impl] = e
            inner = B.calibrate_inner(steps["reference"], state, s.op_sample_ms)
            cases = {impl: (lambda st=st: B.op_thunk(st, state, inner)) for impl, st in steps.items()}
            results = B.interleaved(cases, rounds=s.rounds_ops, min_rounds=s.min_rounds, work=inner)
            results.update(errors)
            base = {
                "kind": "op", "model": "talkie-13b", "op": op, "phase": phase, "shape": list(shape),
                "dtype": s.op_dtype, "offset": B.op_offset(phase), "ops_per_sample": inner,
                "with_skip": True if op == "residual_norm" else None,
            }
            records += [_record(base, impl, results[impl]) for impl in B.IMPLS]
    return records


def run_models(s: Settings, progress, notes: list[str], graph_nodes: dict) -> list[dict]:
    import mlx.core as mx

    records = []
    for name, prompt_len in s.models:
        progress(f"model {name}: building")
        if s.checkpoint:
            models = B.load_models(name)
            label, dtype = Path(name).name, B.model_dtype(models["reference"])
        else:
            models = B.build_models(name, B.parse_dtype(s.dtype), s.seed)
            label, dtype = name, s.dtype
        vocab = B.vocab_size(models["reference"])
        check_ids = B.prompt_ids(vocab, s.decode_prompt, s.seed)
        try:
            agree = B.logits_agreement(models, check_ids)
        except Exception as e:  # the fused model built but cannot run: its rows report this
            models["fused"], agree = e, None
        if agree is not None:
            notes.append(f"{label}: fused logits vs reference on a {s.decode_prompt}-token prompt: max rel. diff {agree:.2g}")
        if isinstance(models["fused"], BaseException):
            f = models["fused"]
            notes.append(f"{label}: fused model unavailable ({type(f).__name__}: {f})")
        else:
            nodes = B.decode_nodes(models)
            graph_nodes[label] = nodes
            notes.append(
                f"{label}: graph nodes per decoded token (mx.export_to_dot): mlx-lm {nodes['reference']}, "
                f"fused {nodes['fused']} ({nodes['fused'] / nodes['reference']:.2f}×)"
            )
        for phase, method in s.model_workloads:
            tokens = prompt_len if phase == "prefill" else s.decode_tokens
            progress(f"model {label} {phase} {method} ({tokens} tokens)")
            cases = {}
            for impl in B.IMPLS:
                try:
                    model = B.model_for(models, impl)
                    if phase == "prefill":
                        cases[impl] = B.prefill_case(model, B.prompt_ids(vocab, prompt_len, s.seed), impl)
                    else:
                        ids = B.prompt_ids(vocab, s.decode_prompt, s.seed)
                        make = B.decode_case if method == "step_loop" else B.generate_step_case
                        cases[impl] = make(model, ids, s.decode_tokens, impl)
                except Exception as e:  # n/a or an unavailable fused model: reported, not timed
                    cases[impl] = e
            impls = B.IMPLS
            if method == "step_loop" and not isinstance(models["fused"], BaseException):
                # The floor under the fused step, timed in the same rounds.
                cases[B.MATMULS_ONLY] = B.matmuls_only_case(models["fused"], s.decode_tokens)
                impls = B.IMPLS + (B.MATMULS_ONLY,)
            results = B.interleaved(
                cases, rounds=s.rounds_models, min_rounds=s.min_rounds, budget_s=s.model_budget_s[phase]
            )
            base = {
                "kind": "model", "model": label, "phase": phase, "method": method, "dtype": dtype, "tokens": tokens,
                "checkpoint": str(Path(name).resolve()) if s.checkpoint else None,
                "prompt_len": prompt_len if phase == "prefill" else s.decode_prompt,
            }
            records += [_record(base, impl, results[impl], tokens) for impl in impls]
            if B.MATMULS_ONLY in impls:
                notes.append(_ceiling_note(label, records[-len(impls):]))
        del models
        mx.clear_cache()
    return records


def _ceiling_note(label: str, recs: list[dict]) -> str:
    by = {r["impl"]: r for r in recs}
    ref, mm = by["reference"]["median_ms"], by[B.MATMULS_ONLY]["median_ms"]
    if not (ref and mm):
        return f"{label}: decode matmul floor not measured"
    return (
        f"{label}: decode: the fused model's matmuls alone take {mm / by[B.MATMULS_ONLY]['tokens']:.2f} ms/token "
        f"of mlx-lm's {ref / by['reference']['tokens']:.2f} ms/token step, so on this machine fusion alone can make "
        f"decode at most {ref / mm:.2f}× faster (row {B.MATMULS_ONLY})"
    )


# --------------------------------------------------------------------------- targets


#: DESIGN §8: (label, selector, floor, aim). Checked only when the run measured
#: exactly that workload (the default run does; --quick does not).
def _targets():
    def op(op_, phase, shape):
        return lambda r: r["kind"] == "op" and r["op"] == op_ and r["phase"] == phase and r["shape"] == shape and r["dtype"] == "bfloat16"

    def model(phase, method):
        return lambda r: (r["kind"] == "model" and r["model"] == "talkie-8l-512" and r["phase"] == phase
                          and r["method"] == method and r["dtype"] == "float32")

    return [
        ("rope_qk_norm prefill (1, 40, 512, 128) bf16", op("rope_qk_norm", "prefill", [1, 40, 512, 128]), 10.0, 30.0),
        ("rope_qk_norm decode (1, 40, 1, 128) bf16", op("rope_qk_norm", "decode", [1, 40, 1, 128]), 2.0, 3.0),
        ("residual_norm + skip prefill (1, 512, 5120) bf16", op("residual_norm", "prefill", [1, 512, 5120]), 3.0, 6.0),
        ("decode tok/s, talkie-8l-512 fp32 vs mlx-lm", model("decode", "step_loop"), 1.2, 1.4),
        ("decode tok/s, same, through mlx_lm's generate_step", model("decode", "generate_step"), 1.2, 1.4),
        ("prefill tok/s, talkie-8l-512 fp32 vs mlx-lm (not slower)", model("prefill", "forward"), 1.0, None),
    ]


def check_targets(records: list[dict], graph_nodes: dict | None = None) -> list[dict]:
    out = []
    for label, sel, floor, aim in _targets():
        hits = [r for r in records if sel(r) and r["impl"] == "fused"]
        ratio = hits[0]["speedup_vs_reference"] if hits else None
        if not hits:
            status = "not measured"
        elif ratio is None:
            status = "no number"
        else:
            status = "pass" if ratio >= floor else "FAIL"
        row = {"target": label, "floor": floor, "aim": aim, "measured": ratio, "status": status}
        # The same workload's matmuls-alone row (decode step loop only): the most fusion can reach.
        ceiling = [r for r in records if sel(r) and r["impl"] == B.MATMULS_ONLY]
        if ceiling:
            row["ceiling"] = ceiling[0]["speedup_vs_reference"]
            # A FAIL under a ceiling that is itself below the floor is the matmuls', not the fusion's.
            if status == "FAIL" and row["ceiling"] is not None and row["ceiling"] < floor:
                row["status"] = "FAIL: ceiling < floor"
        out.append(row)
    # Graph size: fused / mlx-lm primitives per decoded token, lower is better.
    g = (graph_nodes or {}).get("talkie-8l-512", {})
    ratio = g["fused"] / g["reference"] if g.get("fused") and g.get("reference") else None
    out.append({
        "target": "graph nodes per decoded token, talkie-8l-512 (fused / mlx-lm, at most)",
        "floor": 0.35, "aim": 0.25, "measured": ratio,
        "status": "not measured" if ratio is None else "pass" if ratio <= 0.35 else "FAIL",
    })
    return out


# --------------------------------------------------------------------------- output


def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} µs" if v < 0.1 else f"{_num(v)} ms"


def _num(v):
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _fmt_range(r):
    # Same unit as the median: "p20–p80".
    lo, hi = r["p20_ms"], r["p80_ms"]
    unit = " µs" if r["median_ms"] < 0.1 else " ms"
    f = (lambda v: f"{v * 1e3:.1f}") if unit == " µs" else _num
    return f"{f(lo)}–{f(hi)}{unit}"


def _fmt_x(v):
    return "-" if v is None else f"{v:.2f}×"


def _phase_label(r) -> str:
    return "decode (generate_step)" if r.get("method") == "generate_step" else r["phase"]


def _cell(r, footnotes: list[str]) -> str:
    if r["status"] == "ok":
        return _fmt_ms(r["median_ms"])
    msg = r["error"]
    if msg not in footnotes:
        footnotes.append(msg)
    n = footnotes.index(msg) + 1
    style = "yellow" if r["status"] == "n/a" else "red"
    return f"[{style}]{r['status']} [{n}][/{style}]"


def render(console, meta: dict, settings: Settings, records: list[dict], targets: list[dict], notes: list[str], wall_s: float):
    from rich.table import Table

    footnotes: list[str] = []
    header = (
        f"talkie-kernels bench — {meta['date']}\n"
        f"mlx {meta['mlx']} · mlx-lm {meta['mlx_lm']} · talkie_kernels {meta['talkie_kernels']} ({meta['git']})\n"
        f"device {meta['device']} · backend [bold]{meta['backend']}[/bold] · {meta['machine']}, "
        f"{meta['processor']}, {meta['cpu_count']} cores · Python {meta['python']}"
    )
    if meta.get("loadavg_start"):
        header += (
            f"\nload average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']} "
            f"on {meta['cpu_count']} cores: other work on the machine skews timings; rounds are interleaved"
        )
    console.print(header, highlight=False)
    if not meta["metal_available"]:
        console.print(
            "[bold yellow]Apple-GPU (Metal) speed is unmeasured:[/bold yellow] no Metal device here; "
            f"every number below is CPU ({meta['backend']} backend for the fused ops)."
        )
    if meta["backend"] == "reference":
        console.print(
            "[bold red]The fused ops fell back to the plain-MLX reference[/bold red] (native "
            "extension not loaded): fused rows measure the reference, not the kernels."
        )

    models = [r for r in records if r["kind"] == "model"]
    if models:
        t = Table(title=(
            f"Models: tokens/s ({models[0]['dtype']} weights). prefill = one prompt forward with a fresh KV cache; "
            "decode = greedy steps with mlx-lm's KVCache, mx.eval per token, samples continuing one sequence "
            "after a short prompt; "
            "decode (generate_step) = mlx-lm's own pipelined loop (mx.async_eval)"
        ))
        for col, just in [("model", "left"), ("phase", "left"), ("tokens", "right"), ("impl", "left"),
                          ("median", "right"), ("p20–p80", "right"), ("tok/s", "right"), ("vs reference", "right")]:
            t.add_column(col, justify=just)
        prev = None
        for r in models:
            key = (r["model"], r["phase"], r["method"])
            if prev is not None and key != prev:
                t.add_section()
            prev = key
            ok = r["status"] == "ok"
            tokens = f"{r['tokens']}" + ("/sample" if r["phase"] == "decode" else "")
            t.add_row(
                r["model"], _phase_label(r), tokens, r["impl"], _cell(r, footnotes),
                _fmt_range(r) if ok else "",
                f"{r['tokens_per_s']:.1f}" if ok else "",
                _fmt_x(r["speedup_vs_reference"]) if ok else "",
            )
        console.print(t)

    ops = [r for r in records if r["kind"] == "op"]
    if ops:
        t = Table(title=f"Per-op at Talkie's shapes (median per op call; chains of calls, one eval per sample)")
        for col, just in [("op", "left"), ("phase", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
                          ("median", "right"), ("p20–p80", "right"), ("vs reference", "right")]:
            t.add_column(col, justify=just)
        prev = None
        for r in ops:
            key = (r["op"], r["phase"])
            if prev is not None and key != prev:
                t.add_section()
            prev = key
            ok = r["status"] == "ok"
            op_name = r["op"] + (" +skip" if r["op"] == "residual_norm" else "")
            t.add_row(
                op_name, r["phase"], "×".join(map(str, r["shape"])), r["dtype"], r["impl"], _cell(r, footnotes),
                _fmt_range(r) if ok else "",
                _fmt_x(r["speedup_vs_reference"]) if ok else "",
            )
        console.print(t)

    if any(x["status"] != "not measured" for x in targets):
        t = Table(title="DESIGN §8 targets (fused vs reference, this run)")
        for col in ("target", "floor", "aim", "measured", "ceiling (matmuls alone)", "status"):
            t.add_column(col)
        for x in targets:
            style = "green" if x["status"] == "pass" else "red" if x["status"].startswith("FAIL") else "yellow"
            t.add_row(x["target"], _fmt_x(x["floor"]), _fmt_x(x["aim"]), _fmt_x(x["measured"]),
                      _fmt_x(x.get("ceiling")), f"[{style}]{x['status']}[/{style}]")
        console.print(t)

    for i, msg in enumerate(footnotes, 1):
        console.print(f"[{i}] {msg}", highlight=False)
    for n in notes:
        console.print(f"note: {n}", highlight=False)
    console.print(f"wall time {wall_s:.1f} s", highlight=False)


def write_json(path: str, meta: dict, settings: Settings, records: list[dict], targets: list[dict], notes: list[str]) -> None:
    keep = {k: meta[k] for k in ("date", "mlx", "mlx_lm", "device", "backend")}
    doc = {
        "metadata": meta,
        "settings": settings.as_dict(),
        "records": [dict(r, **keep) for r in records],
        "targets": targets,
        "notes": notes,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def plot(path: str, meta: dict, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for kind, title in (("model", "models (tokens/s ratio)"), ("op", "per-op (time ratio)")):
        rows = [r for r in records if r["kind"] == kind]
        labels = []
        for r in rows:
            lab = f"{r['model']} {_phase_label(r)}" if kind == "model" else f"{r['op']} {r['phase']}"
            if lab not in labels:
                labels.append(lab)
        if labels:
            panels.append((kind, title, rows, labels))
    if not panels:
        return
    sizes = [len(p[3]) for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, 1.6 + 0.6 * sum(sizes)), squeeze=False,
        gridspec_kw={"height_ratios": sizes},
    )
    colors = {"reference_compiled": "#8c8c8c", "fused": "#1f77b4"}
    for ax, (kind, title, rows, labels) in zip(axes[:, 0], panels):
        height = 0.38
        vals = []
        ceiling_labelled = False
        for j, impl in enumerate(("reference_compiled", "fused")):
            for i, lab in enumerate(labels):
                hit = [r for r in rows if r["impl"] == impl
                       and (f"{r['model']} {_phase_label(r)}" if kind == "model" else f"{r['op']} {r['phase']}") == lab]
                v = hit[0]["speedup_vs_reference"] if hit else None
                y = i + (j - 0.5) * height
                if v:
                    ax.barh(y, v, height, color=colors[impl], label=impl if i == 0 else None)
                    ax.text(v, y, f" {v:.2f}×", va="center", fontsize=8)
                    vals.append(v)
                else:
                    status = hit[0]["status"] if hit else "missing"
                    ax.text(1, y, f" {impl}: {status}", va="center", fontsize=8, color="#b00")
                if kind == "model" and impl == "fused":
                    # A decode row's ceiling (its matmuls alone), drawn across the fused bar.
                    hit = [r for r in rows if r["impl"] == B.MATMULS_ONLY and r["speedup_vs_reference"]
                           and f"{r['model']} {_phase_label(r)}" == lab]
                    if hit:
                        c = hit[0]["speedup_vs_reference"]
                        ax.plot([c, c], [y - height / 2, y + height / 2], color="#d62728", lw=2,
                                label=None if ceiling_labelled else "ceiling: matmuls alone")
                        ceiling_labelled = True
                        vals.append(c)
        ax.axvline(1.0, color="k", lw=0.8)
        if vals and max(vals) / max(min(vals), 1e-9) > 8:
            ax.set_xscale("log")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(f"speedup vs eager plain MLX — {title}", fontsize=10)
        if vals:
            ax.set_xlim(right=max(vals) * (2.0 if ax.get_xscale() == "log" else 1.2))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        f"talkie-kernels bench · {meta['date']} · mlx {meta['mlx']} · {meta['device']} · backend {meta['backend']}"
        + ("" if meta["metal_available"] else " · Apple-GPU speed unmeasured"),
        fontsize=9,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.configs:
        unknown = [c for c in args.configs.split(",") if c.strip() and c.strip() not in CONFIGS]
        if unknown:
            print(f"talkie-kernels bench: unknown config(s) {unknown}; known: {list(CONFIGS)}", file=sys.stderr)
            return 2
        too_big = [c for c in args.configs.split(",") if c.strip() and _model_bytes(CONFIGS[c.strip()], args.dtype) > _memory_bytes()]
        if too_big:
            print(f"talkie-kernels bench: {too_big} would not fit in memory twice (reference + fused); "
                  "use --model with a quantized checkpoint", file=sys.stderr)
            return 2
    t0 = time.perf_counter()

    import warnings

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    s = Settings(args)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        meta = B.metadata()
    notes = [str(w.message) for w in caught]
    groups = (8 if s.do_ops else 0) + ((1 + len(s.model_workloads)) * len(s.models) if s.do_models else 0)
    records: list[dict] = []
    graph_nodes: dict[str, dict[str, int]] = {}
    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("starting", total=groups)
        started = [False]

        def progress(desc: str):
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=desc)

        if s.do_models:
            records += run_models(s, progress, notes, graph_nodes)
        if s.do_ops:
            records += run_ops(s, progress)
        bar.update(task, completed=groups)

    _add_speedups(records)
    targets = check_targets(records, graph_nodes)
    meta["graph_nodes_per_decoded_token"] = graph_nodes
    wall = time.perf_counter() - t0
    meta["wall_time_s"] = round(wall, 1)
    meta["loadavg_end"] = B.load_average()
    render(console, meta, s, records, targets, notes, wall)
    if args.json:
        write_json(args.json, meta, s, records, targets, notes)
    if args.plot:
        plot(args.plot, meta, records)
    return 1 if any(r["status"] == "error" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
