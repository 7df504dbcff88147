"""``talkie-kernels generate``: ``mlx_lm.generate`` with the fused Talkie model.

Same flags, chat-template handling, sampling and streamed output as
``mlx_lm.generate`` (mlx-lm 0.32.2): this runs mlx-lm's own ``main`` with the
arguments given here, swapping only the ``load`` it calls for
``talkie_kernels.load`` (see ``swap.loading_through_talkie``). ``--model`` is
required (mlx-lm's default model is not a Talkie); a ``--draft-model`` is
loaded the same way, so it must be a Talkie checkpoint too. Bad flag values
are argparse errors (exit code 2) before anything loads, or, for those
checked against the model (``--top-k`` beyond its vocabulary), right after it
loaded.

Under ``mlx.launch`` (a world of more than one process) the model is loaded
with ``launch.maybe_shard`` (tensor parallel; ``--pipeline``: pipeline
parallel), MLX's generator is seeded alike on every rank after loading
(``--seed``, or a seed drawn by rank 0 and shared), and only rank 0 prints.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
from pathlib import Path

from .arg_checks import int_in, local_path_problem
from .launch import finish, rank0_output, shared_seed, world
from .swap import loading_through_talkie, swapped, sys_argv

_mlx_generate = importlib.import_module("mlx_lm.generate")

PROG = "talkie-kernels generate"
DESCRIPTION = (
    "Generate text from a Talkie checkpoint with the fused model (talkie_kernels.load). "
    "The flags are mlx_lm.generate's (mlx-lm 0.32.2); what differs: --model is required "
    "and must be a Talkie checkpoint, as must --draft-model; bad flag values are refused "
    "before anything loads. Under mlx.launch (more than one process) the model is sharded "
    "across the processes (tensor parallel; --pipeline for pipeline parallel), every rank "
    "samples with the same seed and only rank 0 prints. "
    "`talkie-kernels init-checkpoint DIR` writes a small random-weight one to try."
)
#: mlx-lm's help for these flags names its own default model or any model (or,
#: for adapters, does not say that those of mlx-lm's own Talkie load too).
HELP = {
    "model": "A Talkie checkpoint: a local directory or a Hugging Face repo (required).",
    "draft_model": "A Talkie checkpoint for speculative decoding (loaded with talkie_kernels.load).",
    "adapter_path": "An mlx-lm adapter directory (adapter_config.json, adapters.safetensors): "
    "LoRA, DoRA or full, trained on mlx-lm's Talkie or on the fused model.",
    "max_tokens": "Maximum number of tokens to generate (>= 1, or -1 for no limit)",
    "seed": "PRNG seed (0 <= seed < 2**64; under mlx.launch every rank uses it, "
    "or one drawn by rank 0)",
}
#: Distributed runs refuse these (as mlx_lm.server's distributed mode refuses
#: adapters and draft models): sharded_load reads neither adapters nor a draft
#: model, and a prompt cache holds the KV heads of a whole model.
NOT_DISTRIBUTED = (
    ("adapter_path", "--adapter-path"),
    ("draft_model", "--draft-model"),
    ("prompt_cache_file", "--prompt-cache-file"),
)


def build_parser():
    """mlx_lm.generate's parser with this command's prog, description, Talkie-specific
    help, checked types for the flags that take a number, and ``--pipeline``."""
    parser = _mlx_generate.setup_arg_parser()
    parser.prog = PROG
    parser.description = DESCRIPTION
    for action in parser._actions:
        if action.dest in HELP:
            action.help = HELP[action.dest]
        if action.dest == "seed":
            action.type = int_in(0, 2**64)
    parser.add_argument(
        "--pipeline", action="store_true",
        help="Under mlx.launch: split the blocks across the processes (pipeline parallel) "
        "instead of the heads (tensor parallel, the default). No effect in one process.",
    )
    return parser


def check_generate_args(ns) -> str | None:
    """Why parsed generate flags cannot run (for ``parser.error``), or None.

    mlx-lm's parser takes any int or float: these were tracebacks (or, for a
    negative temperature, a top-p of 2 or a KV cache of 7 bits, silently
    something else) after the model had loaded.
    """
    rules = [
        ("--max-tokens", ns.max_tokens, ns.max_tokens >= 1 or ns.max_tokens == -1, ">= 1 (or -1: no limit)"),
        ("--temp", ns.temp, math.isfinite(ns.temp) and ns.temp >= 0, "a finite number >= 0"),
        ("--top-p", ns.top_p, 0 <= ns.top_p <= 1, "in [0, 1]"),
        ("--min-p", ns.min_p, 0 <= ns.min_p <= 1, "in [0, 1]"),
        ("--top-k", ns.top_k, ns.top_k >= 0, ">= 0"),
        ("--xtc-probability", ns.xtc_probability, 0 <= ns.xtc_probability <= 1, "in [0, 1]"),
        ("--xtc-threshold", ns.xtc_threshold, 0 <= ns.xtc_threshold <= 0.5, "in [0, 0.5]"),
        ("--min-tokens-to-keep", ns.min_tokens_to_keep, ns.min_tokens_to_keep >= 1, ">= 1"),
        ("--max-kv-size", ns.max_kv_size, ns.max_kv_size is None or ns.max_kv_size >= 1, ">= 1"),
        ("--prefill-step-size", ns.prefill_step_size, ns.prefill_step_size >= 1, ">= 1"),
        ("--kv-bits", ns.kv_bits, ns.kv_bits is None or ns.kv_bits in (2, 3, 4, 5, 6, 8), "one of 2, 3, 4, 5, 6, 8"),
        ("--kv-group-size", ns.kv_group_size, ns.kv_group_size in (32, 64, 128), "one of 32, 64, 128"),
        ("--quantized-kv-start", ns.quantized_kv_start, ns.quantized_kv_start >= 0, ">= 0"),
        ("--num-draft-tokens", ns.num_draft_tokens, ns.num_draft_tokens >= 1, ">= 1"),
    ]
    for flag, value, ok, want in rules:
        if not ok:
            return f"argument {flag}: {value} is not {want}"
    if ns.image:
        return "argument --image: Talkie is a text model (it takes no images)"
    if ns.chat_template_config is not None:
        try:
            cfg = json.loads(ns.chat_template_config)
        except ValueError as e:
            return f"argument --chat-template-config: not JSON ({e})"
        if not isinstance(cfg, dict):
            return "argument --chat-template-config: must be a JSON object"
    if ns.prompt_cache_file is not None and not Path(ns.prompt_cache_file).expanduser().is_file():
        return f"--prompt-cache-file {ns.prompt_cache_file}: no such file"
    return (local_path_problem("--model", ns.model)
            or local_path_problem("--draft-model", ns.draft_model)
            or local_path_problem("--adapter-path", ns.adapter_path, config=False))


@contextlib.contextmanager
def checked_against_model(module, parser, top_k: int):
    """Within the block, flags beyond the model that ``module.load`` loads are argparse
    errors (exit code 2), and ``--top-k`` equal to its vocabulary samples unfiltered.

    The vocabulary is known once the model has loaded: mlx-lm's sampler then
    raised a ``ValueError`` traceback for a ``--top-k`` at or above it.
    """
    load, make_sampler = module.load, module.make_sampler
    vocab = []

    def checked_load(*args, **kwargs):
        out = load(*args, **kwargs)
        n = out[0].args.vocab_size
        if top_k > n:
            parser.error(f"argument --top-k: {top_k} is more than the model's vocabulary ({n} ids)")
        vocab.append(n)
        return out

    def sampler(*args, top_k: int = 0, **kwargs):
        # top_k = vocabulary keeps every id: no filtering (mlx-lm's sampler wants < vocabulary).
        return make_sampler(*args, top_k=0 if vocab and top_k >= vocab[0] else top_k, **kwargs)

    with swapped(module, load=checked_load, make_sampler=sampler):
        yield


@contextlib.contextmanager
def sharded_loading(module, pipeline: bool, seed: int):
    """Within the block, ``module.load`` loads this rank's share of the model
    (``launch.maybe_shard``) and then seeds MLX's generator with ``seed``, so
    every rank samples alike whatever loading drew from it."""
    from mlx_lm.utils import _download, load_config

    from .launch import maybe_shard

    def load(path_or_repo, tokenizer_config=None, model_config=None, return_config=False, **_):
        import mlx.core as mx

        model, tokenizer, _group = maybe_shard(
            path_or_repo, pipeline=pipeline, tokenizer_config=tokenizer_config, model_config=model_config
        )
        mx.random.seed(seed)
        if not return_config:
            return model, tokenizer
        path = Path(path_or_repo).expanduser()
        if not path.is_dir():
            path = Path(_download(str(path_or_repo), allow_patterns=["*.json"]))
        return model, tokenizer, load_config(path)

    with swapped(module, load=load):
        yield


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parsed = parser.parse_args(args)  # --help and bad flags stop here
    if parsed.model is None and parsed.prompt_cache_file is None:
        parser.error("--model is required")
    problem = check_generate_args(parsed)
    if problem:
        parser.error(problem)
    # mlx-lm's own parser reads the rest; --pipeline is this command's.
    mlx_args = [a for a in args if a != "--pipeline"]
    group = world()
    if group is None:
        with (sys_argv(PROG, mlx_args), loading_through_talkie(_mlx_generate),
              checked_against_model(_mlx_generate, parser, parsed.top_k)):
            _mlx_generate.main()
        return 0
    with rank0_output(group):
        for dest, flag in NOT_DISTRIBUTED:
            if getattr(parsed, dest) is not None:
                parser.error(
                    f"{flag} is not supported under mlx.launch ({group.size()} processes): "
                    "the sharded model loads without it"
                )
        seed = shared_seed(parsed.seed, group)
        with (sys_argv(PROG, [*mlx_args, "--seed", str(seed)]),
              sharded_loading(_mlx_generate, parsed.pipeline, seed),
              checked_against_model(_mlx_generate, parser, parsed.top_k)):
            _mlx_generate.main()
        finish(group)
    return 0
