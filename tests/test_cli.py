"""``talkie-kernels generate | convert | init-checkpoint`` on a tiny random checkpoint, and the
commands' help texts (the server runs in tests/test_server.py)."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

import talkie_kernels as tk
from talkie_kernels.checkpoint import make_tokenizer
from talkie_kernels.cli import main
from talkie_kernels.configs import CONFIGS

import oracle as O
from checkpoints import write_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("cli") / "fp32", CONFIGS["talkie-2l-256"])


def test_generate_prints_text(ckpt, capsys):
    assert main(["generate", "--model", str(ckpt), "--prompt", "Hello there", "--max-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "==========" in out and "Generation: 6 tokens" in out


def test_generate_without_chat_template_and_quiet(ckpt, capsys):
    argv = ["generate", "--model", str(ckpt), "--prompt", "Once upon a time",
            "--max-tokens", "4", "--ignore-chat-template", "--verbose", "False", "--temp", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.strip() and "Generation:" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent"], "--model /nonexistent: no such directory"),
        (["--model", "no-such-dir"], "--model no-such-dir: no such directory (nor a Hugging Face repo id"),
        (["--model", "TMP"], "--model TMP: no config.json (not a checkpoint directory)"),
        (["--max-tokens", "0"], "argument --max-tokens: 0 is not >= 1 (or -1: no limit)"),
        (["--max-tokens", "-3"], "argument --max-tokens: -3 is not >= 1"),
        (["--seed", "-1"], "argument --seed: -1 is not an integer >= 0 and < 2**64"),
        (["--seed", str(2**64)], "argument --seed"),
        (["--temp", "-1"], "argument --temp: -1.0 is not a finite number >= 0"),
        (["--temp", "inf"], "argument --temp: inf is not a finite number"),
        (["--top-p", "2"], "argument --top-p: 2.0 is not in [0, 1]"),
        (["--min-p", "-0.5"], "argument --min-p: -0.5 is not in [0, 1]"),
        (["--top-k", "-1"], "argument --top-k: -1 is not >= 0"),
        (["--xtc-probability", "2"], "argument --xtc-probability: 2.0 is not in [0, 1]"),
        (["--xtc-threshold", "0.7"], "argument --xtc-threshold: 0.7 is not in [0, 0.5]"),
        (["--min-tokens-to-keep", "0"], "argument --min-tokens-to-keep: 0 is not >= 1"),
        (["--max-kv-size", "0"], "argument --max-kv-size: 0 is not >= 1"),
        (["--prefill-step-size", "0"], "argument --prefill-step-size: 0 is not >= 1"),
        (["--kv-bits", "7"], "argument --kv-bits: 7 is not one of 2, 3, 4, 5, 6, 8"),
        (["--kv-group-size", "7"], "argument --kv-group-size: 7 is not one of 32, 64, 128"),
        (["--quantized-kv-start", "-1"], "argument --quantized-kv-start: -1 is not >= 0"),
        (["--num-draft-tokens", "0"], "argument --num-draft-tokens: 0 is not >= 1"),
        (["--chat-template-config", "{bad"], "argument --chat-template-config: not JSON"),
        (["--chat-template-config", "[1]"], "argument --chat-template-config: must be a JSON object"),
        (["--image", "x.png"], "argument --image: Talkie is a text model"),
        (["--adapter-path", "/no/adapters"], "--adapter-path /no/adapters: no such directory"),
        (["--draft-model", "./missing"], "--draft-model ./missing: no such directory"),
        (["--prompt-cache-file", "/no/cache.safetensors"], "--prompt-cache-file /no/cache.safetensors: no such file"),
    ],
)
def test_generate_bad_arguments_are_argparse_errors(ckpt, tmp_path, argv, message, capsys):
    # Refused before any model loads (a load would print to stdout).
    argv = [str(tmp_path) if a == "TMP" else a for a in argv]
    message = message.replace("TMP", str(tmp_path))
    model = [] if "--model" in argv else ["--model", str(ckpt)]
    with pytest.raises(SystemExit) as info:
        main(["generate", *model, *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("usage: talkie-kernels generate") and message in err
    assert out == ""


@pytest.mark.parametrize("top_k", [CONFIGS["talkie-2l-256"]["vocab_size"] + 1, 100_000])
def test_generate_top_k_beyond_the_vocabulary_is_an_argparse_error(ckpt, top_k, capsys):
    # Known once the model has loaded: mlx-lm's sampler raised a ValueError traceback.
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", str(ckpt), "--prompt", "Hi", "--max-tokens", "2", "--top-k", str(top_k)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: talkie-kernels generate")
    assert f"argument --top-k: {top_k} is more than the model's vocabulary (512 ids)" in err


def test_generate_top_k_equal_to_the_vocabulary_samples_unfiltered(ckpt, capsys):
    argv = ["generate", "--model", str(ckpt), "--prompt", "Hi", "--max-tokens", "3", "--top-k", "512",
            "--temp", "1", "--seed", "0"]
    assert main(argv) == 0
    assert "Generation: 3 tokens" in capsys.readouterr().out


def test_generate_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", "hi"])
    assert info.value.code == 2  # --model is required
    assert "--model is required" in capsys.readouterr().err


def _help(command, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


@pytest.mark.parametrize("command", ["generate", "server", "convert", "init-checkpoint"])
def test_help_names_the_command_and_talkie(command, capsys):
    text = _help(command, capsys)
    assert text.startswith(f"usage: talkie-kernels {command} ")
    assert "Talkie checkpoint" in text
    assert "Llama" not in text  # mlx-lm's default model is not ours
    for mlx_lm_description in ("LLM inference script", "MLX Http Server.", "Convert Hugging Face model to MLX"):
        assert mlx_lm_description not in text
    if command != "init-checkpoint":
        assert "what differs" in text and "mlx-lm 0.32.2" in text


def test_help_flags_kept(capsys):
    assert "--max-tokens" in _help("generate", capsys)
    assert "--port" in _help("server", capsys) and "--chat-template" in _help("server", capsys)
    assert "--q-bits" in _help("convert", capsys)
    import mlx_lm.server as mlx_server

    import argparse

    assert mlx_server.argparse is argparse  # the server's parser swap is undone
    from talkie_kernels.server import shutdown, supervision

    assert mlx_server.ResponseGenerator is not supervision.TalkieResponseGenerator  # and its serving swap
    assert mlx_server._run_http_server is not shutdown.run_http_server


def test_help_says_how_commands_run_under_mlx_launch(capsys):
    text = _help("generate", capsys)
    assert "--pipeline" in text and "Under mlx.launch" in text and "only rank 0 prints" in text
    assert "--pipeline" in _help("bench", capsys)
    assert "under mlx.launch it refuses to start, exit code 2" in _help("server", capsys)


def test_usage_lists_init_checkpoint(capsys):
    assert main([]) == 0
    assert "init-checkpoint" in capsys.readouterr().out


def test_init_checkpoint_writes_a_loadable_checkpoint(tmp_path, capsys):
    dst = tmp_path / "tiny"
    assert main(["init-checkpoint", str(dst)]) == 0
    out = capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert str(dst / name) in out
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "talkie"
    assert {k: config[k] for k in CONFIGS["talkie-2l-256"]} == CONFIGS["talkie-2l-256"]
    weights = mx.load(str(dst / "model.safetensors"))
    assert weights["lm_head"].dtype == mx.float32 and "lm_head_gain.w_g" in weights
    assert abs(weights["lm_head_gain.w_g"].item() - 1.0) > 0.4  # gains away from init

    tokens = mx.array([[5, 17, 42]])
    ref, ref_tok = mlx_lm.load(str(dst))
    fused, tok = tk.load(dst)
    assert tok.encode("Hello") == ref_tok.encode("Hello")
    a, b = ref(tokens), fused(tokens)
    assert a.shape == b.shape == (1, 3, config["vocab_size"])
    assert mx.allclose(a, b, rtol=1e-4, atol=1e-4).item()
    assert main(["generate", "--model", str(dst), "--prompt", "Hi", "--max-tokens", "3"]) == 0


@pytest.mark.parametrize("name", ["talkie-2l-256", "talkie-8l-512"])
def test_init_checkpoint_tokenizer_covers_the_vocabulary(tmp_path, name):
    # It covered 384 ids of 512 / 4096: most generated ids decoded to nothing.
    vocab = CONFIGS[name]["vocab_size"]
    tokenizer = make_tokenizer(tmp_path, vocab)
    texts = [tokenizer.decode([i], skip_special_tokens=False) for i in range(vocab)]
    assert tokenizer.get_vocab_size() == vocab
    assert all(texts) and len(set(texts)) == vocab
    ascii_chars = [chr(b) for b in range(128)]  # each ASCII character is one id of its own
    assert [tokenizer.decode(tokenizer.encode(c).ids) for c in ascii_chars] == ascii_chars
    assert all(len(tokenizer.encode(c).ids) == 1 for c in ascii_chars)


def test_init_checkpoint_says_its_size_and_refuses_a_full_disk(tmp_path, capsys, monkeypatch):
    import shutil

    from talkie_kernels import checkpoint

    size = checkpoint.safetensors_size(checkpoint.random_weights(CONFIGS["talkie-13b"], 0, "bfloat16"))
    assert size > 2 * checkpoint.num_parameters(CONFIGS["talkie-13b"])  # header + 2 bytes a weight
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=size - 1))
    with pytest.raises(SystemExit) as info:
        main(["init-checkpoint", str(tmp_path / "big"), "--config", "talkie-13b", "--dtype", "bfloat16"])
    assert info.value.code == 2
    assert f"the weights take {checkpoint._human_bytes(size)}, but its file system has" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
    assert main(["init-checkpoint", str(tmp_path / "small")]) == 0
    small = checkpoint.safetensors_size(checkpoint.random_weights(CONFIGS["talkie-2l-256"]))
    assert f"{checkpoint._human_bytes(small)} of weights, written one tensor at a time" in capsys.readouterr().out
    assert (tmp_path / "small" / "model.safetensors").stat().st_size == small


def test_init_checkpoint_options(tmp_path, capsys):
    dst = tmp_path / "bf16"
    argv = ["init-checkpoint", str(dst), "--config", "talkie-8l-512", "--dtype", "bfloat16", "--seed", "3"]
    assert main(argv) == 0
    config = json.loads((dst / "config.json").read_text())
    assert config["num_hidden_layers"] == 8 and config["torch_dtype"] == "bfloat16"
    weights = mx.load(str(dst / "model.safetensors"))
    assert all(w.dtype == mx.bfloat16 for w in weights.values())
    first = weights["model.embed.weight"]
    # Written again over its own output (allowed), with another seed: other weights.
    assert main(["init-checkpoint", str(dst), "--config", "talkie-8l-512", "--seed", "4"]) == 0
    assert not mx.array_equal(mx.load(str(dst / "model.safetensors"))["model.embed.weight"], first).item()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["DST", "--config", "talkie-70b"], "invalid choice: 'talkie-70b' (choose from 'talkie-13b', 'talkie-8l-512'"),
        (["DST", "--dtype", "float64"], "invalid choice: 'float64'"),
        (["DST", "--seed", "x"], "invalid int value"),
        (["DST", "--seed", "-1"], "argument --seed: -1 is not an integer >= 0 and < 2**64"),
        (["DST", "--seed", str(2**64)], f"argument --seed: {2**64} is not an integer >= 0"),
        (["/proc/x"], "DST /proc/x: cannot be created"),
        (["/proc/x/y"], "DST /proc/x/y: cannot be created"),
        (["FILE/x"], "/x: cannot be created (Not a directory)"),
        (["FILE"], "exists and is not a directory"),
    ],
)
def test_init_checkpoint_bad_arguments(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("")
    subs = {"DST": str(tmp_path / "x"), "FILE": str(tmp_path / "file")}
    argv = [a.replace("DST", subs["DST"]).replace("FILE", subs["FILE"]) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(["init-checkpoint", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: talkie-kernels init-checkpoint") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_init_checkpoint_missing_destination(capsys):
    with pytest.raises(SystemExit) as info:
        main(["init-checkpoint"])
    assert info.value.code == 2
    assert "DST" in capsys.readouterr().err


def test_init_checkpoint_refuses_a_directory_with_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        main(["init-checkpoint", str(tmp_path)])
    assert info.value.code == 2
    assert "is not empty (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_convert_quantizes_lm_head(ckpt, tmp_path):
    dst = tmp_path / "q8"
    argv = ["convert", "--hf-path", str(ckpt), "--mlx-path", str(dst), "-q", "--q-bits", "8",
            "--q-group-size", "64"]
    assert main(argv) == 0
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    model, _ = tk.load(dst)
    assert isinstance(model.lm_head, nn.QuantizedLinear) and model.lm_head.bits == 8


def test_convert_talkie_mixed_recipe(ckpt, tmp_path):
    dst = tmp_path / "mixed"
    argv = ["convert", "--hf-path", str(ckpt), "--mlx-path", str(dst), "-q",
            "--quant-predicate", "talkie_mixed"]
    assert main(argv) == 0
    model, _ = tk.load(dst)
    assert isinstance(model.model.embed, nn.Embedding)  # left unquantized
    assert model.lm_head.bits == 8
    # 2 layers: blocks 14·2//40 = 0 and 37·2//40 = 38·2//40 = 1 keep 8 bits.
    assert model.layers[0].attn.attn_qkv.bits == 8
    assert model.layers[1].mlp.mlp_resid.bits == 8


@pytest.mark.parametrize("recipe", [[], ["--quant-predicate", "talkie_mixed"]], ids=["q8", "talkie_mixed"])
def test_convert_requantizes_a_quantized_checkpoint(ckpt, tmp_path, recipe, capsys):
    # mlx-lm printed "Quantized model" and wrote the 4-bit weights unchanged.
    q4, dst = tmp_path / "q4", tmp_path / "again"
    assert main(["convert", "--hf-path", str(ckpt), "--mlx-path", str(q4), "-q", "--q-bits", "4"]) == 0
    bits = ["--q-bits", "8"] if not recipe else ["--q-bits", "6"]
    assert main(["convert", "--hf-path", str(q4), "--mlx-path", str(dst), "-q", *bits, *recipe]) == 0
    assert "quantized (4 bits, group size 64, affine): dequantizing it" in capsys.readouterr().out
    model, _ = tk.load(dst)
    four_bit, _ = tk.load(q4)
    if not recipe:
        assert json.loads((dst / "config.json").read_text())["quantization"]["bits"] == 8
        layers = [model.lm_head, model.layers[0].attn.attn_qkv, model.layers[1].mlp.mlp_resid]
        assert all(isinstance(m, nn.QuantizedLinear) and m.bits == 8 for m in layers)
    else:
        assert isinstance(model.model.embed, nn.Embedding)  # the recipe leaves it unquantized
        assert model.lm_head.bits == 8 and model.layers[0].mlp.mlp_resid.bits == 8
    # The 4-bit model's weights rounded again (measured: logits within 5e-3 of the
    # 4-bit model's at 8 bits, 3e-3 with the recipe; 0.15 from the fp32 original's).
    tokens = mx.array([[5, 17, 42, 300]])
    want, got = four_bit(tokens), model(tokens)
    assert O.rel_err(got, want) < O.REQUANTIZED


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hf-path", "/nonexistent"], "--hf-path /nonexistent: no such directory"),
        (["--hf-path", "TMP"], "--hf-path TMP: no config.json"),
        (["--mlx-path", "CKPT"], "--mlx-path CKPT already exists"),
        (["--mlx-path", "/proc/x"], "--mlx-path /proc/x: cannot be created"),
        (["-q", "--q-group-size", "7"], "group size 7 and 4 bits: MLX cannot quantize with these"),
        (["-q", "--q-group-size", "0"], "argument --q-group-size: 0 is not >= 1"),
        (["-q", "--q-bits", "7"], "group size 64 and 7 bits: MLX cannot quantize"),
        (["-q", "--q-mode", "mxfp4", "--q-group-size", "64"], "--q-mode mxfp4, group size 64"),
        (["-q", "--quant-predicate", "talkie_mixed", "--q-group-size", "16"], "group size 16 and 4 bits"),
        (["-q", "--quant-predicate", "talkie_mixed", "--q-mode", "mxfp4"], "talkie_mixed is an affine recipe"),
        (["-q", "--quant-predicate", "mixed_3_6", "--q-mode", "nvfp4"], "mlx-lm's recipes quantize with --q-mode affine only"),
        (["-q", "-d"], "-q/--quantize and -d/--dequantize: choose one"),
        (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    ],
)
def test_convert_bad_arguments_are_argparse_errors(ckpt, tmp_path, argv, message, capsys):
    subs = {"TMP": str(tmp_path), "CKPT": str(ckpt)}
    argv = [subs.get(a, a) for a in argv]
    for k, v in subs.items():
        message = message.replace(k, v)
    hf = [] if "--hf-path" in argv else ["--hf-path", str(ckpt)]
    dst = [] if "--mlx-path" in argv else ["--mlx-path", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main(["convert", *hf, *dst, *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("usage: talkie-kernels convert") and message in err
    assert out == "" and not (tmp_path / "out").exists()


def test_talkie_mixed_predicate_on_40_layers():
    from talkie_kernels.convert import talkie_mixed_predicate

    pred = talkie_mixed_predicate(40)
    bits = {i: pred(f"model.blocks.{i}.attn.attn_qkv", None)["bits"] for i in range(40)}
    assert {i for i, b in bits.items() if b == 8} == {14, 37, 38}
    assert set(bits.values()) == {4, 8}
    assert pred("model.embed", None) is False and pred("lm_head", None)["bits"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "99999"], "argument --port: 99999 is not a port in [0, 65535]"),
        (["--port", "-1"], "argument --port: -1 is not a port"),
        (["--port", "x"], "argument --port: invalid int value"),
        (["--max-tokens", "0"], "argument --max-tokens: 0 is not >= 1"),
        (["--decode-concurrency", "0"], "argument --decode-concurrency: 0 is not >= 1"),
        (["--prefill-step-size", "-4"], "argument --prefill-step-size"),
        (["--temp", "nan"], "argument --temp: nan is not a finite number >= 0"),
        (["--top-p", "2"], "argument --top-p: 2.0 is not in [0, 1]"),
        (["--kv-bits", "7"], "argument --kv-bits: 7 is not one of 2, 3, 4, 5, 6, 8"),
        (["--chat-template-args", "[1]"], "--chat-template-args: must be a JSON object"),
        (["--chat-template-args", "{bad"], "argument --chat-template-args: invalid loads value"),
        (["--log-level", "LOUD"], "argument --log-level: invalid choice"),
        (["--model", "/no/such/checkpoint"], "--model /no/such/checkpoint: no such directory"),
        (["--draft-model", "./missing"], "--draft-model ./missing: no such directory"),
        (["--adapter-path", "/no/adapters"], "--adapter-path /no/adapters: no such directory"),
    ],
)
def test_server_bad_arguments_are_argparse_errors(argv, message, capsys):
    # Parsed before anything starts: no server, no model load.
    with pytest.raises(SystemExit) as info:
        main(["server", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: talkie-kernels server") and message in err


def test_server_model_directory_without_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["server", "--model", str(tmp_path)])
    assert info.value.code == 2
    assert "no config.json (not a checkpoint directory)" in capsys.readouterr().err
