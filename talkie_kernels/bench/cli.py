"""``talkie-kernels bench``: fused ops, ``linear`` and model against plain MLX, measured in one run.

Implementations, interleaved round by round (see ``timing.py``; models in
``models.py``):
``reference`` (plain MLX, eager: ``talkie_kernels.reference`` and mlx-lm's
``models/talkie.py``), ``reference_compiled`` (the same under ``mx.compile``
where it applies) and ``fused`` (the top-level ops, dispatched to the current
backend, and ``talkie_kernels.models.talkie``).

* The machine's read bandwidth (the native ops' streaming read of 512 MiB on
  their threads, at the start and the end of the run; the higher is kept):
  the floor of a decode step is its weight bytes ÷ that. Beside it the fp32
  FMA peak (independent FMA chains on the same threads, at the kernels'
  instruction set's vector width; the higher of start and end): a prefill
  GEMM's GFLOP/s as a share of it.
* Models: random-weight Talkie-shaped models built in memory from
  ``talkie_kernels.configs`` (no download) in each ``--dtypes`` format
  (float, or quantized in memory as ``mlx_lm.convert -q`` does), or a real
  checkpoint (``--model``; a ``talkie-kernels convert`` output, which
  ``mlx_lm.load`` cannot read, is measured fused-only against its floor, and a
  note says why there is no mlx-lm comparison): prefill tokens/s (one prompt forward with a fresh
  KV cache) and decode tokens/s (greedy steps with mlx-lm's KVCache after a
  short prompt) with its floor. ``--block-13b`` adds one block at Talkie 13B's
  width, q4, decode only.
* Under ``mlx.launch`` (more than one process), ``--model`` is loaded sharded
  across the processes (``distributed.maybe_shard``: tensor parallel, or
  pipeline with ``--pipeline``) and measured fused-only (mlx-lm's model is not
  sharded); the floor counts this rank's weight bytes; every rank takes the
  same number of samples (no time budgets: a rank's collectives must meet the
  others'); only rank 0 prints and writes ``--json`` / ``--plot``.
* ``--linear-shapes``: ``linear`` at Talkie 13B's decode shapes, bf16/q4/q8,
  GB/s and % of the read bandwidth, and at the same shapes with 512 rows of x
  (prefill, fused only), GFLOP/s and % of the FMA peak (``linear.py``).
* Per-op: rms_norm, rope, rope_qk_norm, residual_norm (with skip) at Talkie's
  shapes (40 heads × 128, hidden 5120), decode L=1 and prefill L=512, bf16.
* ``--depths``: attention by context length (``attention.py``): decode
  tok/s of one 13B-width bf16 block at 0/512/2048/4096 cached positions with
  floors, the attention op against MLX's CPU SDPA and its read floor, its
  share of a 2048-token prefill, and mlx-lm's KV append per token
  (``--depths-mlx`` adds mlx-lm's plain model and MLX's 2048-token prefill).

Reports medians with p20/p80 and sample counts, ratios against ``reference``,
the targets (``targets.py``), versions, device and backend
(``report.py``); ``--json`` and ``--plot`` save them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from . import attention as BA
from . import linear as BL
from . import models as M
from . import timing as B
from ..cli import int_in
from .report import plot, render, write_json
from .targets import check_targets
from ..configs import CONFIGS, WIDTH_13B

#: The default run: talkie-8l-512 at these formats, prefill on 64 tokens (MLX's
#: CPU matmuls make 512 too slow for a 2-minute run; ``--prompt-len 512``).
#: talkie-2l-256 is left to ``--configs`` and ``--quick``: the time goes to
#: the formats instead.
DEFAULT_FORMATS = ("float32", "bfloat16", "q4", "q8")
QUICK_FORMATS = ("float32", "q4")
BLOCK_13B = "talkie-1l-13b-width"
#: ``--block-13b``'s weight formats: the decode-step targets at 13B width.
BLOCK_13B_FORMATS = ("q4", "q8", "bfloat16")
#: Configs measured fused-only against their floor (mlx-lm: seconds per token).
FUSED_ONLY = ("talkie-4l-13b-width",)
DECODE_ONLY = (("decode", "step_loop"),)
#: Workloads that time the same MLX matmuls again at every format: measured for
#: float32 (and checkpoints) only.
FLOAT32_ONLY = ("reference_compiled", "generate_step")


class ModelRun:
    """One model of the run: a config name (or a checkpoint path), its prompt length and formats."""

    def __init__(self, name: str, prompt_len: int, formats, workloads=M.MODEL_WORKLOADS, checkpoint: bool = False):
        self.name, self.prompt_len, self.formats, self.workloads = name, prompt_len, list(formats), workloads
        self.checkpoint = checkpoint
        self.fused_only = name in FUSED_ONLY


class Settings:
    """Everything a run depends on; the defaults, or the tiny ``--quick`` ones."""

    def __init__(self, args):
        q = args.quick
        self.quick = q
        d = B.QUICK if q else B.DEFAULTS
        self.rounds_ops = self.rounds_models = self.rounds_linear = args.rounds or d.rounds
        self.min_rounds = d.min_rounds
        self.op_seq_len = {"decode": 1, "prefill": 8 if q else 512}
        self.op_sample_ms = d.op_sample_ms
        self.linear_sample_ms = d.linear_sample_ms
        # Seconds of timed samples per implementation of one workload: samples
        # are cut to fit, never below min_rounds unless one takes slow_s or more
        # (MLX's quantized matmul: 12 s per 64-token talkie-8l-512 q4 prefill,
        # 0.2-3 s per call at 13B linear shapes), which is sampled once or
        # twice. This keeps the default run under 2 minutes on 2 cores. An
        # explicit --rounds is exact.
        if args.rounds:
            self.model_budget_s, self.linear_budget_s, self.slow_s = {"prefill": None, "decode": None}, None, {}
        elif q:
            self.model_budget_s, self.linear_budget_s = {"prefill": 0.5, "decode": 0.5}, 0.5
            self.slow_s = {"models": 0.5, "linear": 0.5}
        else:
            self.model_budget_s, self.linear_budget_s = {"prefill": 3.0, "decode": 4.0}, 2.0
            self.slow_s = {"models": 3.0, "linear": 1.0}
        self.decode_tokens_arg, self.decode_prompt_arg = args.decode_tokens, args.decode_prompt
        self.seed = args.seed
        self.op_dtype = args.op_dtype or d.op_dtype
        formats = _split(args.dtypes) if args.dtypes else list(QUICK_FORMATS if q else DEFAULT_FORMATS)
        if args.model:
            # A checkpoint has its own weights: one "format", named by the checkpoint.
            self.models = [ModelRun(str(args.model), args.prompt_len or (16 if q else 512), [None], checkpoint=True)]
        elif args.configs:
            self.models = [
                # At 13B width MLX's prefill takes minutes: decode only, as --block-13b.
                ModelRun(n, 0, formats, DECODE_ONLY) if n in WIDTH_13B
                else ModelRun(n, args.prompt_len or (16 if q else dict(M.DEFAULT_MODELS).get(n, 512)), formats)
                for n in _split(args.configs)
            ]
        elif q:
            self.models = [ModelRun("talkie-2l-256", args.prompt_len or 16, formats)]
        else:
            self.models = [ModelRun("talkie-8l-512", args.prompt_len or 64, formats)]
        if args.block_13b:
            self.models.append(ModelRun(BLOCK_13B, 0, BLOCK_13B_FORMATS, DECODE_ONLY))
        #: The mx.distributed world under mlx.launch (None in one process), and
        #: whether --model is split by blocks (pipeline) rather than heads.
        self.group, self.pipeline = None, args.pipeline
        self.no_generate_step = args.no_generate_step
        self.linear_shapes = (BL.QUICK_SHAPES if q else BL.SHAPES_13B) if (args.linear_shapes or args.only == "linear") else ()
        self.do_ops = args.only in (None, "ops")
        self.do_models = args.only in (None, "models")
        self.do_linear = bool(self.linear_shapes) and args.only in (None, "linear")
        self.all_isas = args.all_isas
        self.isas = _split(args.isas) if args.isas else None
        self.depths = args.depths
        self.depths_mlx = args.depths_mlx

    def distribute(self, group) -> None:
        """Run as one rank of ``group``: exact sample counts for the models, whose
        sharded forward passes are collectives every rank must join alike."""
        self.group = group
        if group is not None:
            self.model_budget_s = {"prefill": None, "decode": None}
            self.slow_s = {k: v for k, v in self.slow_s.items() if k != "models"}

    def decode_lengths(self, quantized: bool) -> tuple[int, int]:
        """(tokens per sample, prompt length) of decode samples: fewer of both for quantized
        weights (MLX's slow quantized matmul) and for 13B-width models (seconds per sample)."""
        tokens, prompt = (
            (4, 4) if self.quick
            else (M.QUANTIZED_DECODE_TOKENS, M.QUANTIZED_DECODE_PROMPT) if quantized
            else (M.DECODE_TOKENS, M.DECODE_PROMPT)
        )
        return self.decode_tokens_arg or tokens, self.decode_prompt_arg or prompt

    def workloads(self, run: ModelRun, fmt: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
        """(phase, method, impls) of one model run at one format."""
        full = fmt in (None, "float32")
        out = []
        for phase, method in run.workloads:
            if method == "generate_step" and (self.no_generate_step or not full):
                continue
            impls = B.IMPLS if full else tuple(i for i in B.IMPLS if i not in FLOAT32_ONLY)
            out.append((phase, method, impls))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "rounds": {"ops": self.rounds_ops, "models": self.rounds_models, "linear": self.rounds_linear},
            "min_rounds": self.min_rounds,
            "slow_s": self.slow_s,
            "op_seq_len": self.op_seq_len,
            "op_sample_target_ms": self.op_sample_ms,
            "linear_sample_target_ms": self.linear_sample_ms,
            "model_budget_s": self.model_budget_s,
            "linear_budget_s": self.linear_budget_s,
            "decode_lengths": {"float": self.decode_lengths(False), "quantized": self.decode_lengths(True)},
            "op_dtype": self.op_dtype,
            "models": [{"model": r.name, "prompt_len": r.prompt_len, "formats": r.formats} for r in self.models],
            "linear_shapes": [list(s) for s in self.linear_shapes],
            "depths": self.depths, "depths_mlx": self.depths_mlx,
            "seed": self.seed,
            "all_isas": self.all_isas,
            "isas": self.isas,
            "distributed": None if self.group is None else {
                "size": self.group.size(), "parallelism": "pipeline" if self.pipeline else "tensor",
            },
        }


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _model_bytes(config: dict, fmt: str, copies: int = 2) -> int:
    """Weights of the reference and the fused model together (``copies`` of them; quantized ones are drawn in bf16)."""
    H, I, V, L = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["num_hidden_layers"]
    A = config["num_attention_heads"] * config["head_dim"]
    params = 2 * V * H + L * (4 * H * A + 3 * H * I)
    return copies * params * (4 if fmt == "float32" else 2)


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _isa_names(text: str) -> str:
    """An argparse type: comma-separated kernel tables this CPU runs."""
    from .. import native

    if native.ops is None:
        raise argparse.ArgumentTypeError(f"the native extension is not available ({native.load_error})")
    return _names(native.ops.available_isas(), "instruction set")(text)


def _names(known, what: str):
    """An argparse type: comma-separated names, each one of ``known``."""

    def parse(text: str) -> str:
        names = _split(text)
        if not names:
            raise argparse.ArgumentTypeError(f"names no {what}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown}; known: {list(known)}")
        return text

    parse.__name__ = what
    return parse


def _depths(text: str) -> str:
    """An argparse type: comma-separated cached-position counts >= 0."""
    try:
        values = [int(v) for v in _split(text)]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="talkie-kernels bench",
        description=(
            "Benchmark the fused Talkie ops, linear and model against plain MLX (eager and "
            "mx.compile'd) in one interleaved run, with the machine's read bandwidth and each "
            "decode step's floor (weight bytes ÷ bandwidth). The default needs no download: it "
            "builds random-weight Talkie-shaped models in memory. MLX's CPU quantized matmul is "
            "slow, so its rows get fewer samples (the n column says how many)."
        ),
    )
    p.add_argument("--model", metavar="PATH", help="benchmark a real checkpoint (mlx_lm.load vs talkie_kernels.load) instead of the random-weight configs: "
                   "a Hugging Face layout (init-checkpoint), an mlx_lm.convert output, or a talkie-kernels convert output, which mlx_lm.load "
                   "cannot read (fused keys, quantized lm_head): that one is measured fused-only, against its floor, and the output says so")
    p.add_argument("--configs", metavar="NAMES", type=_names(CONFIGS, "config"), help=f"comma-separated configs from talkie_kernels.configs ({', '.join(CONFIGS)}); default: talkie-8l-512")
    p.add_argument("--dtypes", metavar="FORMATS", type=_names(M.WEIGHT_FORMATS, "weight format"), help=f"comma-separated weight formats of the random-weight models ({', '.join(M.WEIGHT_FORMATS)}; "
                   f"qN = affine N-bit, group 64, bf16 scales, quantized as mlx_lm.convert -q does); default: {','.join(DEFAULT_FORMATS)}. "
                   "The mx.compile'd reference and generate_step are measured at float32 only")
    p.add_argument("--linear-shapes", action="store_true", help="also time linear at Talkie 13B's decode shapes (5120→15360, 5120→5120, 5120→27392, "
                   "13696→5120, 5120→65540) for bf16, q4, q8 vs MLX: GB/s and %% of read bandwidth (~1.5 min on 2 cores; MLX's slowest q4/q8 calls sampled once)")
    p.add_argument("--block-13b", action="store_true", help=f"also decode one block at Talkie 13B's width ({BLOCK_13B}: hidden 5120, 40 heads × 128, "
                   "intermediate 13696, vocab 65540), q4, against its floor (~1.5 min and ~5 GB of memory on 2 cores; mlx-lm's reference sampled once)")
    p.add_argument("--all-isas", action="store_true", help="run the native measurements once per instruction-set table "
                   "this CPU offers from x86-64-v3 up (talkie_kernels.native.ops.available_isas(): e.g. v3 = AVX2 and v4 = AVX-512, "
                   "plus their VNNI tables), each row and target naming its table; takes that many times as long. Default: the best table only")
    p.add_argument("--depths", nargs="?", const=",".join(map(str, BA.DEPTHS)), type=_depths, metavar="N,N,...",
                   help="also measure attention by context length: one 13B-width bf16 block's decode tok/s at these cached "
                   f"positions (default {','.join(map(str, BA.DEPTHS))}) against its floor, the attention op vs MLX's CPU SDPA, "
                   "its share of a 2048-token prefill, mlx-lm's KV append (~1 min on 2 cores; --quick: a tiny model at 0, 16)")
    p.add_argument("--depths-mlx", action="store_true", help="with --depths: also mlx-lm's plain model by depth and MLX's "
                   "2048-token prefill attention (MLX's CPU attention is its composed fallback: minutes)")
    p.add_argument("--isas", metavar="NAMES", type=_isa_names, help="like --all-isas, for these comma-separated tables only "
                   "(names from talkie_kernels.native.ops.available_isas(), e.g. v3,v4-vnni)")
    p.add_argument("--op-dtype", choices=["float32", "float16", "bfloat16"], help=f"dtype of the per-op inputs (default {B.DEFAULTS.op_dtype}, as Talkie's weights)")
    p.add_argument("--prompt-len", type=int_in(1), metavar="N", help="prefill prompt length for every model (default 64 for talkie-8l-512, 512 for other configs)")
    p.add_argument("--decode-tokens", type=int_in(1), metavar="N", help="decode steps per sample; samples continue one sequence (default 32, 4 for quantized weights)")
    p.add_argument("--decode-prompt", type=int_in(1), metavar="N", help="prompt prefilled (untimed) before decoding (default 16, 4 for quantized weights)")
    p.add_argument("--no-generate-step", action="store_true", help="skip the second decode measurement, through mlx_lm's generate_step (async_eval pipelining, as mlx_lm.generate runs it)")
    p.add_argument("--rounds", type=int_in(1), metavar="N", help="timed samples per implementation, exactly (default up to 7, fewer to fit a time budget: >= 3, or 1-2 for calls of seconds)")
    p.add_argument("--only", choices=["ops", "models", "linear"], help="run only the per-op, the model or the linear (implies --linear-shapes) benchmarks")
    p.add_argument("--seed", type=int_in(0, 2**63), default=0, help="seed for weights and inputs (0 <= seed < 2**63)")
    p.add_argument("--json", metavar="PATH", help="write the records and metadata as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw the speedups against reference (matplotlib, Agg)")
    p.add_argument("--quick", action="store_true", help="a tiny, fast run (used by the tests; numbers are not meaningful)")
    p.add_argument("--pipeline", action="store_true", help="under mlx.launch: split --model's blocks across the processes (pipeline parallel) "
                   "instead of its heads (tensor parallel, the default); no effect in one process")
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
        if r.get("weight_bytes_per_token"):
            floor = r["floor_tokens_per_s"] = gbps * 1e9 / r["weight_bytes_per_token"] if gbps else None
            r["of_floor"] = r["tokens_per_s"] / floor if floor and r.get("tokens_per_s") else None
        if r["kind"] == "linear":
            r["pct_of_read_bandwidth"] = 100 * r["gbps"] / gbps if gbps and r.get("gbps") else None


