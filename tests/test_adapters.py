"""mlx-lm adapters on the fused model: ``talkie_kernels.load(path, adapter_path=...)``.

Adapters are made as mlx-lm's trainer makes them (``mlx_lm.lora``): mlx-lm's
own Talkie from ``mlx_lm.load``, ``linear_to_lora_layers`` with the config (or,
for ``full``, the last ``num_layers`` blocks unfrozen), random non-zero values
for every trainable parameter (``lora_b`` starts at zero), then
``adapters.safetensors`` = the trainable parameters and ``adapter_config.json``.
The expected outputs are mlx-lm's: ``mlx_lm.load(path, adapter_path=...)``.
"""

from __future__ import annotations

import importlib
import json

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

import talkie_kernels as tk
from talkie_kernels.cli import main
from talkie_kernels.configs import CONFIGS
from talkie_kernels.swap import sys_argv

import oracle as O
from checkpoints import write_checkpoint

CONFIG = CONFIGS["talkie-2l-256"]
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time there lived a king."
QV = ["attn.attn_query", "attn.attn_value"]


def greedy(model, prompt, n=16):
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1))
    return [int(t) for t, _ in steps]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("adapters") / "fp32", CONFIG, "float32", seed=0)


@pytest.fixture(scope="module")
def q4(base):
    # fp32 scales: mlx-lm's quantized matmul is exact, so tokens must agree.
    dst = base.parent / "q4"
    importlib.import_module("mlx_lm.convert").convert(str(base), str(dst), quantize=True, q_bits=4)
    return dst


@pytest.fixture(scope="module")
def ids(base):
    _, tokenizer = mlx_lm.load(str(base))
    return tokenizer.encode(PROMPT)


def save_adapter(model, dst, fine_tune_type, num_layers, lora_parameters):
    """What mlx-lm's trainer writes: the trainable parameters and the run's config."""
    dst.mkdir(parents=True)
    mx.save_safetensors(str(dst / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    config = {"fine_tune_type": fine_tune_type, "num_layers": num_layers,
              "lora_parameters": lora_parameters, "model": "talkie", "train": True}
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=4))
    return dst


def randomize_trainable(model, seed):
    """Every trainable parameter moved to random non-zero values (as after training)."""
    new = []
    for i, (name, p) in enumerate(tree_flatten(model.trainable_parameters())):
        noise = mx.random.normal(p.shape, key=mx.random.key(1000 * seed + i))
        if name.endswith("lora_b"):
            p = 0.05 * noise
        elif name.endswith(".m"):
            p = p * (1 + 0.2 * noise)
        elif not name.endswith("lora_a") and mx.issubdtype(p.dtype, mx.floating):
            # Full fine-tunes: weights (scales and biases of a quantized base) move by ~10%.
            p = p + 0.1 * noise * mx.abs(p).mean()
        new.append((name, p))
    model.update(tree_unflatten(new))


def plain_adapter(base_path, dst, fine_tune_type="lora", num_layers=2, keys=None, seed=0):
    """An adapter trained (randomly) on mlx-lm's plain Talkie."""
    model, _ = mlx_lm.load(str(base_path))
    model.freeze()
    lora = None
    if fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
    else:
        lora = {"rank": 4, "scale": 10.0, "dropout": 0.0}
        if keys is not None:
            lora["keys"] = keys
        mx.random.seed(seed)
        linear_to_lora_layers(model, num_layers, lora, use_dora=fine_tune_type == "dora")
    randomize_trainable(model, seed)
    return save_adapter(model, dst, fine_tune_type, num_layers, lora)


CASES = {
    # name: (base, fine_tune_type, num_layers, keys)
    "lora-all": ("base", "lora", 2, None),
    "lora-q-v-last-block": ("base", "lora", 1, QV),
    "lora-k-linear-resid": ("base", "lora", 2, ["attn.attn_key", "mlp.mlp_linear", "mlp.mlp_resid"]),
    "lora-gate-only": ("base", "lora", 2, ["mlp.mlp_gate"]),
    "dora-all": ("base", "dora", 2, None),
    "dora-q-v": ("base", "dora", 2, QV),
    "full-last-block": ("base", "full", 1, None),
    "q4-lora-all": ("q4", "lora", 2, None),
    "q4-lora-q-v": ("q4", "lora", 1, QV),
    "q4-dora-q-v": ("q4", "dora", 2, QV),
    "q4-full": ("q4", "full", 2, None),
}


