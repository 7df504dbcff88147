"""Loader and convert errors name what is at fault; what mlx-lm runs, the loader runs."""

from __future__ import annotations

import json
import re
import shutil

import mlx.core as mx
import mlx_lm
import pytest

import talkie_kernels as tk
from talkie_kernels.checkpoint import make_tokenizer
from talkie_kernels.cli import main
from talkie_kernels.configs import CONFIGS
from talkie_kernels.convert import convert
from talkie_kernels.loader import CheckpointError

import oracle as O
from checkpoints import edit_checkpoint, write_checkpoint

CONFIG = CONFIGS["talkie-2l-256"]
W = "model.blocks.0."


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("errors") / "fp32", CONFIG, "float32")


def load_error(base, tmp_path, **edit) -> str:
    bad = edit_checkpoint(base, tmp_path / "bad", **edit)
    with pytest.raises(CheckpointError) as info:
        tk.load(bad)
    message = str(info.value)
    assert str(bad) in message
    return message


@pytest.mark.parametrize("shape", [(256, 255), (200, 256)], ids=["columns", "rows"])
def test_misshaped_first_part_is_named(base, tmp_path, shape):
    # Not its healthy siblings (attn_key was blamed for a bad attn_query).
    message = load_error(base, tmp_path, replace={f"{W}attn.attn_query.weight": mx.zeros(shape)})
    assert f"{W}attn.attn_query.weight has {shape[1] if shape[0] == 256 else shape[0]}" in message
    assert "attn_key" not in message


def test_misshaped_mlp_part_is_named(base, tmp_path):
    message = load_error(base, tmp_path, replace={f"{W}mlp.mlp_linear.weight": mx.zeros((640, 128))})
    assert f"{W}mlp.mlp_linear.weight has 128 columns, expected 256" in message
    assert "mlp_gate" not in message


def test_lm_head_gain_of_two_values(base, tmp_path):
    message = load_error(base, tmp_path, replace={"lm_head_gain.w_g": mx.ones((2,))})
    assert "lm_head_gain.w_g has shape (2,), expected (1,)" in message


@pytest.mark.parametrize(
    "config, fields",
    [
        ({"head_dim": 64}, "head_dim 64"),
        ({"num_attention_heads": 4}, "num_attention_heads 4"),
        ({"num_attention_heads": 4, "head_dim": 64}, "num_attention_heads 4"),  # same q/k/v rows
        ({"intermediate_size": 512}, "intermediate_size 512"),
        ({"hidden_size": 128}, "hidden_size 128"),
        ({"vocab_size": 500}, "vocab_size"),
    ],
    ids=["head_dim", "heads", "heads-and-head_dim", "intermediate", "hidden", "vocab"],
)
def test_config_mismatch_names_the_field(base, tmp_path, config, fields):
    message = load_error(base, tmp_path, config=config)
    assert "config.json" in message and fields in message


def test_rms_norm_eps_zero_runs_as_in_mlx_lm(base, tmp_path):
    # mlx-lm's model passes the config's eps to mx.fast.rms_norm, which takes 0.
    path = edit_checkpoint(base, tmp_path / "eps0", config={"rms_norm_eps": 0})
    model, tokenizer = tk.load(path)
    plain, _ = mlx_lm.load(str(path))
    ids = mx.array([tokenizer.encode("Once upon a time there lived a king.")])
    assert O.rel_err(model(ids), plain(ids)) <= O.MODEL_FP32


def test_negative_rms_norm_eps_names_the_field(base, tmp_path):
    message = load_error(base, tmp_path, config={"rms_norm_eps": -1e-6})
    assert "rms_norm_eps" in message