def apply_fma_peak(records: list[dict], gflops: float | None) -> None:
    """Each prefill linear row's share of the FMA peak."""
    for r in records:
        if r["kind"] == "linear_prefill":
            r["pct_of_fma_peak"] = 100 * r["gflops"] / gflops if gflops and r.get("gflops") else None


def measure_fma_peak(first: dict | None = None) -> dict:
    """The machine's fp32 FMA peak; given the run's ``first`` measurement, the higher of the two.

    As the read bandwidth (``measure_bandwidth``): other work only lowers a
    measurement, and a share of too low a peak would flatter the GEMM.
    """
    try:
        peak = B.fma_peak()
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
        bw = B.read_bandwidth()
    except Exception as e:  # reported in the header and the JSON; the run fails (exit code 1)
        return {"error": f"{type(e).__name__}: {e}"}
    if first is None or "error" in first:
        return first or bw
    return dict(bw, gbps=max(first["gbps"], bw["gbps"]), gbps_start=first["gbps"], gbps_end=bw["gbps"])


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


def run_linear(s: Settings, progress) -> list[dict]:
    import mlx.core as mx

    records = []
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
            results = B.interleaved(cases, rounds=s.rounds_linear, min_rounds=2, budget_s=s.linear_budget_s,
                                    slow_s=s.slow_s.get("linear"), reuse_warmup=BL.IMPLS, work=calls)
            weight_bytes = BL.nbytes(arrays)
            # --quick's tiny stand-in shapes are not Talkie 13B's: no target reads them.
            base = {"kind": "linear", "model": "quick stand-in" if s.quick else "talkie-13b", "op": "linear",
                    "name": name, "phase": "decode", "shape": [1, K, N], "dtype": fmt,
                    "weight_bytes": weight_bytes, "weight_copies": len(copies)}
            for impl in BL.IMPLS:
                rec = _record(dict(base, calls_per_sample=calls.get(impl)), impl, results[impl])
                if rec["status"] == "ok":
                    rec["gbps"] = weight_bytes / (rec["median_ms"] / 1e3) / 1e9
                records.append(rec)
            del copies, arrays
            mx.clear_cache()
    return records


