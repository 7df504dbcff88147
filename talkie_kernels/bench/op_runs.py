"""The kernel sections of a bench run: the per-op table and the two ``linear`` tables.

``run_ops`` times rms_norm, rope, rope_qk_norm, residual_norm and swiglu at Talkie's
shapes (decode and prefill); ``run_linear`` times ``linear`` at
``--linear-shapes`` against MLX's matmul, one weight format at a time, and
``run_prefill_linear`` the fused prefill GEMM at the same shapes. Each returns
records (``records.record``); the run adds the bandwidth shares afterwards.
"""

from __future__ import annotations

import mlx.core as mx

from . import linear as BL
from . import probes as P
from . import timing as B
from .records import record
from .settings import Settings


def run_ops(s: Settings, progress) -> list[dict]:
    """Each op of ``timing.OPS`` at decode and prefill, every implementation: chained calls per sample."""
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
            results = B.interleaved(cases, rounds=s.rounds, min_rounds=s.min_rounds, work=inner)
            results.update(errors)
            base = {
                "kind": "op", "model": "talkie-13b", "op": op, "phase": phase, "shape": list(shape),
                "dtype": s.op_dtype, "offset": B.op_offset(phase), "ops_per_sample": inner,
                "with_skip": True if op == "residual_norm" else None,
            }
            records += [record(base, impl, results[impl]) for impl in B.IMPLS]
    return records


def run_linear(s: Settings, progress) -> list[dict]:
    """The decode table: ``linear`` with one row of x at each of ``s.linear_shapes`` and
    ``linear.FORMATS``, fused against MLX, each weight rotated through copies that overflow
    the cache; GB/s of weights read.

    Each row also carries the read bandwidth measured in its own rounds
    (``read_gbps_local``: the median of ``probes.ReadProbe``'s 512 MiB reads,
    one per round between the row's samples): this VM's bandwidth moves by a
    third within seconds, so a share against reads at the run's start and
    end, or just before and after the row, reads that drift as the kernel's.
    """
    records = []
    probe, probe_case = P.round_probe(P.ReadProbe)
    for name, K, N in s.linear_shapes:
        x = BL.activation(1, K, s.seed)
        for fmt, arrays, kwargs in BL.weights(K, N, BL.FORMATS, s.seed):
            progress(f"linear {name} {K}→{N} {fmt}")
            copies = BL.rotation(arrays)
            cases, calls = {}, {}
            for impl in BL.IMPLS:
                try:
                    calls[impl] = BL.calls_per_sample(impl, x, copies, kwargs, s.linear_sample_ms)
                    run = BL.thunk(impl, x, copies, kwargs, calls[impl])
                    cases[impl] = lambda run=run: run
                except Exception as e:  # an unavailable fused linear: reported, not timed
                    cases[impl] = e
            # calls_per_sample already ran each linear once: a slow warm-up is a fair sample.
            results = B.interleaved(dict(cases, probe=probe_case),
                                    rounds=s.rounds, min_rounds=2, budget_s=s.linear_budget_s,
                                    slow_s=s.slow_s.get("linear"), reuse_warmup=BL.IMPLS, work=dict(calls, probe=1),
                                    companions=("probe",))
            weight_bytes = BL.nbytes(arrays)
            local = probe.take_median() if probe is not None else None
            # --quick's tiny stand-in shapes are not Talkie 13B's: no target reads them.
            base = {"kind": "linear", "model": "quick stand-in" if s.quick else "talkie-13b", "op": "linear",
                    "name": name, "phase": "decode", "shape": [1, K, N], "dtype": fmt,
                    "weight_bytes": weight_bytes, "weight_copies": len(copies), "read_gbps_local": local}
            for impl in BL.IMPLS:
                rec = record(dict(base, calls_per_sample=calls.get(impl)), impl, results[impl])
                if rec["status"] == "ok":
                    rec["gbps"] = weight_bytes / (rec["median_ms"] / 1e3) / 1e9
                records.append(rec)
            del copies, arrays
            mx.clear_cache()
    return records


def run_prefill_linear(s: Settings, progress) -> list[dict]:
    """The prefill GEMM table: the fused ``linear`` at ``s.linear_shapes`` with 512 rows of x (64 under
    ``--quick``): GFLOP/s, and (``records.apply_fma_peak``) its share of the FMA peak.

    Each row carries the FMA peak measured in its own rounds
    (``fma_peak_local``: the median of ``probes.FmaProbe``'s runs, one per
    round between the row's samples), as the decode table's bandwidth: this
    VM's peak moves by half within seconds.
    """
    M = BL.QUICK_PREFILL_M if s.quick else BL.PREFILL_M
    records = []
    probe, probe_case = P.round_probe(P.FmaProbe)
    for base, res in BL.time_prefill(s.linear_shapes, M, s.rounds, s.min_rounds, s.linear_budget_s, s.seed,
                                     progress, probe=probe_case):
        base = dict(base, fma_peak_local=probe.take_median() if probe is not None else None)
        rec = record(dict(base, model="quick stand-in" if s.quick else "talkie-13b"), "fused", res)
        if rec["status"] == "ok":
            rec["gflops"] = BL.flops(*rec["shape"]) / (rec["median_ms"] / 1e3) / 1e9
        records.append(rec)
    return records
