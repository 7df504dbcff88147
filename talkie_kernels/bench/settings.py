"""What one ``talkie-kernels bench`` run measures and how long it samples: ``Settings``.

``Settings.from_args`` reads the parsed flags (``cli.build_parser``) once; the
runner and its sections (``op_runs``, ``model_runs``, ``attention``) read only
the settings, and ``Settings.as_dict`` is the ``settings`` object of ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configs import WIDTH_13B
from . import linear as BL
from . import models as M
from . import timing as B

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


def split(text: str) -> list[str]:
    """The names of a comma-separated flag value."""
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass
class ModelRun:
    """One model of the run: a config name (or a checkpoint path), its prompt length and formats."""

    name: str
    prompt_len: int
    formats: list
    workloads: tuple = M.MODEL_WORKLOADS
    checkpoint: bool = False
    fused_only: bool = field(init=False)

    def __post_init__(self):
        self.formats = list(self.formats)
        self.fused_only = self.name in FUSED_ONLY


@dataclass
class Settings:
    """Everything a run depends on; the defaults, the tiny ``--quick`` ones, or the flags'."""

    quick: bool
    #: Timed samples per implementation of an op, model workload or linear shape
    #: (fewer to fit the budgets below, never fewer than ``min_rounds``).
    rounds: int
    min_rounds: int
    #: Seconds of timed samples per implementation of one workload (None: exactly
    #: ``rounds``), and the sample length at which a case counts as slow (``_budgets``).
    model_budget_s: dict[str, float | None]
    linear_budget_s: float | None
    slow_s: dict[str, float]
    #: Sequence length of the per-op inputs by phase.
    op_seq_len: dict[str, int]
    op_sample_ms: float
    linear_sample_ms: float
    op_dtype: str
    seed: int
    models: list[ModelRun]
    #: --decode-tokens / --decode-prompt, or None: ``decode_lengths`` chooses.
    decode_tokens: int | None = None
    decode_prompt: int | None = None
    no_generate_step: bool = False
    #: (name, K, N) of the linear table; empty without --linear-shapes.
    linear_shapes: tuple = ()
    do_ops: bool = True
    do_models: bool = True
    do_linear: bool = False
    all_isas: bool = False
    isas: list[str] | None = None
    #: --depths' comma-separated cached positions (None: not measured), and --depths-mlx.
    depths: str | None = None
    depths_mlx: bool = False
    #: Whether --model is split by blocks (pipeline) rather than heads under mlx.launch.
    pipeline: bool = False
    #: The mx.distributed world under mlx.launch (None in one process): ``distribute``.
    group: Any = None

    @classmethod
    def from_args(cls, args) -> Settings:
        """The settings of parsed ``talkie-kernels bench`` flags."""
        q = args.quick
        d = B.QUICK if q else B.DEFAULTS
        model_budget_s, linear_budget_s, slow_s = _budgets(args.rounds, q)
        linear_shapes = (BL.QUICK_SHAPES if q else BL.SHAPES_13B) if (args.linear_shapes or args.only == "linear") else ()
        return cls(
            quick=q, rounds=args.rounds or d.rounds, min_rounds=d.min_rounds,
            model_budget_s=model_budget_s, linear_budget_s=linear_budget_s, slow_s=slow_s,
            op_seq_len={"decode": 1, "prefill": 8 if q else 512},
            op_sample_ms=d.op_sample_ms, linear_sample_ms=d.linear_sample_ms,
            op_dtype=args.op_dtype or d.op_dtype, seed=args.seed,
            models=_model_runs(args),
            decode_tokens=args.decode_tokens, decode_prompt=args.decode_prompt,
            no_generate_step=args.no_generate_step,
            linear_shapes=linear_shapes,
            do_ops=args.only in (None, "ops"),
            do_models=args.only in (None, "models"),
            do_linear=bool(linear_shapes) and args.only in (None, "linear"),
            all_isas=args.all_isas, isas=split(args.isas) if args.isas else None,
            depths=args.depths, depths_mlx=args.depths_mlx,
            pipeline=args.pipeline,
        )

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
        return self.decode_tokens or tokens, self.decode_prompt or prompt

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
            "rounds": {"ops": self.rounds, "models": self.rounds, "linear": self.rounds},
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


def _budgets(rounds: int | None, quick: bool) -> tuple[dict[str, float | None], float | None, dict[str, float]]:
    """(model budget per phase, linear budget, slow sample length by section), in seconds.

    Samples are cut to fit a budget, never below ``min_rounds`` unless one
    takes ``slow_s`` or more (MLX's quantized matmul: 12 s per 64-token
    talkie-8l-512 q4 prefill, 0.2-3 s per call at 13B linear shapes), which is
    sampled once or twice. This keeps the default run under 2 minutes on 2
    cores. An explicit ``--rounds`` is exact.
    """
    if rounds:
        return {"prefill": None, "decode": None}, None, {}
    if quick:
        return {"prefill": 0.5, "decode": 0.5}, 0.5, {"models": 0.5, "linear": 0.5}
    return {"prefill": 3.0, "decode": 4.0}, 2.0, {"models": 3.0, "linear": 1.0}


def _model_runs(args) -> list[ModelRun]:
    """The models of the run: ``--model``'s checkpoint, ``--configs``, or the default config; and ``--block-13b``."""
    q = args.quick
    formats = split(args.dtypes) if args.dtypes else list(QUICK_FORMATS if q else DEFAULT_FORMATS)
    if args.model:
        # A checkpoint has its own weights: one "format", named by the checkpoint.
        runs = [ModelRun(str(args.model), args.prompt_len or (16 if q else 512), [None], checkpoint=True)]
    elif args.configs:
        runs = [
            # At 13B width MLX's prefill takes minutes: decode only, as --block-13b,
            # unless the config is measured fused-only and --prompt-len asks for a prefill.
            ModelRun(n, args.prompt_len, formats) if n in FUSED_ONLY and args.prompt_len
            else ModelRun(n, 0, formats, DECODE_ONLY) if n in WIDTH_13B
            else ModelRun(n, args.prompt_len or (16 if q else dict(M.DEFAULT_MODELS).get(n, 512)), formats)
            for n in split(args.configs)
        ]
    elif q:
        runs = [ModelRun("talkie-2l-256", args.prompt_len or 16, formats)]
    else:
        runs = [ModelRun("talkie-8l-512", args.prompt_len or 64, formats)]
    if args.block_13b:
        runs.append(ModelRun(BLOCK_13B, 0, BLOCK_13B_FORMATS, DECODE_ONLY))
    return runs
