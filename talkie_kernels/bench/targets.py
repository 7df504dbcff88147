"""The project's speed targets, checked against one run of ``talkie-kernels bench``.

Each target reads one number from the run's records: a ratio of the fused
implementation against plain MLX in the same run, a share of the read
bandwidth or of the FMA peak the bench measured, or a distance from a decode
step's floor. A target whose rows the run did not measure says which flag
measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: The talkie-8l-512 decode floors (fused tok/s ÷ mlx-lm's), per weight format.
DECODE_FLOORS = {"float32": 3.0, "bfloat16": 4.0, "q4": 30.0, "q8": 30.0}
#: The per-shape ``linear`` table's formats, judged by their worst shape.
LINEAR_FORMATS = ("bfloat16", "q4", "q6", "q8")
#: Decode steps at 13B width judged against their floor: (config, formats, what measures it).
WIDTH_13B_DECODE = (
    ("talkie-1l-13b-width", ("q4", "q8", "bfloat16"), "--block-13b"),
    ("talkie-4l-13b-width", ("q4", "q8", "bfloat16"), "--configs talkie-4l-13b-width --dtypes q4,q8,bfloat16"),
)
#: The quantized formats of the prefill table, each judged against bf16 at the same shape.
PREFILL_QUANT_FORMATS = ("q4", "q8")


@dataclass
class Target:
    label: str
    #: records, graph nodes -> the measured value, or None when a row exists but has no number;
    #: raises LookupError when the run has no such row.
    measure: Callable[[list[dict], dict], float | None]
    floor: float
    aim: float | str | None
    #: How the value reads: "x" (a ratio), "%" (of the read bandwidth or the FMA peak) or "x floor"
    #: (time ÷ floor time).
    unit: str
    higher_is_better: bool
    #: What measures it, for "not run (...)".
    needs: str


def _one(records: list[dict], **match) -> dict:
    hits = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    if not hits:
        raise LookupError
    return hits[0]


def _speedup(**match):
    return lambda records, _: _one(records, impl="fused", **match)["speedup_vs_reference"]


def _op(op: str, phase: str, shape: list[int]):
    return _speedup(kind="op", op=op, phase=phase, shape=shape, dtype="bfloat16")


def _model(phase: str, fmt: str, method: str):
    return _speedup(kind="model", model="talkie-8l-512", phase=phase, method=method, dtype=fmt)


def _linear_worst(fmt: str):
    """The lowest % of read bandwidth of the fused ``linear`` over the 13B decode shapes."""

    def measure(records, _):
        rows = [r for r in records if r["kind"] == "linear" and r["impl"] == "fused" and r["dtype"] == fmt
                and r["model"] == "talkie-13b"]
        if not rows:
            raise LookupError
        values = [r.get("pct_of_read_bandwidth") for r in rows]
        return None if None in values else min(values)

    return measure


def _prefill_rows(records: list[dict], fmt: str) -> dict[str, dict]:
    """The fused prefill ``linear`` rows at Talkie 13B's shapes in ``fmt``, by projection name."""
    rows = {r["name"]: r for r in records if r["kind"] == "linear_prefill" and r["impl"] == "fused"
            and r["dtype"] == fmt and r["model"] == "talkie-13b"}
    if not rows:
        raise LookupError
    return rows


def _prefill_worst(records, _):
    """The lowest % of the FMA peak of the fused bf16 prefill GEMM over the 13B shapes."""
    values = [r.get("pct_of_fma_peak") for r in _prefill_rows(records, "bfloat16").values()]
    return None if None in values else min(values)


def _prefill_vs_dense(fmt: str):
    """The lowest ratio, over the 13B shapes, of the quantized prefill GEMM's GFLOP/s to bf16's at the same shape."""

    def measure(records, _):
        quant, dense = _prefill_rows(records, fmt), _prefill_rows(records, "bfloat16")
        ratios = [quant[n].get("gflops") and dense.get(n, {}).get("gflops") and quant[n]["gflops"] / dense[n]["gflops"]
                  for n in quant]
        return None if not all(ratios) else min(ratios)

    return measure


def _vs_floor(model: str, fmt: str):
    """Fused decode time per token ÷ its floor time (weight bytes ÷ read bandwidth)."""

    def measure(records, _):
        r = _one(records, kind="model", model=model, phase="decode", method="step_loop", dtype=fmt, impl="fused")
        tps, floor = r.get("tokens_per_s"), r.get("floor_tokens_per_s")
        return floor / tps if tps and floor else None

    return measure


def _pipelined_vs_sync(records, _):
    """Fused talkie-8l-512 fp32: mlx-lm's generate_step tok/s ÷ the synchronous loop's, the two
    timed in the same rounds (``vs_sync_local``); else (a record without it) the two workloads' rows."""
    match = dict(kind="model", model="talkie-8l-512", phase="decode", dtype="float32", impl="fused")
    sync, piped = _one(records, method="step_loop", **match), _one(records, method="generate_step", **match)
    if piped.get("vs_sync_local"):
        return piped["vs_sync_local"]
    a, b = piped.get("tokens_per_s"), sync.get("tokens_per_s")
    return a / b if a and b else None


def _depth_row(depth: int):
    return lambda records: _one(records, kind="depth", model="talkie-1l-13b-width", depth=depth, impl="fused")


def _extra_kv_time(records, _):
    """(decode time at 2048 cached positions − at 0) ÷ reading those K/V bytes once."""
    at0, at2048 = _depth_row(0)(records), _depth_row(2048)(records)
    if not (at0.get("ms_per_token") and at2048.get("ms_per_token") and at2048.get("kv_floor_ms")):
        return None
    return (at2048["ms_per_token"] - at0["ms_per_token"]) / at2048["kv_floor_ms"]


