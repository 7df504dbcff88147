"""The fused model's attention with every cache mlx-lm builds, against mlx-lm's plain model.

On the CPU the fused model's attention is ``tk.scaled_dot_product_attention``
(``tk.quantized_scaled_dot_product_attention`` for a ``QuantizedKVCache``),
reading mlx-lm's cache views in place. Greedy tokens (fp32) must equal the
plain model's with every cache ``make_prompt_cache`` gives: ``KVCache``,
``RotatingKVCache`` (``max_kv_size``), ``QuantizedKVCache`` (``kv_bits`` 4
and 8), and in ``batch_generate`` (``BatchKVCache``, ``BatchRotatingKVCache``:
left padding, per-sequence offsets, boolean masks) with prompts of very
different lengths. Each test also counts the op's calls, so a model that
bypassed it would fail.
"""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import batch_generate, generate_step

import talkie_kernels as tk
from talkie_kernels.configs import CONFIGS

from checkpoints import write_checkpoint

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time there lived a king."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("caches") / "fp32", CONFIGS["talkie-2l-256"], "float32", seed=3)
    model, tokenizer = tk.load(path)
    plain, _ = mlx_lm.load(str(path))
    return model, plain, tokenizer


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the fused model's calls of each attention op."""
    calls = {"dense": 0, "quantized": 0}
    for name, key in (("scaled_dot_product_attention", "dense"), ("quantized_scaled_dot_product_attention", "quantized")):
        real = getattr(tk, name)

        def counted(*args, _real=real, _key=key, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(tk, name, counted)
    return calls


def greedy(model, prompt, n, **kwargs):
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1), **kwargs)
    return [int(t) for t, _ in steps]


CACHES = {
    "KVCache": {},
    "RotatingKVCache": {"max_kv_size": 24},
    "QuantizedKVCache-4": {"kv_bits": 4, "kv_group_size": 64, "quantized_kv_start": 0},
    "QuantizedKVCache-8": {"kv_bits": 8, "kv_group_size": 32, "quantized_kv_start": 8},
}


@pytest.mark.parametrize("cache", CACHES, ids=CACHES)
def test_generate_equals_plain(models, op_calls, cache):
    model, plain, tokenizer = models
    prompt = tokenizer.encode(PROMPT * 2)  # longer than max_kv_size: the rotating cache wraps
    kwargs = CACHES[cache]
    got = greedy(model, prompt, 24, **kwargs)
    assert got == greedy(plain, prompt, 24, **kwargs)
    kind = "quantized" if "kv_bits" in kwargs else "dense"
    assert op_calls[kind] >= 24 * len(model.layers), op_calls


@pytest.mark.parametrize("max_kv_size", [None, 20], ids=["BatchKVCache", "BatchRotatingKVCache"])
def test_batch_generate_equals_plain(models, op_calls, max_kv_size):
    model, plain, tokenizer = models
    prompts = [tokenizer.encode(p) for p in ("Hi", PROMPT * 3, "Steam engines, railways and the telegraph")]
    kwargs = dict(max_tokens=16, return_token_ids=True, max_kv_size=max_kv_size)
    got = batch_generate(model, tokenizer, prompts, **kwargs)
    assert got.token_ids == batch_generate(plain, tokenizer, prompts, **kwargs).token_ids
    assert op_calls["dense"] > 0
