"""``talkie-kernels generate``: ``mlx_lm.generate`` with the fused Talkie model.

Same flags, chat-template handling, sampling and streamed output as
``mlx_lm.generate`` (mlx-lm 0.32.2): this runs mlx-lm's own ``main`` with the
arguments given here, swapping only the ``load`` it calls for
``talkie_kernels.load`` (see ``loader.loading_through_talkie``). ``--model`` is
required (mlx-lm's default model is not a Talkie); a ``--draft-model`` is
loaded the same way, so it must be a Talkie checkpoint too.
"""

from __future__ import annotations

import importlib
import sys

from .loader import loading_through_talkie, sys_argv

_mlx_generate = importlib.import_module("mlx_lm.generate")

PROG = "talkie-kernels generate"
DESCRIPTION = (
    "Generate text from a Talkie checkpoint with the fused model (talkie_kernels.load). "
    "The flags are mlx_lm.generate's (mlx-lm 0.32.2); what differs: --model is required "
    "and must be a Talkie checkpoint, as must --draft-model. "
    "`talkie-kernels init-checkpoint DIR` writes a small random-weight one to try."
)
#: mlx-lm's help for these flags names its own default model or any model (or,
#: for adapters, does not say that those of mlx-lm's own Talkie load too).
HELP = {
    "model": "A Talkie checkpoint: a local directory or a Hugging Face repo (required).",
    "draft_model": "A Talkie checkpoint for speculative decoding (loaded with talkie_kernels.load).",
    "adapter_path": "An mlx-lm adapter directory (adapter_config.json, adapters.safetensors): "
    "LoRA, DoRA or full, trained on mlx-lm's Talkie or on the fused model.",
}


def build_parser():
    """mlx_lm.generate's parser with this command's prog, description and Talkie-specific help."""
    parser = _mlx_generate.setup_arg_parser()
    parser.prog = PROG
    parser.description = DESCRIPTION
    for action in parser._actions:
        if action.dest in HELP:
            action.help = HELP[action.dest]
    return parser


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parsed = parser.parse_args(args)  # --help and bad flags stop here
    if parsed.model is None and parsed.prompt_cache_file is None:
        parser.error("--model is required")
    with sys_argv(PROG, args), loading_through_talkie(_mlx_generate):
        _mlx_generate.main()
    return 0
