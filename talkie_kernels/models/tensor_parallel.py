"""Whether Talkie splits ``n`` ways by heads (tensor parallelism, ``Model.shard``).

``Model.shard`` gives every rank ``H / n`` heads and ``intermediate / n`` MLP
columns; ``attn_resid`` and ``mlp_resid`` are split by their input columns.
A quantized weight split by columns keeps whole quantization groups only when
``(K / n) % group_size == 0``. One check says whether all of that holds, asked
at two moments: from a config.json before any weight is read
(``config_layers``, for the loader's ``sharded_load``) and from the model's
own layers before ``Model.shard`` changes anything (``model_layers``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Tuple

#: What the check needs of a layer split by its input columns: its module path,
#: its input columns, its quantization group size (None: not quantized) and
#: anything else that stops it being split (or None).
SplitLayer = Tuple[str, int, Optional[int], Optional[str]]


def check_tensor_parallel(n: int, heads: int, intermediate_size: int, layers: Iterable[SplitLayer]) -> None:
    """Raise ``ValueError`` naming what does not split ``n`` ways: the heads, the
    MLP width, then (only if both split) each of ``layers``."""
    if n <= 1:
        return
    problems = []
    if heads % n:
        problems.append(f"{heads} attention heads do not split evenly across {n} ranks")
    if intermediate_size % n:
        problems.append(f"intermediate_size {intermediate_size} does not split evenly across {n} ranks")
    if not problems:
        for path, k, group_size, problem in layers:
            if problem is not None:
                problems.append(f"{path} {problem}")
            if group_size is not None and (k // n) % group_size:
                problems.append(
                    f"{path} is quantized with group_size {group_size} and its {k} input columns "
                    f"split {n} ways give {k // n} columns per rank, not a multiple of {group_size} "
                    f"(quantize with a group size dividing {k // n}, or use pipeline parallelism)"
                )
    if problems:
        raise ValueError(
            f"cannot shard Talkie across {n} ranks (tensor parallel): " + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )


def config_layers(config: dict) -> Iterator[SplitLayer]:
    """The layers split by columns as ``mlx_lm.utils.load_model`` will build them from
    ``config`` (a config.json dict, its ``quantization`` entry included)."""
    heads, head_dim, inter = config["num_attention_heads"], config["head_dim"], config["intermediate_size"]
    for i in range(config["num_hidden_layers"]):
        for path, k in (
            (f"model.blocks.{i}.attn.attn_resid", heads * head_dim),
            (f"model.blocks.{i}.mlp.mlp_resid", inter),
        ):
            q = _layer_quantization(config, path)
            yield path, k, None if q is None else q["group_size"], None


def _layer_quantization(config: dict, path: str) -> Optional[dict]:
    """The quantization ``mlx_lm.utils.load_model`` will give the layer at ``path``
    according to ``config`` (its per-layer entries first): a dict or None."""
    q = config.get("quantization")
    if q is None:
        legacy = config.get("quantization_config") or {}
        if legacy.get("quant_method") in ("mxfp4", "mxfp8"):
            return {"group_size": 32, "bits": 4 if legacy["quant_method"] == "mxfp4" else 8}
        return None
    if path in q:
        return q[path] if isinstance(q[path], dict) else None
    return q


def model_layers(model) -> Iterator[SplitLayer]:
    """The layers split by columns of a Talkie ``Model`` as they are now (a block
    already sharded is reported as such, its layers not looked at)."""
    heads = model.args.num_attention_heads
    for i, block in enumerate(model.model.blocks):
        if block is None:
            continue
        if block.attn.n_heads != heads:
            yield f"model.blocks.{i}.attn", 0, None, "is already sharded"
            continue
        for path, layer in (
            (f"model.blocks.{i}.attn.attn_resid", block.attn.attn_resid),
            (f"model.blocks.{i}.mlp.mlp_resid", block.mlp.mlp_resid),
        ):
            bias = "has a bias (a sharded-to-all layer cannot)" if "bias" in layer else None
            if "scales" in layer:  # quantized: 32 // bits columns per packed uint32
                yield path, layer["weight"].shape[-1] * 32 // layer.bits, layer.group_size, bias
            else:
                yield path, layer["weight"].shape[-1], None, bias