def run_prefill_linear(s: Settings, progress) -> list[dict]:
    """The prefill GEMM table: the fused ``linear`` at ``s.linear_shapes`` with 512 rows of x (64 under
    ``--quick``): GFLOP/s, and (``apply_fma_peak``) its share of the FMA peak."""
    M = BL.QUICK_PREFILL_M if s.quick else BL.PREFILL_M
    records = []
    for base, res in BL.time_prefill(s.linear_shapes, M, s.rounds_linear, s.min_rounds, s.linear_budget_s, s.seed,
                                     progress):
        rec = _record(dict(base, model="quick stand-in" if s.quick else "talkie-13b"), "fused", res)
        if rec["status"] == "ok":
            rec["gflops"] = BL.flops(*rec["shape"]) / (rec["median_ms"] / 1e3) / 1e9
        records.append(rec)
    return records


def run_models(s: Settings, progress, notes: list[str], graph_nodes: dict) -> list[dict]:
    import mlx.core as mx

    records = []
    for run in s.models:
        for fmt in run.formats:
            label = Path(run.name).name if run.checkpoint else run.name
            progress(f"model {label} {fmt or ''}: building")
            if run.checkpoint and s.group is not None:
                models = _load_sharded(run.name, s, notes)
                fmt_label = M.model_dtype(models["fused"])
                quantized = "bit" in fmt_label
            elif run.checkpoint:
                models = M.load_models(run.name)
                fmt_label = M.model_dtype(M.base_model(models))
                quantized = "bit" in fmt_label  # e.g. "bfloat16 4-bit"
            else:
                models = (M.build_fused_only if run.fused_only else M.build_models)(run.name, fmt, s.seed)
                fmt_label = fmt
                quantized = M.weight_format(fmt)[1] is not None
            decode_tokens, decode_prompt = s.decode_lengths(quantized or run.name in WIDTH_13B)
            records += _run_model(s, progress, notes, graph_nodes, run, models, label, fmt, fmt_label,
                                  decode_tokens, decode_prompt)
            del models
            mx.clear_cache()
    return records


