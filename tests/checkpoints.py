"""Tiny random-weight Talkie checkpoints in the Hugging Face layout (as mlx-lm loads them).

Tests and benchmarks build their models here: no model downloads exist on the
machines this project runs on. A checkpoint is a directory with

* ``config.json`` (``model_type: "talkie"``, the keys of ``talkie_kernels.configs``);
* ``model.safetensors`` with the HF keys (``lm_head`` bare, ``lm_head_gain.w_g``);
* ``tokenizer.json`` + ``tokenizer_config.json``: a byte-level BPE trained with
  the ``tokenizers`` library on a fixed corpus, with a chat template, so
  ``transformers.AutoTokenizer`` (and so ``mlx_lm.load``) loads it offline.

Gains are drawn away from their init values so each one matters: ``attn_gain``
and ``mlp_gain`` from U(0.3, 1.5), ``embed_skip`` from ±U(0.2, 0.8),
``head_g`` from U(0.5, 2.0), ``lm_head_gain`` from U(1.5, 3.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|user|>", "<|assistant|>", "<|system|>"]

#: A plain-text chat template (jinja) in the shape transformers expects.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "In the year of our Lord eighteen hundred and ninety, the telegraph reached the valley.",
    "Hello, world! How are you today? I am well, thank you kindly.",
    "Talkie is a language model trained on text written before 1931.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 1931.",
    "Once upon a time there lived a king who had three daughters.",
    "Steam engines, railways, and the wireless changed the world.",
]


def make_tokenizer(path, vocab_size: int = 384):
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``path``.

    Returns the ``tokenizers.Tokenizer``. ``vocab_size`` includes the 256
    byte-level symbols and the special tokens; it must not exceed the model's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "unk_token": None,
        "pad_token": EOS,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tok


def random_weights(config: dict, seed: int = 0) -> dict:
    """HF-layout float32 weights (numpy) for ``config``, gains away from init."""
    rng = np.random.default_rng(seed)
    dim = config["hidden_size"]
    heads, head_dim = config["num_attention_heads"], config["head_dim"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    proj = heads * head_dim

    def linear(out_dim, in_dim):
        return rng.normal(0.0, in_dim**-0.5, (out_dim, in_dim)).astype(np.float32)

    def uniform(lo, hi, shape=(1,)):
        return rng.uniform(lo, hi, shape).astype(np.float32)

    w = {"model.embed.weight": rng.normal(0.0, 1.0, (vocab, dim)).astype(np.float32)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.blocks.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attn.attn_{name}.weight"] = linear(proj, dim)
        w[f"{p}attn.attn_resid.weight"] = linear(dim, proj)
        w[f"{p}attn.head_gain.head_g"] = uniform(0.5, 2.0, (heads,))
        w[f"{p}attn_gain.a_g"] = uniform(0.3, 1.5)
        w[f"{p}mlp.mlp_gate.weight"] = linear(inter, dim)
        w[f"{p}mlp.mlp_linear.weight"] = linear(inter, dim)
        w[f"{p}mlp.mlp_resid.weight"] = linear(dim, inter)
        w[f"{p}mlp_gain.a_g"] = uniform(0.3, 1.5)
        w[f"{p}embed_skip.a_g"] = uniform(0.2, 0.8) * rng.choice([-1.0, 1.0])
    w["lm_head"] = linear(vocab, dim)
    w["lm_head_gain.w_g"] = uniform(1.5, 3.0)
    return w


def write_checkpoint(path, config: dict, dtype: str = "float32", seed: int = 0) -> Path:
    """Write a random-weight Talkie checkpoint (HF layout) + tokenizer into ``path``.

    ``config`` is a ``talkie_kernels.configs.CONFIGS`` entry (or any dict with
    its keys); ``dtype`` one of float32, float16, bfloat16. Returns the path.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path, vocab_size=min(384, config["vocab_size"]))
    weights = random_weights(config, seed)
    mx_dtype = getattr(mx, dtype)
    mx.save_safetensors(
        str(path / "model.safetensors"),
        {k: mx.array(v).astype(mx_dtype) for k, v in weights.items()},
        metadata={"format": "pt"},
    )
    full = dict(config)
    full.update(
        architectures=["TalkieForCausalLM"],
        torch_dtype=dtype,
        eos_token_id=tok.token_to_id(EOS),
    )
    (path / "config.json").write_text(json.dumps(full, indent=2))
    return path


def edit_checkpoint(src, dst, *, drop=(), add=None, replace=None, config=None) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with weights dropped / added / replaced
    and config keys overridden: the bad checkpoints of the loader tests."""
    import shutil

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
