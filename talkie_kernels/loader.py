"""``talkie_kernels.load``: a Talkie checkpoint as the fused model, like ``mlx_lm.load``.

Built on mlx-lm's own pieces, so every checkpoint mlx-lm reads loads the same
way: ``mlx_lm.utils._download`` resolves a local path or a Hugging Face repo id
(the helper ``mlx_lm.load`` itself uses), ``mlx_lm.utils.load_model`` reads the
config and weights with ``get_model_classes`` pointing at
``talkie_kernels.models.talkie`` (quantized checkpoints are quantized with the
config's ``quantization`` before the strict weight load), and
``mlx_lm.utils.load_tokenizer`` builds the tokenizer wrapper. Weights are
evaluated one fused projection at a time (``evaluate_weights``), and adapters
of mlx-lm's plain Talkie are mapped onto the fused projections
(``adapters.load_adapters``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx
from mlx_lm.utils import _download, load_model, load_tokenizer

from .adapters import load_adapters
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


def load_model_only(
    model_path, *, lazy: bool = False, model_config=None, strict=True, model_classes=get_model_classes, **kw
):
    """``(model, config)`` for a local checkpoint directory, errors naming the path.

    ``model_classes``: ``load_model``'s ``get_model_classes`` hook (the Talkie
    classes; ``distributed.sharded_load`` passes one that builds a stage)."""
    model_path = Path(model_path)
    if not (model_path / "config.json").exists():
        raise FileNotFoundError(f"{model_path}: no config.json (not a model directory)")
    check_config(model_path, model_config)
    check_weight_files(model_path)
    try:
        # Loaded lazily and evaluated here, one fused projection at a time (see
        # evaluate_weights).
        model, config = load_model(
            model_path,
            lazy=True,
            strict=strict,
            model_config=model_config,
            get_model_classes=model_classes,
            **kw,
        )
    except CheckpointError as e:
        raise CheckpointError(f"{model_path}: {e}") from None
    except ValueError as e:
        # mlx's strict load_weights names the missing / unexpected / misshaped
        # parameters; the fused model's sanitize names the checkpoint keys.
        raise CheckpointError(f"{model_path}: cannot load as Talkie: {e}{_shape_hint(e)}") from e
    if not lazy:
        evaluate_weights(model)
    return model, config


def check_config(model_path: Path, model_config=None) -> tuple[dict, "talkie.ModelArgs"]:
    """``config.json`` (with ``model_config`` over it), checked before any weight is
    read: ``CheckpointError`` naming the file and the field, else ``(config, args)``."""
    path = model_path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a JSON {type(config).__name__}, expected an object of config fields")
    config.update(model_config or {})
    try:
        get_model_classes(config)
        return config, talkie.ModelArgs.from_dict(config)
    except ValueError as e:
        raise CheckpointError(f"{model_path}: {e}") from None


def check_weight_files(model_path: Path) -> None:
    """The safetensors files, checked before they are read: each shard that
    ``model.safetensors.index.json`` names is present, and each file's header
    is whole and its tensors end within the file (a truncated or empty file
    was "Unable to read 8 bytes from file", naming neither file nor tensor)."""
    index = model_path / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e!r})") from None
        missing = sorted(str(s) for s in shards if not (model_path / str(s)).is_file())
        if missing:
            raise CheckpointError(f"{index} names {', '.join(missing)}: no such file in {model_path}")
    for f in sorted(model_path.glob("model*.safetensors")):
        _check_safetensors(f)


def _check_safetensors(path: Path) -> None:
    # The format: an 8-byte little-endian header length N, N bytes of JSON
    # ({name: {dtype, shape, data_offsets: [begin, end]}}), then the data.
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes: no whole header)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON: {e})") from None
    data = size - 8 - n
    for name, info in header.items() if isinstance(header, dict) else ():
        end = info.get("data_offsets", [0, 0])[1] if isinstance(info, dict) else 0
        if name != "__metadata__" and isinstance(end, int) and end > data:
            raise CheckpointError(
                f"{path}: tensor {name} ends at byte {end} of the data, which has {data} "
                "(the file is truncated)"
            )


#: The files ``transformers.AutoTokenizer`` builds a tokenizer from.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_tokenizer(model_path: Path, tokenizer, vocab_size: int) -> None:
    """The tokenizer's ids within the model's vocabulary: an id past the embedding
    crashes inside MLX's ``take`` (a segfault, as in mlx-lm)."""
    ids = tokenizer.get_vocab().values()
    top = max(ids) if ids else -1
    if top >= vocab_size:
        raise CheckpointError(
            f"{model_path}: the tokenizer has ids up to {top}, but config.json's vocab_size is "
            f"{vocab_size} (the model's embedding has rows 0 to {vocab_size - 1})"
        )
    eos = [e for e in tokenizer.eos_token_ids if not 0 <= e < vocab_size]
    if eos:
        raise CheckpointError(f"{model_path}: eos token id {eos[0]} is outside config.json's vocab_size {vocab_size}")


#: The config.json fields that set the shape of each parameter (by name ending).
SHAPE_FIELDS = {
    "embed.weight": "vocab_size, hidden_size",
    "lm_head.weight": "vocab_size, hidden_size",
    "attn_resid.weight": "hidden_size, num_attention_heads × head_dim",
    "mlp_resid.weight": "hidden_size, intermediate_size",
}


def _shape_hint(error: ValueError) -> str:
    """For mlx's "Expected shape ... for parameter NAME": the config fields behind that shape."""
    m = re.search(r"Expected shape .* for parameter (\S+)", str(error))
    if m is None:
        return ""
    fields = next((f for end, f in SHAPE_FIELDS.items() if m.group(1).endswith(end)), None)
    return f" (its shape is set by config.json's {fields})" if fields else ""


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

    ``adapter_path``: an mlx-lm adapter directory (LoRA, DoRA or full),
    trained on mlx-lm's plain Talkie or on this model (see ``load_adapters``).

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
    if not any((model_path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{model_path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}); a Talkie "
            "checkpoint carries its tokenizer"
        )
    config, args = check_config(model_path, model_config)
    # The tokenizer first: its problems are found before any weight is read.
    tokenizer = load_tokenizer(
        model_path, tokenizer_config, eos_token_ids=config.get("eos_token_id", None)
    )
    check_tokenizer(model_path, tokenizer, args.vocab_size)
    model, config = load_model_only(
        model_path,
        lazy=lazy,
        model_config=model_config,
        trust_remote_code=trust_remote_code,
    )
    if adapter_path is not None:
        model = load_adapters(model, adapter_path)
        model.eval()
    if return_config:
        return model, tokenizer, config
    return model, tokenizer
