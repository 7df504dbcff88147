"""``talkie-kernels server``: mlx-lm's OpenAI-compatible HTTP server, fused model.

Same flags and endpoints as ``mlx_lm.server`` (mlx-lm 0.32.2): this runs its
``main`` with the arguments given here, swapping only the ``load`` that its
``ModelProvider`` calls for ``talkie_kernels.load`` (see
``loader.loading_through_talkie``). Models named in requests and
``--draft-model`` load through it too, so they must be Talkie checkpoints.
Distributed serving (``mlx.launch``) uses mlx-lm's ``sharded_load`` and is not
routed. Batched requests run through ``BatchKVCache``, whose ``offset`` is an
``mx.array`` — the fused model takes it as is.

mlx-lm builds its parser inside ``main``; ``talkie_arg_parser`` swaps the
``argparse`` its module sees for one whose ``ArgumentParser`` carries this
command's prog and description and Talkie's ``--model`` / ``--draft-model`` help
(flags and defaults untouched).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import types

from .loader import loading_through_talkie, sys_argv

_mlx_server = importlib.import_module("mlx_lm.server")

PROG = "talkie-kernels server"
DESCRIPTION = (
    "mlx-lm's OpenAI-compatible HTTP server (mlx_lm.server, mlx-lm 0.32.2) on the fused "
    "Talkie model, with the same flags and endpoints; what differs: every model (--model, "
    "--draft-model, a model named in a request) loads with talkie_kernels.load, so it "
    "must be a Talkie checkpoint; distributed serving (mlx.launch, --pipeline) is not "
    "routed through the fused model. "
    "`talkie-kernels init-checkpoint DIR` writes a small random-weight one to try."
)
HELP = {
    "--model": "A Talkie checkpoint: a local directory or a Hugging Face repo "
    "(else the model named in each request).",
    "--draft-model": "A Talkie checkpoint for speculative decoding.",
}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.update(prog=PROG, description=DESCRIPTION)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        for name in names:
            kwargs["help"] = HELP.get(name, kwargs.get("help"))
        return super().add_argument(*names, **kwargs)


@contextlib.contextmanager
def talkie_arg_parser(module):
    """Within the block, ``module.argparse.ArgumentParser`` is this command's parser."""
    saved = module.argparse
    module.argparse = types.SimpleNamespace(**{**vars(argparse), "ArgumentParser": _Parser})
    try:
        yield
    finally:
        module.argparse = saved


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with sys_argv(PROG, args), talkie_arg_parser(_mlx_server), loading_through_talkie(_mlx_server):
        _mlx_server.main()
    return 0
