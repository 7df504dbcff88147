"""The bench's records: one dict per implementation of a workload, and what the run derives from them.

The sections of ``op_runs`` and ``model_runs`` turn each timed
``timing.Stats`` (or the exception a case raised) into a record with
``record`` (``attention`` writes its own kinds of row); once the run has measured the machine, ``apply_bandwidth`` and
``apply_fma_peak`` add each row's share of it and ``add_speedups`` its ratio
against ``reference``. The records are the ``--json`` output's ``records``.
"""

from __future__ import annotations

from . import timing as B


def record(base: dict, impl: str, res, work_tokens: int | None = None) -> dict:
    """``base`` for ``impl`` with the outcome ``res``: a ``timing.Stats`` (ok: its median, p20,
    p80 and, given ``work_tokens``, tokens/s), a ``timing.NotApplicable`` (n/a) or another
    exception (error), whose times are None and that has no rates."""
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


def add_speedups(records: list[dict]) -> None:
    """Each row's ``speedup_vs_reference``: the ``reference`` row of the same workload's median ÷ its own."""
    def key(r):
        return (r["kind"], r["model"], r.get("op"), r.get("name"), r["phase"], r.get("method"), r.get("dtype"),
                tuple(r.get("shape") or ()), r.get("isa"))

    refs = {key(r): r for r in records if r["impl"] == "reference" and r["median_ms"]}
    for r in records:
        ref = refs.get(key(r))
        r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ref is not None and r["median_ms"] else None


def apply_bandwidth(records: list[dict], gbps: float | None) -> None:
    """Each decode row's floor and share of it, each linear row's share of the read bandwidth."""
    for r in records:
        # Against the probe in the row's own rounds where it has one (op_runs.run_linear,
        # model_runs' 13B-width decode rows), else the run's.
        bw = r.get("read_gbps_local") or gbps
        if r.get("weight_bytes_per_token"):
            floor = r["floor_tokens_per_s"] = bw * 1e9 / r["weight_bytes_per_token"] if bw else None
            r["of_floor"] = r["tokens_per_s"] / floor if floor and r.get("tokens_per_s") else None
        if r["kind"] == "linear":
            r["pct_of_read_bandwidth"] = 100 * r["gbps"] / bw if bw and r.get("gbps") else None


def apply_fma_peak(records: list[dict], gflops: float | None) -> None:
    """Each prefill linear row's share of the FMA peak."""
    for r in records:
        if r["kind"] == "linear_prefill":  # likewise (op_runs.run_prefill_linear)
            peak = r.get("fma_peak_local") or gflops
            r["pct_of_fma_peak"] = 100 * r["gflops"] / peak if peak and r.get("gflops") else None
