"""Loader and convert errors name what is at fault; what mlx-lm runs, the loader runs."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

import talkie_kernels as tk
from talkie_kernels.cli import main
from talkie_kernels.configs import CONFIGS
from talkie_kernels.convert import convert
from talkie_kernels.loader import CheckpointError

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
    got, want = np.array(model(ids)), np.array(plain(ids))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


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