class NotSharded(B.NotApplicable):
    """The reference of a run under mlx.launch: mlx-lm's Talkie cannot be sharded."""


def _load_sharded(path: str, s: Settings, notes: list[str]) -> dict:
    """This rank's share of a checkpoint (the fused model); the reference is n/a."""
    from ..distributed import maybe_shard

    fused = maybe_shard(path, pipeline=s.pipeline)[0]
    kind = "pipeline (blocks split)" if s.pipeline else "tensor parallel (heads split)"
    n = s.group.size()
    notes.append(
        f"{Path(path).name}: sharded across {n} processes, {kind}, fused only; rates are the "
        "group's, the decode floor is rank 0's weight bytes ÷ bandwidth"
    )
    why = f"mlx-lm's Talkie cannot be sharded: no mlx-lm comparison under mlx.launch ({n} processes)"
    return {"reference": NotSharded(why), "fused": fused}


def _model_for(models: dict, impl: str):
    ref = models["reference"]
    if impl != "fused" and isinstance(ref, NotSharded):
        raise ref
    return M.model_for(models, impl)


def _run_model(s, progress, notes, graph_nodes, run, models, label, fmt, fmt_label, decode_tokens, decode_prompt):
    vocab = M.vocab_size(M.base_model(models))
    if isinstance(models["reference"], BaseException):
        notes.append(f"{label} {fmt_label}: {models['reference']}")
    check_ids = M.prompt_ids(vocab, decode_prompt, s.seed)
    try:
        agree = M.logits_agreement(models, check_ids)
    except Exception as e:  # the fused model built but cannot run: its rows report this
        models["fused"], agree = e, None
    if agree is not None:
        notes.append(f"{label} {fmt_label}: fused logits vs reference on a {decode_prompt}-token prompt: max rel. diff {agree:.2g}")
    if isinstance(models["fused"], BaseException):
        f = models["fused"]
        notes.append(f"{label} {fmt_label}: fused model unavailable ({type(f).__name__}: {f})")
    elif (fmt in (None, "float32") and label not in graph_nodes and run.name != BLOCK_13B
          and not isinstance(models["reference"], BaseException)):
        nodes = M.decode_nodes(models)
        graph_nodes[label] = nodes
        notes.append(
            f"{label}: graph nodes per decoded token (mx.export_to_dot): mlx-lm {nodes['reference']}, "
            f"fused {nodes['fused']} ({nodes['fused'] / nodes['reference']:.2f}×)"
        )
    weight_model = models["reference"] if isinstance(models["fused"], BaseException) else models["fused"]
    weight_bytes = M.decode_weight_bytes(weight_model)
    records = []
    for phase, method, impls in s.workloads(run, fmt):
        tokens = run.prompt_len if phase == "prefill" else decode_tokens
        progress(f"model {label} {fmt_label} {phase} {method} ({tokens} tokens)")
        cases = {}
        for impl in impls:
            try:
                model = _model_for(models, impl)
                if phase == "prefill":
                    cases[impl] = M.prefill_case(model, M.prompt_ids(vocab, run.prompt_len, s.seed), impl)
                else:
                    ids = M.prompt_ids(vocab, decode_prompt, s.seed)
                    make = M.decode_case if method == "step_loop" else M.generate_step_case
                    cases[impl] = make(model, ids, decode_tokens, impl)
            except Exception as e:  # n/a or an unavailable fused model: reported, not timed
                cases[impl] = e
        # The eager models already ran this format (logits check above), so a
        # slow eager case's warm-up is a fair sample; a compiled one's compiles.
        results = B.interleaved(cases, rounds=s.rounds_models, min_rounds=s.min_rounds, budget_s=s.model_budget_s[phase],
                                slow_s=s.slow_s.get("models"), reuse_warmup=("reference", "fused"))
        for case in cases.values():
            if hasattr(case, "close"):
                case.close()
        base = {
            "kind": "model", "model": label, "phase": phase, "method": method, "dtype": fmt_label, "tokens": tokens,
            "checkpoint": str(Path(run.name).resolve()) if run.checkpoint else None,
            "prompt_len": run.prompt_len if phase == "prefill" else decode_prompt,
        }
        if phase == "decode":
            base["weight_bytes_per_token"] = weight_bytes
        records += [_record(base, impl, results[impl], tokens) for impl in impls]
    return records


