"""``talkie-kernels bench`` output: the tables (rich), the JSON document and the plot."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES_NOTE = (
    "n = timed samples per row. Each implementation gets up to 7, cut to a time budget but at least 3 (2 for linear), "
    "except calls that take seconds (MLX's CPU quantized matmul): those are sampled once or twice, "
    "the warm-up run counted, since first-call costs are milliseconds."
)


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


def _fmt_target(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "%":
        return f"{v:.0f}%"
    return f"{v:.2f}× floor" if unit == "x floor" else _fmt_x(v)


def _fmt_mb(n):
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _isa_tag(r) -> str:
    """`` (v3)`` on the rows of a run over several instruction sets (``bench --all-isas``)."""
    return f" ({r['isa']})" if r.get("several_isas") else ""


def phase_label(r) -> str:
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


def _header(console, meta: dict) -> None:
    header = (
        f"talkie-kernels bench — {meta['date']}\n"
        f"mlx {meta['mlx']} · mlx-lm {meta['mlx_lm']} · talkie_kernels {meta['talkie_kernels']} ({meta['git']})\n"
        f"device {meta['device']} · backend [bold]{meta['backend']}[/bold] · {meta['machine']}, "
        f"{meta['processor']}, {meta['cpu_count']} cores · Python {meta['python']}"
    )
    if meta.get("isas") and meta["isas"] != [None]:
        header += f"\nnative kernels' instruction set(s) measured: {', '.join(meta['isas'])}"
    if meta.get("loadavg_start"):
        header += (
            f"\nload average (1/5/15 min) at start {meta['loadavg_start']}, at end {meta['loadavg_end']} "
            f"on {meta['cpu_count']} cores: other work on the machine skews timings; rounds are interleaved"
        )
    console.print(header, highlight=False)
    bw = meta["read_bandwidth"]
    if "error" in bw:
        console.print(f"[bold red]{bw['error']}[/bold red]: no decode floors, no % of read bandwidth.", highlight=False)
    else:
        both = f"; the higher of {bw['gbps_start']:.1f} at the start and {bw['gbps_end']:.1f} at the end" if "gbps_end" in bw else ""
        console.print(
            f"read bandwidth [bold]{bw['gbps']:.1f} GB/s[/bold] (native streaming read of {bw['nbytes'] >> 20} MiB, "
            f"{bw['threads']} threads, median of {bw['repeats']}{both}): a decode step's floor is the weight bytes "
            "it reads ÷ this", highlight=False,
        )
    for peak in (meta.get("fma_peaks") or {"": meta.get("fma_peak")}).values():
        if peak and "error" in peak:
            console.print(f"[bold red]{peak['error']}[/bold red]: no % of the FMA peak.", highlight=False)
        elif peak:
            both = (f"; the higher of {peak['gflops_start']:.0f} at the start and {peak['gflops_end']:.0f} at the end"
                    if "gflops_end" in peak else "")
            console.print(
                f"{peak.get('instruction', 'fp32 FMA')} peak [bold]{peak['gflops']:.0f} GFLOP/s[/bold] (native chains, "
                f"{peak['isa']} vector width, "
                f"{peak['threads']} threads, median of {peak['repeats']}{both}): a prefill GEMM's share is its GFLOP/s ÷ this",
                highlight=False,
            )
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


def _models_table(models: list[dict], footnotes: list[str]):
    from rich.table import Table

    t = Table(title=(
        "Models: tokens/s. prefill = one prompt forward with a fresh KV cache; decode = greedy steps with "
        "mlx-lm's KVCache, mx.eval per token, samples continuing one sequence after a short prompt; "
        "decode (generate_step) = mlx-lm's own pipelined loop (mx.async_eval). floor = weight bytes per token ÷ "
        "read bandwidth (13B-width decode rows: the read probe's median in their own rounds, shown as 'at'; "
        "weights under the last-level cache can beat it). qN = affine N-bit, group 64, bf16 scales; "
        "mx.compile'd reference and generate_step at float32 only"
    ))
    for col, just in [("model", "left"), ("weights", "left"), ("phase", "left"), ("tokens", "right"),
                      ("impl", "left"), ("n", "right"), ("median", "right"), ("p20–p80", "right"),
                      ("tok/s", "right"), ("vs reference", "right"), ("of floor", "right")]:
        t.add_column(col, justify=just)
    prev = None
    for r in models:
        key = (r["model"], r.get("isa"), r["dtype"], r["phase"], r["method"])
        if prev is not None and key != prev:
            t.add_section()
        if key != prev and r["phase"] == "decode" and r.get("weight_bytes_per_token"):
            floor = r.get("floor_tokens_per_s")
            t.add_row(r["model"] + _isa_tag(r), r["dtype"], phase_label(r), "", f"floor: {_fmt_mb(r['weight_bytes_per_token'])}/token"
                      + (f" at {r['read_gbps_local']:.1f} GB/s" if r.get("read_gbps_local") else ""),
                      "", "", "", f"{floor:.1f}" if floor else "-", "", "")
        prev = key
        ok = r["status"] == "ok"
        tokens = f"{r['tokens']}" + ("/sample" if r["phase"] == "decode" else "")
        of_floor = r.get("of_floor")
        t.add_row(
            r["model"] + _isa_tag(r), r["dtype"], phase_label(r), tokens, r["impl"], str(r["samples"]) if ok else "",
            _cell(r, footnotes), _fmt_range(r) if ok else "",
            f"{r['tokens_per_s']:.1f}" if ok else "",
            _fmt_x(r["speedup_vs_reference"]) if ok else "",
            f"{100 * of_floor:.0f}%" if of_floor else "",
        )
    return t


def _linear_table(rows: list[dict], footnotes: list[str]):
    from rich.table import Table

    t = Table(title=(
        "linear at Talkie 13B's decode shapes: x (1, K) bf16 @ W.T, W (N, K) bf16 or affine qN (group 64, "
        "bf16 scales); median per call; GB/s = weight + scales + biases bytes ÷ time; reference = MLX's "
        "matmul / quantized_matmul; probe = the read bandwidth measured in the row's own rounds (one 512 MiB read "
        "between each round's samples, median), which its share is of"
    ))
    for col, just in [("projection", "left"), ("K→N", "left"), ("weights", "left"), ("impl", "left"), ("n", "right"),
                      ("calls/sample", "right"), ("median", "right"), ("p20–p80", "right"), ("GB/s", "right"),
                      ("probe", "right"), ("of read BW", "right"), ("vs reference", "right")]:
        t.add_column(col, justify=just)
    prev = None
    for r in rows:
        key = (r["name"], r.get("isa"), r["dtype"])
        if prev is not None and key != prev:
            t.add_section()
        prev = key
        ok = r["status"] == "ok"
        _, K, N = r["shape"]
        pct = r.get("pct_of_read_bandwidth")
        t.add_row(
            r["name"] + _isa_tag(r), f"{K}→{N}", f"{r['dtype']} ({_fmt_mb(r['weight_bytes'])})", r["impl"],
            str(r["samples"]) if ok else "", str(r["calls_per_sample"] or ""), _cell(r, footnotes),
            _fmt_range(r) if ok else "", f"{r['gbps']:.2f}" if ok else "", _fmt_probe(r.get("read_gbps_local")),
            f"{pct:.0f}%" if ok and pct else "", _fmt_x(r["speedup_vs_reference"]) if ok else "",
        )
    return t


def _prefill_table(rows: list[dict], footnotes: list[str]):
    from rich.table import Table

    t = Table(title=(
        "linear prefill GEMM at Talkie 13B's shapes: x (M, K) bf16 @ W.T, W (N, K) bf16 or affine qN (group 64, "
        "bf16 scales), fused only; median per call; GFLOP/s = 2·M·K·N ÷ time; peak = the FMA peak measured in the "
        "row's own rounds (one run of the FMA chains between each round's samples; median), which its share is of"
    ))
    for col, just in [("projection", "left"), ("M×K→N", "left"), ("weights", "left"), ("n", "right"),
                      ("median", "right"), ("p20–p80", "right"), ("GFLOP/s", "right"), ("peak", "right"),
                      ("of FMA peak", "right")]:
        t.add_column(col, justify=just)
    for r in rows:
        ok = r["status"] == "ok"
        M, K, N = r["shape"]
        pct = r.get("pct_of_fma_peak")
        t.add_row(
            r["name"], f"{M}×{K}→{N}", r["dtype"], str(r["samples"]) if ok else "", _cell(r, footnotes),
            _fmt_range(r) if ok else "", f"{r['gflops']:.0f}" if ok else "", _fmt_probe(r.get("fma_peak_local")),
            f"{pct:.0f}%" if ok and pct else "",
        )
    return t


def _fmt_probe(v) -> str:
    return f"{v:.1f}" if v else ""


def _ops_table(ops: list[dict], footnotes: list[str]):
    from rich.table import Table

    t = Table(title="Per-op at Talkie's shapes (median per op call; chains of calls, one eval per sample)")
    for col, just in [("op", "left"), ("phase", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
                      ("n", "right"), ("median", "right"), ("p20–p80", "right"), ("vs reference", "right")]:
        t.add_column(col, justify=just)
    prev = None
    for r in ops:
        key = (r["op"], r.get("isa"), r["phase"])
        if prev is not None and key != prev:
            t.add_section()
        prev = key
        ok = r["status"] == "ok"
        op_name = r["op"] + (" +skip" if r["op"] == "residual_norm" else "")
        t.add_row(
            op_name + _isa_tag(r), r["phase"], "×".join(map(str, r["shape"])), r["dtype"], r["impl"], str(r["samples"]) if ok else "",
            _cell(r, footnotes), _fmt_range(r) if ok else "", _fmt_x(r["speedup_vs_reference"]) if ok else "",
        )
    return t


def _targets_table(targets: list[dict]):
    from rich.table import Table

    t = Table(title="Targets (this run; ratios are fused vs reference)")
    for col in ("target", "floor", "aim", "measured", "status"):
        t.add_column(col)
    for x in targets:
        style = "green" if x["status"] == "pass" else "red" if x["status"] == "FAIL" else "yellow"
        bound = "≥ " if x["higher_is_better"] else "≤ "
        t.add_row(x["target"], bound + _fmt_target(x["floor"], x["unit"]), _fmt_target(x["aim"], x["unit"]),
                  _fmt_target(x["measured"], x["unit"]), f"[{style}]{x['status']}[/{style}]")
    return t


def _mark_isas(records: list[dict]) -> None:
    """Flag every row for an ISA tag when the run measured more than one instruction set."""
    several = len({r.get("isa") for r in records}) > 1
    for r in records:
        r["several_isas"] = several


def render(console, meta: dict, records: list[dict], targets: list[dict], notes: list[str], wall_s: float):
    footnotes: list[str] = []
    _mark_isas(records)
    _header(console, meta)
    for kind, table in (("model", _models_table), ("linear", _linear_table), ("linear_prefill", _prefill_table),
                        ("op", _ops_table)):
        rows = [r for r in records if r["kind"] == kind]
        if rows:
            console.print(table(rows, footnotes))
    from .attention import render as render_depths

    render_depths(console, records)
    if any(not x["status"].startswith("not run") for x in targets):
        console.print(_targets_table(targets))
    if records:
        console.print(SAMPLES_NOTE, highlight=False)
    for i, msg in enumerate(footnotes, 1):
        console.print(f"[{i}] {msg}", highlight=False)
    for n in notes:
        console.print(f"note: {n}", highlight=False)
    console.print(f"wall time {wall_s:.1f} s", highlight=False)


def write_json(path: str, meta: dict, settings: dict, records: list[dict], targets: list[dict], notes: list[str]) -> None:
    keep = {k: meta[k] for k in ("date", "mlx", "mlx_lm", "device", "backend")}
    doc = {
        "metadata": meta,
        "settings": settings,
        "records": [dict(r, **keep) for r in records],
        "targets": targets,
        "notes": notes,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def _plot_label(r) -> str:
    if r["kind"] == "model":
        return f"{r['model']}{_isa_tag(r)} {r['dtype']} {phase_label(r)}"
    if r["kind"] == "linear":
        _, K, N = r["shape"]
        return f"{r['name']}{_isa_tag(r)} {K}→{N} {r['dtype']}"
    return f"{r['op']}{_isa_tag(r)} {r['phase']}"


def plot(path: str, meta: dict, records: list[dict]) -> None:
    import matplotlib

    _mark_isas(records)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for kind, title in (("model", "models (tokens/s ratio)"), ("linear", "linear at 13B decode shapes (time ratio)"),
                        ("op", "per-op (time ratio)")):
        rows = [r for r in records if r["kind"] == kind]
        labels = list(dict.fromkeys(_plot_label(r) for r in rows))
        impls = [i for i in ("reference_compiled", "fused") if any(r["impl"] == i for r in rows)]
        if labels:
            panels.append((title, rows, labels, impls))
    if not panels:
        return
    sizes = [len(p[2]) for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(11, 1.6 + 0.6 * sum(sizes)), squeeze=False,
        gridspec_kw={"height_ratios": sizes},
    )
    colors = {"reference_compiled": "#8c8c8c", "fused": "#1f77b4"}
    for ax, (title, rows, labels, impls) in zip(axes[:, 0], panels):
        height = 0.8 / len(impls)
        vals = []
        floor_labelled = False
        for j, impl in enumerate(impls):
            for i, lab in enumerate(labels):
                hit = [r for r in rows if r["impl"] == impl and _plot_label(r) == lab]
                v = hit[0]["speedup_vs_reference"] if hit else None
                y = i + (j - (len(impls) - 1) / 2) * height
                if v:
                    ax.barh(y, v, height, color=colors[impl], label=impl if i == 0 else None)
                    ax.text(v, y, f" {v:.2f}×", va="center", fontsize=8)
                    vals.append(v)
                elif hit:
                    ax.text(1, y, f" {impl}: {hit[0]['status']}", va="center", fontsize=8, color="#b00")
                # A decode row's floor (weights ÷ read bandwidth) as a speedup over the reference, across the fused bar.
                ref = [r for r in rows if r["impl"] == "reference" and _plot_label(r) == lab and r.get("tokens_per_s")]
                if impl == "fused" and hit and ref and hit[0].get("floor_tokens_per_s"):
                    c = hit[0]["floor_tokens_per_s"] / ref[0]["tokens_per_s"]
                    ax.plot([c, c], [y - height / 2, y + height / 2], color="#d62728", lw=2,
                            label=None if floor_labelled else "floor: weights ÷ read bandwidth")
                    floor_labelled = True
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
    # Keep the first panel's title clear of the figure's (tight_layout ignores suptitle).
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
