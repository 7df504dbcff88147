"""``talkie-kernels server``: mlx-lm's OpenAI-compatible HTTP server, fused model.

Same flags and endpoints as ``mlx_lm.server`` (mlx-lm 0.32.2): this runs its
``main`` with the arguments given here, swapping only the ``load`` that its
``ModelProvider`` calls for ``talkie_kernels.load`` (see
``loader.loading_through_talkie``). Models named in requests and
``--draft-model`` load through it too, so they must be Talkie checkpoints.
Distributed serving (``mlx.launch``) uses mlx-lm's ``sharded_load`` and is not
routed. Batched requests run through ``BatchKVCache``, whose ``offset`` is an
``mx.array`` — the fused model takes it as is.
"""

from __future__ import annotations

import importlib
import sys

from .loader import loading_through_talkie, sys_argv

_mlx_server = importlib.import_module("mlx_lm.server")

PROG = "talkie-kernels server"


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with sys_argv(PROG, args), loading_through_talkie(_mlx_server):
        _mlx_server.main()
    return 0