def test_convert_refuses_talkie_mixed_with_another_mode(base, tmp_path, capsys):
    # mlx_lm.convert refuses its recipes with modes other than affine; talkie_mixed
    # would silently write affine: refused too, before anything is written.
    dst = tmp_path / "mxfp4"
    with pytest.raises(ValueError, match="talkie_mixed.*mxfp4"):
        convert(str(base), str(dst), quantize=True, q_mode="mxfp4", quant_predicate="talkie_mixed")
    with pytest.raises(SystemExit) as info:
        main(["convert", "--hf-path", str(base), "--mlx-path", str(dst), "-q",
              "--q-mode", "mxfp4", "--quant-predicate", "talkie_mixed"])
    assert info.value.code == 2
    assert "talkie_mixed" in capsys.readouterr().err
    assert not dst.exists()


# ---- found at load, before the weights are read, naming the file and the field --------


def raw_copy(base, tmp_path, config_text=None):
    dst = tmp_path / "bad"
    shutil.copytree(base, dst)
    if config_text is not None:
        (dst / "config.json").write_text(config_text)
    return dst


def config_with(base, **fields) -> str:
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(fields)
    return json.dumps(cfg)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": "256"}, "config.json: hidden_size must be a positive integer, got '256'"),
        ({"hidden_size": 256.0}, "hidden_size must be a positive integer, got 256.0"),
        ({"num_hidden_layers": None}, "num_hidden_layers must be a positive integer, got None"),
        ({"num_attention_heads": True}, "num_attention_heads must be a positive integer, got True"),
        ({"hidden_size": -256}, "hidden_size must be a positive integer, got -256"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
        ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a finite number, got '1e-6'"),
        ({"rope_theta": 0}, "rope_theta must be > 0, got 0"),
        ({"rope_theta": -1e6}, "rope_theta must be > 0"),
        ({"head_dim": 127}, "head_dim must be even"),
    ],
    ids=["string", "float", "null", "bool", "negative", "zero-vocab", "eps-string", "theta-0", "theta-neg",
         "odd-head_dim"],
)
def test_bad_config_field_is_named_before_weights_are_read(base, tmp_path, fields, message):
    bad = raw_copy(base, tmp_path, config_with(base, **fields))
    (bad / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        tk.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("text, message", [("[1, 2]", "a JSON list, expected an object"),
                                           ("{", "cannot read it as JSON")], ids=["list", "broken"])
def test_config_that_is_not_an_object(base, tmp_path, text, message):
    bad = raw_copy(base, tmp_path, text)
    with pytest.raises(CheckpointError, match=re.escape(f"{bad / 'config.json'}: {message}")):
        tk.load(bad)


def test_empty_safetensors_names_the_file(base, tmp_path):
    bad = raw_copy(base, tmp_path)
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"{bad / 'model.safetensors'}: not a safetensors file")):
        tk.load(bad)


def test_truncated_safetensors_names_the_tensor(base, tmp_path):
    # What a killed convert leaves behind.
    bad = raw_copy(base, tmp_path)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor \S+ ends at byte \d+ .* truncated"):
        tk.load(bad)


def test_shard_named_in_the_index_but_absent(base, tmp_path):
    bad = raw_copy(base, tmp_path)
    names = list(mx.load(str(bad / "model.safetensors")))
    (bad / "model.safetensors").rename(bad / "model-00001-of-00002.safetensors")
    index = {"weight_map": {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index\.json names model-00002-of-00002\.safetensors: no such file"):
        tk.load(bad)


def test_missing_tokenizer_files_are_named(base, tmp_path):
    # transformers said "You need to have sentencepiece or tiktoken installed".
    bad = raw_copy(base, tmp_path)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"no tokenizer \(none of tokenizer\.json, tokenizer\.model"):
        tk.load(bad)


def test_tokenizer_larger_than_the_embedding_is_refused(base, tmp_path):
    # Its ids past the embedding crashed inside MLX's take (rc 139), as in mlx-lm.
    bad = raw_copy(base, tmp_path)
    make_tokenizer(bad, CONFIG["vocab_size"] + 64)
    with pytest.raises(CheckpointError, match=rf"tokenizer has ids up to {CONFIG['vocab_size'] + 63}, but config"
                                              rf"\.json's vocab_size is {CONFIG['vocab_size']}"):
        tk.load(bad)
