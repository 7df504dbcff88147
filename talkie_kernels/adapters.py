"""``load_adapters``: mlx-lm's adapters of either Talkie on the fused model.

mlx-lm's trainer writes adapters for the layers it finds; on mlx-lm's plain
Talkie those are attn_query/key/value and mlp_gate/mlp_linear apart, which the
fused model holds as one projection each (``checkpoint_keys.FUSED``). This
maps such adapters onto the fused projections; adapters trained on the fused
model load as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from .checkpoint_keys import FUSED, PARTS

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


def load_adapters(model, adapter_path):
    """``mlx_lm.utils.load_adapters`` for the fused model: mlx-lm's adapters of either Talkie.

    An adapter directory as mlx-lm's trainer writes it (``adapter_config.json``:
    ``fine_tune_type`` lora / dora / full, ``num_layers``, ``lora_parameters``
    with rank, scale, dropout and optional ``keys``; ``adapters.safetensors``),
    trained on mlx-lm's plain Talkie (attn_query/key/value, mlp_gate/mlp_linear
    apart) or on this model (fused names).

    LoRA and DoRA on parts of a fused projection become one layer of mlx-lm's
    own class on the fused projection: ``lora_a`` is the parts' ``lora_a`` side
    by side, ``lora_b`` block-diagonal (each part's rows write its own output
    rows, zeros elsewhere), so the fused output is the parts' outputs side by
    side, and a part without an adapter (``keys`` with q and v only) is left
    as it was. DoRA's magnitude ``m`` of such a part is its rows' norm: a factor
    of 1. A full fine-tune's part weights replace the fused weight's rows.
    """
    adapter_path = Path(adapter_path)
    if not adapter_path.exists():
        raise FileNotFoundError(f"The adapter path does not exist: {adapter_path}")
    config = json.loads((adapter_path / "adapter_config.json").read_text())
    fine_tune_type = config.get("fine_tune_type", "lora")
    if fine_tune_type != "full":
        lora = dict(config["lora_parameters"])
        if lora.get("keys") is not None:
            lora["keys"] = list(dict.fromkeys(PARTS.get(k, (k,))[0] for k in lora["keys"]))
        linear_to_lora_layers(
            model, config["num_layers"], lora, use_dora=(fine_tune_type == "dora")
        )
    errors = []
    weights, sources = _fuse_adapter(
        model, mx.load(str(adapter_path / "adapters.safetensors")), errors
    )
    params = dict(tree_flatten(model.parameters()))
    for name, w in weights.items():
        leaf = name.rsplit(".", 1)[-1]
        if name not in params or (fine_tune_type != "full" and leaf not in ADAPTER_LEAVES):
            errors.append(f"  {sources[name]}: not an adapter parameter in the model")
            continue
        want = params[name].shape
        # A LoRA's rank is its arrays' (fused parts add up theirs): only the
        # input dims of lora_a and the output dims of lora_b must match.
        dims = {"lora_a": 0, "lora_b": 1}.get(leaf) if fine_tune_type != "full" else None
        ok = w.shape == want if dims is None else (w.ndim == 2 and w.shape[dims] == want[dims])
        if not ok:
            errors.append(
                f"  {sources[name]}: adapter shape {tuple(w.shape)} does not match "
                f"model parameter shape {tuple(want)}"
            )
        elif leaf == "lora_a" and name[: -len("a")] + "b" in weights:
            b = weights[name[: -len("a")] + "b"]
            if b.ndim == 2 and b.shape[0] != w.shape[1]:
                errors.append(f"  {sources[name]}: rank {w.shape[1]} but its lora_b has {b.shape[0]}")
    if errors:
        raise ValueError(
            f"Adapter at {adapter_path} contains incompatible tensors:\n" + "\n".join(errors)
        )
    model.load_weights(list(weights.items()), strict=False)
    return model


def _fuse_adapter(model, weights: dict, errors: list):
    """Adapter weights of fused parts -> the fused layers' -> ``(weights, sources)``.

    ``sources`` maps each returned name to the adapter keys it came from (for
    messages). Keys of parts whose fused layer has no such parameter are kept
    as they are, for the caller to report.
    """
    out, sources, groups = {}, {}, {}
    for name, w in weights.items():
        module, leaf = name.rsplit(".", 1)
        m = re.fullmatch(r"(model\.blocks\.\d+\.)(.+)", module)
        if m and m.group(2) in PARTS:
            fused, i = PARTS[m.group(2)]
            groups.setdefault((m.group(1) + fused, fused), {}).setdefault(leaf, {})[i] = (name, w)
        else:
            out[name], sources[name] = w, name
    modules = dict(model.named_modules())
    for (target, fused), leaves in groups.items():
        n = len(FUSED[fused])
        layer = modules.get(target)
        for leaf, segs in leaves.items():
            segs = dict(sorted(segs.items()))
            current = layer.get(leaf) if layer is not None else None
            if not isinstance(current, mx.array):
                for name, w in segs.values():
                    out[name], sources[name] = w, name
                continue
            key = f"{target}.{leaf}"
            sources[key] = ", ".join(name for name, _ in segs.values())
            if leaf == "lora_a":
                out[key] = mx.concatenate([w for _, w in segs.values()], axis=1)
                continue
            axis = 1 if leaf == "lora_b" else 0
            rows = current.shape[axis] // n
            for name, w in segs.values():
                want = list(current.shape)
                want[axis] = rows
                if leaf == "lora_b":
                    want[0] = w.shape[0]  # its rank
                if list(w.shape) != want:
                    errors.append(
                        f"  {name}: adapter shape {tuple(w.shape)} does not match the "
                        f"model's part of {key}: {tuple(want)}"
                    )
            if errors:
                continue
            if leaf == "lora_b":
                # Block-diagonal: part i's rank rows write only output rows i.
                out[key] = mx.concatenate([
                    mx.pad(w, [(0, 0), (i * rows, (n - 1 - i) * rows)]) for i, (_, w) in segs.items()
                ])
                if set(segs) != set(leaves.get("lora_a", {})):
                    errors.append(f"  {sources[key]}: lora_a and lora_b given for different parts")
            else:
                # m (DoRA) or a full fine-tune's weights: the parts' rows replace the fused ones.
                # (Parts of another dtype promote the fused weight, as mixed checkpoints do.)
                out[key] = mx.concatenate([
                    segs[i][1] if i in segs else current[i * rows:(i + 1) * rows] for i in range(n)
                ])
    return out, sources
