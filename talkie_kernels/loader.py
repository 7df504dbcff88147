"""``talkie_kernels.load``: a Talkie checkpoint as the fused model, like ``mlx_lm.load``.

Built on mlx-lm's own pieces, so every checkpoint mlx-lm reads loads the same
way: ``mlx_lm.utils._download`` resolves a local path or a Hugging Face repo id
(the helper ``mlx_lm.load`` itself uses), ``mlx_lm.utils.load_model`` reads the
config and weights with ``get_model_classes`` pointing at
``talkie_kernels.models.talkie`` (quantized checkpoints are quantized with the
config's ``quantization`` before the strict weight load), and
``mlx_lm.utils.load_tokenizer`` builds the tokenizer wrapper.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx
from mlx_lm.utils import _download, load_adapters, load_model, load_tokenizer

from .models import talkie


class CheckpointError(ValueError):
    """A checkpoint that is not a Talkie model this package can load."""


def get_model_classes(config: dict):
    """The ``get_model_classes`` hook of ``mlx_lm.utils.load_model``: Talkie only."""
    model_type = config.get("model_type")
    if model_type != "talkie":
        raise CheckpointError(
            f"talkie_kernels loads Talkie checkpoints only: config.json has "
            f"model_type {model_type!r}, expected 'talkie' (use mlx_lm.load for other models)"
        )
    return talkie.Model, talkie.ModelArgs


def load_model_only(model_path, *, lazy: bool = False, model_config=None, strict=True, **kw):
    """``(model, config)`` for a local checkpoint directory, errors naming the path."""
    model_path = Path(model_path)
    if not (model_path / "config.json").exists():
        raise FileNotFoundError(f"{model_path}: no config.json (not a model directory)")
    try:
        # Loaded lazily and evaluated here, one fused projection at a time (see
        # evaluate_weights).
        model, config = load_model(
            model_path,
            lazy=True,
            strict=strict,
            model_config=model_config,
            get_model_classes=get_model_classes,
            **kw,
        )
    except CheckpointError as e:
        raise CheckpointError(f"{model_path}: {e}") from None
    except ValueError as e:
        # mlx's strict load_weights names the missing / unexpected / misshaped
        # parameters; the fused model's sanitize names the checkpoint keys.
        raise CheckpointError(f"{model_path}: cannot load as Talkie: {e}") from e
    if not lazy:
        evaluate_weights(model)
    return model, config


def evaluate_weights(model) -> None:
    """Evaluate the model's weights in the memory mlx-lm's plain model needs.

    ``mx.load`` reads safetensors lazily and ``sanitize`` concatenates the parts
    of each fused projection lazily. Evaluating all weights at once (what
    ``load_model`` does) would hold every part next to its concatenation;
    evaluating one fused projection at a time holds the parts of only one, and
    they are freed as soon as it is written (nothing else refers to them).
    """
    for block in model.layers:
        for fused in (block.attn.attn_qkv, block.mlp.mlp_gate_linear):
            mx.eval(fused.parameters())
    mx.eval(model.parameters())


def load(
    path_or_hf_repo: str,
    tokenizer_config: Optional[Dict[str, Any]] = None,
    model_config: Optional[Dict[str, Any]] = None,
    adapter_path: Optional[str] = None,
    lazy: bool = False,
    return_config: bool = False,
    revision: Optional[str] = None,
    trust_remote_code: bool = False,
):
    """Load a Talkie checkpoint as the fused model -> ``(model, tokenizer[, config])``.

    Same signature and return value as ``mlx_lm.load`` (mlx-lm 0.32.2), so it
    can stand in for it (the ``generate`` and ``server`` commands do exactly
    that). Reads HF checkpoints (bare ``lm_head``), ``mlx_lm.convert`` outputs
    (quantized or not) and checkpoints written by ``talkie-kernels convert``
    (fused keys, quantized ``lm_head``).

    Raises ``CheckpointError`` (a ``ValueError``) naming the path and the
    offending weight for a missing, unexpected or misshaped weight or a
    ``model_type`` other than ``talkie``; ``FileNotFoundError`` without a config
    or weights.
    """
    path = str(path_or_hf_repo)
    if path.startswith(("/", ".", "~")):
        # A local path, not a repo id: a missing one is reported as such rather
        # than as the hub's "repo id must be in the form ..." error.
        path = str(Path(path).expanduser())
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such model directory")
    model_path = _download(path, revision=revision)
    model, config = load_model_only(
        model_path,
        lazy=lazy,
        model_config=model_config,
        trust_remote_code=trust_remote_code,
    )
    if adapter_path is not None:
        model = load_adapters(model, adapter_path)
        model.eval()
    tokenizer = load_tokenizer(
        model_path, tokenizer_config, eos_token_ids=config.get("eos_token_id", None)
    )
    if return_config:
        return model, tokenizer, config
    return model, tokenizer


@contextlib.contextmanager
def loading_through_talkie(*modules):
    """Within the block, ``module.load`` is ``talkie_kernels.load`` for each module.

    mlx-lm's command modules (``mlx_lm.generate``, ``mlx_lm.server``,
    ``mlx_lm.convert``) import ``load`` from ``mlx_lm.utils`` into their own
    namespace and call it by that name; swapping exactly that binding (and
    restoring it) routes their model loading through the fused model and
    leaves the rest of their code, flags and behaviour untouched.
    """
    saved = [(m, m.load) for m in modules]
    try:
        for m in modules:
            m.load = load
        yield
    finally:
        for m, original in saved:
            m.load = original


@contextlib.contextmanager
def sys_argv(prog: str, args):
    """``sys.argv`` as ``[prog, *args]`` within the block (mlx-lm's mains parse it)."""
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        yield
    finally:
        sys.argv = saved
