"""``talkie-kernels`` command line: ``bench``, ``generate``, ``server``, ``convert``, ``init-checkpoint``.

Each subcommand lives in its own module with a ``main(argv)``; this file only
routes, so ``talkie-kernels generate --help`` shows that command's own flags.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path

COMMANDS = {
    "bench": ("talkie_kernels.bench.cli", "benchmark the fused ops and model against plain MLX"),
    "generate": ("talkie_kernels.generate", "generate text with the fused model (mlx_lm.generate's flags)"),
    "server": ("talkie_kernels.server", "serve the fused model with mlx-lm's OpenAI-compatible server"),
    "convert": ("talkie_kernels.convert", "convert/quantize a checkpoint (lm_head quantized too)"),
    "init-checkpoint": ("talkie_kernels.checkpoint", "write a small random-weight Talkie checkpoint to try the others on"),
}


# --------------------------------------------------------------------------
# Helpers the subcommands share: argument checks and running under mlx.launch


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer with ``low <= v`` (and ``v < high``)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < low or (high is not None and v >= high):
            top = {2**32: "2**32", 2**63: "2**63", 2**64: "2**64"}.get(high, str(high))
            bound = f"an integer >= {low}" + (f" and < {top}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{v} is not {bound}")
        return v

    parse.__name__ = "int"
    return parse


def local_path_problem(flag: str, value, *, config: bool = True, what: str = "directory") -> str | None:
    """Why a ``--model``-like value cannot be a checkpoint, if it names a local path
    (a value that is no existing path and looks like ``org/name`` is a Hugging Face repo)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        if config and not (path / "config.json").is_file():
            return f"{flag} {value}: no config.json (not a checkpoint directory)"
        return None
    if value.startswith(("/", ".", "~")) or value.count("/") != 1:
        return f"{flag} {value}: no such {what} (nor a Hugging Face repo id, org/name)"
    return None


def uncreatable_dir(flag: str, value: str) -> str | None:
    """Why directory ``value`` cannot be created, or None (tried: what was made is removed)."""
    path = Path(value).expanduser().absolute()
    made = []
    try:
        for p in reversed([path, *path.parents]):
            if not p.exists():
                p.mkdir()
                made.append(p)
    except OSError as e:
        return f"{flag} {value}: cannot be created ({e.strerror or e})"
    finally:
        for p in reversed(made):
            p.rmdir()
    return None


def world():
    """The ``mx.distributed`` world group when this process is one of several
    (started by ``mlx.launch``), else None."""
    import mlx.core as mx

    global _WORLD
    group = mx.distributed.init()
    if group.size() == 1:
        return None
    # Held for the life of the process: the ring backend closes its sockets when
    # the last reference goes, and doing that while the interpreter still runs
    # makes its receiving threads (and the peers') report errors on stderr.
    _WORLD = group
    return group


_WORLD = None


@contextlib.contextmanager
def rank0_output(group):
    """Within the block, only rank 0 of ``group`` (or a single process) prints:
    on the other ranks stdout, stderr and logging below ERROR go nowhere. An
    exception leaving the block is still reported (the streams are restored first)."""
    if group is None or group.rank() == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def shared_seed(seed: int | None, group) -> int:
    """``seed``, or (None) a random one drawn on rank 0: the same on every rank of ``group``."""
    if seed is not None:
        return seed
    import mlx.core as mx

    mine = int.from_bytes(os.urandom(4), "little") >> 1 if group.rank() == 0 else 0
    total = mx.distributed.all_sum(mx.array(mine, dtype=mx.int32), group=group, stream=mx.cpu)
    return int(total.item())


def finish(group) -> None:
    """Wait until every rank of ``group`` is done, so none closes its connections
    while another still talks to it."""
    import mlx.core as mx

    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


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
