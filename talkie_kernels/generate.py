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


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _mlx_generate.setup_arg_parser()
    parser.prog = PROG
    parsed = parser.parse_args(args)  # --help and bad flags stop here
    if parsed.model is None and parsed.prompt_cache_file is None:
        parser.error("--model is required")
    with sys_argv(PROG, args), loading_through_talkie(_mlx_generate):
        _mlx_generate.main()
    return 0
