"""Tiny random-weight Talkie checkpoints for the tests.

The generator is the package's (``talkie_kernels.checkpoint``, also behind
``talkie-kernels init-checkpoint``), so tests and users get the same
checkpoints; ``edit_checkpoint`` makes the bad ones of the loader tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx

from talkie_kernels.checkpoint import write_checkpoint  # noqa: F401  (the tests import it from here)


def edit_checkpoint(src, dst, *, drop=(), add=None, replace=None, config=None) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with weights dropped / added / replaced
    and config keys overridden: the bad checkpoints of the loader tests."""
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    weights = mx.load(str(src / "model.safetensors"))
    for k in drop:
        del weights[k]
    weights.update(add or {})
    weights.update(replace or {})
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "pt"})
    if config:
        cfg = json.loads((src / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst
