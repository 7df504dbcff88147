"""Argument checks the ``talkie-kernels`` commands share (argparse types and
path problems that become ``parser.error`` messages, exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
