"""``talkie-kernels bench``'s flags and ``main``: fused ops, ``linear`` and model against plain MLX, in one run.

``main`` parses and checks the flags, reads them into a ``settings.Settings``
and hands it to ``runner.run``. What a run measures:

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
  across the processes (``launch.maybe_shard``: tensor parallel, or
  pipeline with ``--pipeline``) and measured fused-only (mlx-lm's model is not
  sharded); the floor counts this rank's weight bytes; every rank takes the
  same number of samples (no time budgets: a rank's collectives must meet the
  others'); only rank 0 prints and writes ``--json`` / ``--plot``.
* ``--linear-shapes``: ``linear`` at Talkie 13B's decode shapes, bf16/q4/q8,
  GB/s and % of the read bandwidth, and at the same shapes with 512 rows of x
  (prefill, fused only), GFLOP/s and % of the FMA peak (``linear.py``).
* Per-op: rms_norm, rope, rope_qk_norm, residual_norm (with skip), swiglu at
  Talkie's shapes (40 heads × 128, hidden 5120, MLP width 13696), decode L=1
  and prefill L=512, bf16.
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
from pathlib import Path

from ..arg_checks import int_in
from ..launch import finish, rank0_output, world
from ..configs import CONFIGS
from . import attention as BA
from . import models as M
from . import timing as B
from .runner import run
from .settings import BLOCK_13B, DEFAULT_FORMATS, FUSED_ONLY, Settings, split


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
        names = split(text)
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
        values = [int(v) for v in split(text)]
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
                   "13696→5120, 5120→65540) for bf16, q4, q6, q8 vs MLX: GB/s and %% of the read bandwidth measured in each row's rounds; "
                   "and the same shapes' prefill GEMM (512 rows of x; bf16, q4, q8): GFLOP/s and %% of the FMA peak "
                   "(~3 min on 2 cores; MLX's slowest q4/q8 calls sampled once)")
    p.add_argument("--block-13b", action="store_true", help=f"also decode one block at Talkie 13B's width ({BLOCK_13B}: hidden 5120, 40 heads × 128, "
                   "intermediate 13696, vocab 65540), q4, against its floor (~1.5 min and ~5 GB of memory on 2 cores; mlx-lm's reference sampled once)")
    p.add_argument("--all-isas", action="store_true", help="run the native measurements once per instruction-set table "
                   "this CPU offers from x86-64-v3 up (talkie_kernels.native.ops.available_isas(): e.g. v3 = AVX2 and v4 = AVX-512, "
                   "plus their VNNI tables and v4-bf16), each row and target naming its table; takes that many times as long. Default: the best table only")
    p.add_argument("--depths", nargs="?", const=",".join(map(str, BA.DEPTHS)), type=_depths, metavar="N,N,...",
                   help="also measure attention by context length: one 13B-width bf16 block's decode tok/s at these cached "
                   f"positions (default {','.join(map(str, BA.DEPTHS))}) against its floor, the attention op vs MLX's CPU SDPA, "
                   "its share of a 2048-token prefill, mlx-lm's KV append (~1 min on 2 cores; --quick: a tiny model at 0, 16)")
    p.add_argument("--depths-mlx", action="store_true", help="with --depths: also mlx-lm's plain model by depth and MLX's "
                   "2048-token prefill attention (MLX's CPU attention is its composed fallback: minutes)")
    p.add_argument("--isas", metavar="NAMES", type=_isa_names, help="like --all-isas, for these comma-separated tables only "
                   "(names from talkie_kernels.native.ops.available_isas(), e.g. v3,v4-vnni)")
    p.add_argument("--op-dtype", choices=["float32", "float16", "bfloat16"], help=f"dtype of the per-op inputs (default {B.DEFAULTS.op_dtype}, as Talkie's weights)")
    p.add_argument("--prompt-len", type=int_in(1), metavar="N", help="prefill prompt length for every model (default 64 for talkie-8l-512, 512 for other configs; the 13B-width configs decode only, except talkie-4l-13b-width, measured fused-only, which prefills N tokens when this is given)")
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
        fmts = split(args.dtypes) if args.dtypes else DEFAULT_FORMATS
        too_big = [c for c in split(args.configs)
                   if max(_model_bytes(CONFIGS[c], f, 1 if c in FUSED_ONLY else 2) for f in fmts) > _memory_bytes()]
        if too_big:
            return (f"{too_big} would not fit in memory (reference + fused, or fused alone for {', '.join(FUSED_ONLY)}); "
                    "use --model with a quantized checkpoint")
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check_args(args)
    if problem:
        parser.error(problem)
    group = world()
    with rank0_output(group):
        if group is not None and not args.model:
            parser.error(f"under mlx.launch ({group.size()} processes) bench measures a sharded checkpoint: give --model")
        s = Settings.from_args(args)
        s.distribute(group)
        try:
            code = run(s, args.json, args.plot)
        except M.CheckpointUnreadable as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        if group is not None:
            finish(group)
    return code