@pytest.mark.parametrize("case", CASES)
def test_plain_model_adapter_gives_mlx_lm_outputs(request, tmp_path, ids, case):
    which, fine_tune_type, num_layers, keys = CASES[case]
    path = request.getfixturevalue(which)
    adapter = plain_adapter(path, tmp_path / case, fine_tune_type, num_layers, keys)
    model, _ = tk.load(path, adapter_path=str(adapter))
    plain, _ = mlx_lm.load(str(path), adapter_path=str(adapter))
    plain_base, _ = mlx_lm.load(str(path))
    x = mx.array([ids])
    want = plain(x)
    assert O.rel_err(plain_base(x), want) > O.ADAPTER_EFFECT  # the adapter changes the outputs
    assert O.rel_err(model(x), want) <= O.MODEL_FP32
    assert greedy(model, ids) == greedy(plain, ids)
    if fine_tune_type != "full":
        # One adapted layer per fused projection: mlx-lm's own LoRA/DoRA class.
        kind = DoRALinear if fine_tune_type == "dora" else LoRALinear
        qkv = model.layers[-1].attn.attn_qkv
        assert isinstance(qkv, kind) == (keys is None or any(k.startswith("attn.attn_") and "resid" not in k for k in keys))
        assert not isinstance(model.layers[0].attn.attn_qkv, kind) or num_layers == 2


def test_adapter_trained_on_fused_model_reloads(base, tmp_path, ids):
    # mlx_lm.tuner on the fused model itself: its keys and weights are the fused ones.
    model, _ = tk.load(base)
    model.freeze()
    mx.random.seed(3)
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, lora)
    randomize_trainable(model, 3)
    adapter = save_adapter(model, tmp_path / "fused", "lora", 2, lora)
    assert any(".attn_qkv.lora_a" in k for k in mx.load(str(adapter / "adapters.safetensors")))
    reloaded, _ = tk.load(base, adapter_path=str(adapter))
    x = mx.array([ids])
    assert O.rel_err(reloaded(x), model(x)) == 0.0


def test_plain_adapter_saved_from_fused_model_reloads(base, tmp_path, ids):
    # A plain-model adapter loaded into the fused model, trained on (saved) as
    # mlx-lm's trainer would: fused weights under the plain config's keys.
    adapter = plain_adapter(base, tmp_path / "plain", "dora", 2, QV, seed=4)
    model, _ = tk.load(base, adapter_path=str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    model.freeze()
    model.unfreeze(keys=["lora_a", "lora_b", "m"], strict=False)
    again = save_adapter(model, tmp_path / "again", "dora", 2, config["lora_parameters"])
    reloaded, _ = tk.load(base, adapter_path=str(again))
    x = mx.array([ids])
    assert O.rel_err(reloaded(x), model(x)) == 0.0


def test_adapter_errors_name_the_key(base, tmp_path):
    adapter = plain_adapter(base, tmp_path / "a", "lora", 1, QV)
    # The config says one block, the weights are for block 1: loading into two
    # blocks' worth of layers is fine; a key for a block without LoRA is not.
    weights = mx.load(str(adapter / "adapters.safetensors"))
    name = "model.blocks.1.attn.attn_value.lora_b"
    weights["model.blocks.0.attn.attn_query.lora_a"] = weights["model.blocks.1.attn.attn_query.lora_a"]
    weights[name] = weights[name][:, :100]
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    with pytest.raises(ValueError) as info:
        tk.load(base, adapter_path=str(adapter))
    message = str(info.value)
    assert "model.blocks.0.attn.attn_query.lora_a: not an adapter parameter" in message
    assert f"{name}: adapter shape (4, 100)" in message


def test_generate_adapter_path_as_mlx_lm(base, tmp_path, capsys):
    adapter = plain_adapter(base, tmp_path / "gen", "lora", 2, QV)
    args = ["--model", str(base), "--adapter-path", str(adapter), "--prompt", "Once upon a time",
            "--max-tokens", "12", "--temp", "0", "--verbose", "False"]
    assert main(["generate", *args]) == 0
    ours = capsys.readouterr().out
    with sys_argv("mlx_lm.generate", args):
        importlib.import_module("mlx_lm.generate").main()
    theirs = capsys.readouterr().out
    assert ours.strip() and ours == theirs
