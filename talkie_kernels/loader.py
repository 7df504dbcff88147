"""``talkie_kernels.load`` and ``sharded_load``: a Talkie checkpoint as the fused
model, like ``mlx_lm.load`` and ``mlx_lm.utils.sharded_load``.

Built on mlx-lm's own pieces, so every checkpoint mlx-lm reads loads the same
way: ``mlx_lm.utils._download`` resolves a local path or a Hugging Face repo id
(the helper ``mlx_lm.load`` itself uses), ``mlx_lm.utils.load_model`` reads the
config and weights with ``get_model_classes`` pointing at
``talkie_kernels.models.talkie`` (quantized checkpoints are quantized with the
config's ``quantization`` before the strict weight load; the model's
``sanitize`` maps the checkpoint's keys, ``checkpoint_keys``), and
``mlx_lm.utils.load_tokenizer`` builds the tokenizer wrapper. Both loads go
through ``load_model_only``; weights are evaluated one projection at a time
(``evaluate_weights``). Adapters of mlx-lm's plain Talkie are mapped onto the
fused projections by ``adapters.load_adapters``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx
from mlx_lm.utils import _download, load_model, load_tokenizer

from .adapters import load_adapters
from .checkpoint_keys import block_index
from .huge_pages import huge_pages
from .lost_peer import exit_on_lost_peer
from .models import talkie
from .models.pipeline import stage_range
from .models.tensor_parallel import check_tensor_parallel, config_layers


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
    classes; ``sharded_load`` passes one that builds a pipeline stage)."""
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
    evaluating one projection at a time holds the parts of only one, and they
    are freed as soon as it is written (nothing else refers to them). On a
    tensor-parallel rank each projection's full arrays are read once, its
    slice kept and the rest freed before the next. On the CPU each is then
    collapsed into 2 MiB pages in place (``huge_pages``).
    """
    for block in model.layers:
        for layer in (
            block.attn.attn_qkv,
            block.attn.attn_resid,
            block.mlp.mlp_gate_linear,
            block.mlp.mlp_resid,
        ):
            mx.eval(layer.parameters())
            huge_pages(layer.parameters())
        mx.eval(block.parameters())
    mx.eval(model.parameters())
    huge_pages({k: v for k, v in model.parameters().items() if k != "layers"})


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


def sharded_load(
    path_or_repo,
    pipeline_group: Optional[mx.distributed.Group] = None,
    tensor_group: Optional[mx.distributed.Group] = None,
    return_config: bool = False,
    *,
    tokenizer_config: Optional[Dict[str, Any]] = None,
    model_config: Optional[Dict[str, Any]] = None,
    pipeline_split=None,
):
    """Load this rank's share of a Talkie checkpoint -> ``(model, tokenizer[, config])``.

    As ``mlx_lm.utils.sharded_load``: with neither group, tensor parallel over
    ``mx.distributed.init()``. The config is checked first (heads, MLP width and
    quantization groups for tensor parallelism, block count for the pipeline):
    ``ValueError`` before any weight is read. A pipeline stage loads only its
    blocks (with ``model.safetensors.index.json`` a downloaded repo fetches
    only their files; without it, every file is opened but only the stage's
    arrays are read: the stage's ``sanitize`` drops the others); a
    tensor-parallel rank reads each projection whole once and keeps its
    slices. Weights are evaluated one projection at a time, so a rank's peak
    memory is its share plus about one projection (a fused one's parts and
    their concatenation).

    When the world has more than one rank, ``lost_peer.exit_on_lost_peer`` is
    installed, and every rank waits for the others before returning (ready
    before the first collective of generation).
    """
    if pipeline_group is None and tensor_group is None:
        tensor_group = mx.distributed.init()

    # The config alone decides whether the split is possible.
    path = str(path_or_repo)
    local = path.startswith(("/", ".", "~")) or Path(path).is_dir()
    if local:
        model_path = _local_path(path)
    else:
        model_path = Path(_download(path, allow_patterns=["*.json"]))
    cfg_file = model_path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{model_path}: no config.json (not a model directory)")
    config = json.loads(cfg_file.read_text())
    if model_config:
        config.update(model_config)
    get_model_classes(config)  # model_type must be talkie
    if tensor_group is not None:
        n = tensor_group.size()
        check_tensor_parallel(n, config["num_attention_heads"], config["intermediate_size"], config_layers(config))
    layers = None
    if pipeline_group is not None:
        layers = stage_range(
            config["num_hidden_layers"], pipeline_group.size(), pipeline_group.rank(), pipeline_split
        )
    if not local:
        model_path = _local_path(path, layers)

    def model_classes(config):
        model_class, args_class = get_model_classes(config)

        def build(args):
            model = model_class(args)
            if pipeline_group is not None:
                # Before the strict load: the stage's sanitize then drops the
                # other stages' block weights (never read, never referenced).
                model.model.pipeline(pipeline_group, split=pipeline_split)
            return model

        return build, args_class

    model, config = load_model_only(model_path, lazy=True, model_config=model_config, model_classes=model_classes)
    if tensor_group is not None:
        model.shard(tensor_group)
    evaluate_weights(model)

    tokenizer = load_tokenizer(
        model_path, tokenizer_config, eos_token_ids=config.get("eos_token_id", None)
    )
    # Every rank is ready before the first collective of generation.
    world = mx.distributed.init()
    if world.size() > 1:
        exit_on_lost_peer()
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world, stream=mx.cpu))
    if return_config:
        return model, tokenizer, config
    return model, tokenizer


def _local_path(path_or_repo, pipeline_layers=None) -> Path:
    """A local checkpoint directory; a Hugging Face repo is downloaded (for a
    pipeline stage, only the weight files with its blocks when the checkpoint
    has an index)."""
    path = str(path_or_repo)
    if path.startswith(("/", ".", "~")) or Path(path).is_dir():
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such model directory")
        return p
    meta = ["*.json", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jsonl", "*.jinja"]
    model_path = Path(_download(path, allow_patterns=meta))
    index = model_path / "model.safetensors.index.json"
    if pipeline_layers is not None and index.exists():
        _download(path, allow_patterns=sorted(_files_for(index, pipeline_layers)))
    else:
        _download(path)
    return model_path


def _files_for(index: Path, layers: range) -> set:
    """The weight files of ``index`` holding blocks in ``layers`` or non-block weights."""
    files = set()
    for key, f in json.loads(index.read_text())["weight_map"].items():
        i = block_index(key)
        if i is None or i in layers:
            files.add(f)
    return files
