"""One ``talkie-kernels bench`` run: the machine, the sections per kernel table, the report.

``run`` measures the read bandwidth, then per kernel table (``--all-isas`` /
``--isas``; one table otherwise) the FMA peak and the sections the settings
ask for (``model_runs``, ``op_runs``, ``attention``), the bandwidth again, and
derives the floors, shares and speedups (``records``); it prints the tables
(``report``), judges the targets (``targets``) and writes ``--json`` /
``--plot`` on rank 0.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

from . import attention as BA
from . import linear as BL
from . import probes as P
from . import timing as B
from .model_runs import run_models
from .op_runs import run_linear, run_ops, run_prefill_linear
from .records import add_speedups, apply_bandwidth, apply_fma_peak
from .report import plot, render, write_json
from .settings import Settings, split
from .targets import check_targets


def run(s: Settings, json_path: str | None = None, plot_path: str | None = None) -> int:
    """Measure, print and write what ``s`` asks for: 1 if the bandwidth or a row failed, else 0.

    A checkpoint that cannot be read raises ``models.CheckpointUnreadable``.
    """
    from rich.console import Console

    t0 = time.perf_counter()
    console = Console() if sys.stdout.isatty() else Console(width=160)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        meta = B.metadata()
    notes = [str(w.message) for w in caught]
    records: list[dict] = []
    graph_nodes: dict[str, dict[str, int]] = {}
    isas = _isas(s.all_isas, s.isas)
    with _progress_bar(_steps(s, len(isas))) as progress:
        bandwidth = measure_bandwidth(progress)
        fma_peaks: dict = {}
        for isa in isas:
            with _using_isa(isa):
                # The FMA peak at this table's own vector width, before and after its rows.
                peak = measure_fma_peak()
                new = _sections(s, progress, notes, graph_nodes)
                fma_peaks[isa] = measure_fma_peak(peak)
            apply_fma_peak(new, fma_peaks[isa].get("gflops"))
            for r in new:
                r["isa"] = isa
            records += new
        bandwidth = measure_bandwidth(progress, bandwidth)

    apply_bandwidth(records, bandwidth.get("gbps"))
    BA.apply_bandwidth(records, bandwidth.get("gbps"))
    add_speedups(records)
    targets = check_targets(records, graph_nodes)
    meta["read_bandwidth"] = bandwidth
    meta["isas"] = isas
    meta["fma_peak"] = fma_peaks[isas[-1]]  # the best table's (the only one without --all-isas)
    meta["fma_peaks"] = {str(isa): peak for isa, peak in fma_peaks.items()}
    meta["graph_nodes_per_decoded_token"] = graph_nodes
    wall = time.perf_counter() - t0
    meta["wall_time_s"] = round(wall, 1)
    meta["loadavg_end"] = B.load_average()
    render(console, meta, records, targets, notes, wall)
    if s.group is None or s.group.rank() == 0:
        _write(console, s, json_path, plot_path, meta, records, targets, notes)
    return 1 if "error" in bandwidth or any(r["status"] == "error" for r in records) else 0


def _sections(s: Settings, progress, notes: list[str], graph_nodes: dict) -> list[dict]:
    """The records of the sections ``s`` asks for, on the kernel table in use."""
    new: list[dict] = []
    if s.do_models:
        new += run_models(s, progress, notes, graph_nodes)
    if s.do_linear:
        new += run_linear(s, progress)
        new += run_prefill_linear(s, progress)
    if s.do_ops:
        new += run_ops(s, progress)
    if s.depths:
        depths = None if s.quick else [int(v) for v in split(s.depths)]
        new += BA.run(s.quick, s.depths_mlx, s.seed, progress, depths)
    return new


def _write(console, s: Settings, json_path, plot_path, meta, records, targets, notes) -> None:
    if json_path:
        write_json(json_path, meta, s.as_dict(), records, targets, notes)
        console.print(f"wrote {Path(json_path).resolve()}")
    if plot_path:
        plot(plot_path, meta, records)
        console.print(f"wrote {Path(plot_path).resolve()}")
        if s.depths:
            depth_plot = Path(plot_path).with_suffix(".depths.png")
            BA.plot(str(depth_plot), meta, records)
            console.print(f"wrote {depth_plot.resolve()}")


def _steps(s: Settings, tables: int) -> int:
    """The progress bar's steps: the two bandwidth measurements, and each section's
    progress calls (ops and shapes, model builds and workloads, depth steps) per table."""
    model_steps = sum(1 + len(s.workloads(r, f)) for r in s.models for f in r.formats)
    per_table = ((8 if s.do_ops else 0) + (model_steps if s.do_models else 0) + (12 if s.depths else 0)
                 + (len(s.linear_shapes) * (len(BL.FORMATS) + len(BL.PREFILL_FORMATS)) if s.do_linear else 0))
    return 2 + per_table * tables


@contextlib.contextmanager
def _progress_bar(total: int):
    """A transient bar on stderr; yields ``progress(description)``, which starts the next step."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("starting", total=total)
        started = [False]

        def progress(desc: str):
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=desc)

        yield progress
        bar.update(task, completed=total)


def measure_fma_peak(first: dict | None = None) -> dict:
    """The machine's fp32 FMA peak; given the run's ``first`` measurement, the higher of the two.

    As the read bandwidth (``measure_bandwidth``): other work only lowers a
    measurement, and a share of too low a peak would flatter the GEMM.
    """
    try:
        peak = P.fma_peak()
    except Exception as e:  # reported in the JSON; the prefill rows get no share
        return {"error": f"{type(e).__name__}: {e}"}
    if first is None or "error" in first:
        return first or peak
    return dict(peak, gflops=max(first["gflops"], peak["gflops"]), gflops_start=first["gflops"], gflops_end=peak["gflops"])


def measure_bandwidth(progress, first: dict | None = None) -> dict:
    """The machine's read bandwidth; given the run's ``first`` measurement, the higher of the two.

    Other work on the machine only lowers a measurement, and a floor computed
    from too low a bandwidth would be too easy: so the run measures at its
    start and its end and keeps the higher.
    """
    progress("read bandwidth")
    try:
        bw = P.read_bandwidth()
    except Exception as e:  # reported in the header and the JSON; the run fails (exit code 1)
        return {"error": f"{type(e).__name__}: {e}"}
    if first is None or "error" in first:
        return first or bw
    return dict(bw, gbps=max(first["gbps"], bw["gbps"]), gbps_start=first["gbps"], gbps_end=bw["gbps"])


def _isas(all_isas: bool, names: list[str] | None = None) -> list:
    """The kernel tables to measure: the one in use, ``names`` (``--isas``), or
    with ``all_isas`` every table this CPU runs from x86-64-v3 up (the baseline
    copy is not judged on speed); ``[None]`` without the native extension."""
    from .. import native

    if native.ops is None:
        return [None]
    if names:
        return names
    if not all_isas:
        return [native.ops.isa()]
    return [t for t in native.ops.available_isas() if t != "base"] or [native.ops.isa()]


@contextlib.contextmanager
def _using_isa(isa):
    """The native kernels run on table ``isa`` inside, on the previous one after."""
    from .. import native

    before = native.ops.isa() if native.ops is not None else None
    if isa is not None and isa != before:
        native.ops.use_isa(isa)
    try:
        yield
    finally:
        if before is not None and native.ops.isa() != before:
            native.ops.use_isa(before)