def _depth_vs_floor(records, _):
    return _depth_row(2048)(records).get("x_floor")


def _attention_share(records, _):
    r = _one(records, kind="attention_share", model="talkie-1l-13b-width")
    return 100 * r["share"] if r.get("share") is not None else None


def _graph(_, graph_nodes):
    g = graph_nodes.get("talkie-8l-512")
    if not g:
        raise LookupError
    return g["fused"] / g["reference"] if g.get("fused") and g.get("reference") else None


def targets() -> list[Target]:
    out = [
        Target("rope_qk_norm prefill (1, 40, 512, 128) bf16", _op("rope_qk_norm", "prefill", [1, 40, 512, 128]),
               10.0, 30.0, "x", True, "default op shapes, not --quick"),
        Target("rope_qk_norm decode (1, 40, 1, 128) bf16", _op("rope_qk_norm", "decode", [1, 40, 1, 128]),
               2.0, 3.0, "x", True, "default op shapes, not --quick"),
        Target("residual_norm + skip prefill (1, 512, 5120) bf16", _op("residual_norm", "prefill", [1, 512, 5120]),
               3.0, 6.0, "x", True, "default op shapes, not --quick"),
        Target("swiglu prefill (1, 512, 13696) bf16", _op("swiglu", "prefill", [1, 512, 13696]),
               10.0, 30.0, "x", True, "default op shapes, not --quick"),
    ]
    for fmt in LINEAR_FORMATS:
        out.append(Target(f"linear at Talkie 13B decode shapes, {fmt}: worst shape, of read bandwidth",
                          _linear_worst(fmt), 80.0, 90.0, "%", True, "--linear-shapes, not --quick"))
    out.append(Target("prefill GEMM at Talkie 13B shapes, M = 512, bfloat16: worst shape, of the FMA peak",
                      _prefill_worst, 65.0, 80.0, "%", True, "--linear-shapes, not --quick"))
    for fmt in PREFILL_QUANT_FORMATS:
        out.append(Target(f"prefill GEMM at Talkie 13B shapes, M = 512, {fmt} vs bfloat16: worst shape",
                          _prefill_vs_dense(fmt), 1.0, 1.5, "x", True, "--linear-shapes, not --quick"))
    for fmt, floor in DECODE_FLOORS.items():
        out.append(Target(f"decode tok/s, talkie-8l-512 {fmt} vs mlx-lm", _model("decode", fmt, "step_loop"),
                          floor, "1.3× its floor", "x", True, f"talkie-8l-512 with --dtypes {fmt}"))
    for fmt in DECODE_FLOORS:
        out.append(Target(f"prefill tok/s, talkie-8l-512 {fmt} vs mlx-lm", _model("prefill", fmt, "forward"),
                          5.0, 20.0, "x", True, f"talkie-8l-512 with --dtypes {fmt}"))
    out += [
        Target("one-block 13B-width q4 decode: time per token ÷ its floor", _vs_floor("talkie-1l-13b-width", "q4"),
               1.5, 1.1, "x floor", False, "--block-13b"),
        Target("graph nodes per decoded token, talkie-8l-512 (fused / mlx-lm)", _graph,
               0.35, 0.25, "x", False, "talkie-8l-512"),
        Target("generate_step vs synchronous decode, fused talkie-8l-512 float32", _pipelined_vs_sync,
               1.0, None, "x", True, "talkie-8l-512 float32 without --no-generate-step"),
        Target("extra decode time at 2048 cached positions over 0, 13B width bf16: ÷ reading that K/V once",
               _extra_kv_time, 2.0, 1.3, "x floor", False, "--depths, not --quick"),
        Target("decode step at 2048 cached positions, 13B width bf16: time ÷ (weights + K/V) floor",
               _depth_vs_floor, 1.33, 1.15, "x floor", False, "--depths, not --quick"),
        Target("attention share of a 2048-token prefill, 13B width bf16", _attention_share,
               25.0, 15.0, "%", False, "--depths, not --quick"),
    ]
    for model, fmts, needs in WIDTH_13B_DECODE:
        for fmt in fmts:
            out.append(Target(f"decode step, {model} {fmt}: time per token ÷ its floor", _vs_floor(model, fmt),
                              1.25, 1.1, "x floor", False, needs))
    return out


def check_targets(records: list[dict], graph_nodes: dict | None = None) -> list[dict]:
    """One row per target: its floor, aim, measured value and status (pass / FAIL / not run / no number).

    A run over several instruction sets (``bench --all-isas``: records carry
    ``isa``) judges every target once per set, on that set's rows, each row
    naming it.
    """
    isas = sorted({r["isa"] for r in records if r.get("isa")})
    if len(isas) <= 1:
        return _check(records, graph_nodes, "")
    out = []
    for isa in isas:
        out += _check([r for r in records if r.get("isa") in (isa, None)], graph_nodes, f" ({isa})")
    return out


def _check(records: list[dict], graph_nodes: dict | None, suffix: str) -> list[dict]:
    out = []
    for t in targets():
        try:
            value = t.measure(records, graph_nodes or {})
        except LookupError:
            status, value = f"not run ({t.needs})", None
        else:
            if value is None:
                status = "no number"
            else:
                ok = value >= t.floor if t.higher_is_better else value <= t.floor
                status = "pass" if ok else "FAIL"
        out.append({"target": t.label + suffix, "floor": t.floor, "aim": t.aim, "measured": value, "unit": t.unit,
                    "higher_is_better": t.higher_is_better, "status": status})
    return out