# --------------------------------------------------------------------------- main


def _check_args(args) -> str | None:
    """Why the arguments cannot run (for ``parser.error``), or None. Bad values of one flag are
    rejected by its argparse type; this checks the flags together and the paths."""
    if args.all_isas and args.isas:
        return "--all-isas and --isas both choose the kernel tables: give one"
    if args.model and (args.configs or args.dtypes):
        return "--configs and --dtypes choose the random-weight models: they do not apply with --model"
    if args.model:
        path = Path(args.model).expanduser()
        if not path.exists() and (args.model.startswith(("/", ".", "~")) or args.model.count("/") != 1):
            return f"--model {args.model}: no such checkpoint directory (nor a Hugging Face repo id, org/name)"
        if path.exists() and not (path / "config.json").is_file():
            return f"--model {args.model}: no config.json (not a checkpoint directory)"
    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        if value and not Path(value).expanduser().resolve().parent.is_dir():
            return f"{flag} {value}: directory {Path(value).expanduser().resolve().parent} does not exist"
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            return "--plot needs matplotlib (pip install matplotlib)"
    if args.configs:
        fmts = _split(args.dtypes) if args.dtypes else DEFAULT_FORMATS
        too_big = [c for c in _split(args.configs)
                   if max(_model_bytes(CONFIGS[c], f, 1 if c in FUSED_ONLY else 2) for f in fmts) > _memory_bytes()]
        if too_big:
            return (f"{too_big} would not fit in memory (reference + fused, or fused alone for {', '.join(FUSED_ONLY)}); "
                    "use --model with a quantized checkpoint")
    return None


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


