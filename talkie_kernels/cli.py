"""``talkie-kernels`` command line: ``bench``, ``generate``, ``server``, ``convert``, ``init-checkpoint``.

Each subcommand lives in its own module with a ``main(argv)``; this file only
routes (by module name, so a command loads only its own module), and
``talkie-kernels generate --help`` shows that command's own flags. What the
commands share lives below them: argument checks in ``arg_checks``, running
under ``mlx.launch`` in ``launch``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "bench": ("talkie_kernels.bench.cli", "benchmark the fused ops and model against plain MLX"),
    "generate": ("talkie_kernels.generate", "generate text with the fused model (mlx_lm.generate's flags)"),
    "server": ("talkie_kernels.server", "serve the fused model with mlx-lm's OpenAI-compatible server"),
    "convert": ("talkie_kernels.convert", "convert/quantize a checkpoint (lm_head quantized too)"),
    "init-checkpoint": ("talkie_kernels.checkpoint", "write a small random-weight Talkie checkpoint to try the others on"),
}


def _usage() -> str:
    lines = ["usage: talkie-kernels COMMAND [options]", "", "commands:"]
    width = max(map(len, COMMANDS)) + 2
    lines += [f"  {name:<{width}}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`talkie-kernels COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"talkie-kernels: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