def main(argv=None) -> int:
    from ..cli import finish, rank0_output, world

    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check_args(args)
    if problem:
        parser.error(problem)
    group = world()
    with rank0_output(group):
        if group is not None and not args.model:
            parser.error(f"under mlx.launch ({group.size()} processes) bench measures a sharded checkpoint: give --model")
        code = _run(parser, args, group)
        if group is not None:
            finish(group)
    return code


def _run(parser, args, group) -> int:
    t0 = time.perf_counter()

    import warnings

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    s = Settings(args)
    s.distribute(group)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        meta = B.metadata()
    notes = [str(w.message) for w in caught]
    model_groups = sum(1 + len(s.workloads(r, f)) for r in s.models for f in r.formats)
    groups = (2 + (8 if s.do_ops else 0) + (model_groups if s.do_models else 0) + (12 if s.depths else 0)
              + (len(s.linear_shapes) * (len(BL.FORMATS) + len(BL.PREFILL_FORMATS)) if s.do_linear else 0))
    records: list[dict] = []
    graph_nodes: dict[str, dict[str, int]] = {}
    isas = _isas(s.all_isas, s.isas)
    groups = 2 + (groups - 2) * len(isas)
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

        bandwidth = measure_bandwidth(progress)
        fma_peaks: dict = {}
        for isa in isas:
            with _using_isa(isa):
                # The FMA peak at this table's own vector width, before and after its rows.
                peak = measure_fma_peak()
                new: list[dict] = []
                if s.do_models:
                    try:
                        new += run_models(s, progress, notes, graph_nodes)
                    except M.CheckpointUnreadable as e:
                        parser.exit(2, f"{parser.prog}: error: {e}\n")
                if s.do_linear:
                    new += run_linear(s, progress)
                    new += run_prefill_linear(s, progress)
                if s.do_ops:
                    new += run_ops(s, progress)
                if s.depths:
                    depths = None if s.quick else [int(v) for v in _split(s.depths)]
                    new += BA.run(s.quick, s.depths_mlx, s.seed, progress, depths)
                fma_peaks[isa] = measure_fma_peak(peak)
            apply_fma_peak(new, fma_peaks[isa].get("gflops"))
            for r in new:
                r["isa"] = isa
            records += new
        bandwidth = measure_bandwidth(progress, bandwidth)
        bar.update(task, completed=groups)

    apply_bandwidth(records, bandwidth.get("gbps"))
    BA.apply_bandwidth(records, bandwidth.get("gbps"))
    _add_speedups(records)
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
    rank0 = group is None or group.rank() == 0
    if args.json and rank0:
        write_json(args.json, meta, s.as_dict(), records, targets, notes)
        console.print(f"wrote {Path(args.json).resolve()}")
    if args.plot and rank0:
        plot(args.plot, meta, records)
        console.print(f"wrote {Path(args.plot).resolve()}")
        if s.depths:
            depth_plot = Path(args.plot).with_suffix(".depths.png")
            BA.plot(str(depth_plot), meta, records)
            console.print(f"wrote {depth_plot.resolve()}")
    return 1 if "error" in bandwidth or any(r["status"] == "error" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
