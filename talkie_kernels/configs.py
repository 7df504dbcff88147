"""Talkie model configurations: the released model and the small ones that
tests and benchmarks share (one registry, no second copy).

Small configs keep head_dim 128 like the real model and shrink the rest.
Each value is a ``config.json``-style dict (keys as in the Hugging Face
checkpoint, ``model_type: "talkie"``).
"""

from __future__ import annotations


def _config(hidden, layers, heads, vocab, head_dim=128):
    # intermediate = round(8/3 · hidden / 128) · 128, as in the released model.
    return {
        "model_type": "talkie",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "head_dim": head_dim,
        "intermediate_size": round(8 / 3 * hidden / 128) * 128,
        "vocab_size": vocab,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 2048,
    }


CONFIGS = {
    # The released Talkie 13B (bf16 weights).
    "talkie-13b": _config(hidden=5120, layers=40, heads=40, vocab=65540),
    # The model-speed targets of `talkie-kernels bench`: 8 layers, hidden 512, 4 heads.
    "talkie-8l-512": _config(hidden=512, layers=8, heads=4, vocab=4096),
    # Small and fast: tests, `talkie-kernels bench --quick` and init-checkpoint's default.
    "talkie-2l-256": _config(hidden=256, layers=2, heads=2, vocab=512),
    # One block at the released model's width (hidden, heads, intermediate,
    # vocab): its decode reads 13B-sized projections and lm_head
    # (`talkie-kernels bench --block-13b`).
    "talkie-1l-13b-width": _config(hidden=5120, layers=1, heads=40, vocab=65540),
    # Four such blocks: a model-level decode row that the weights dominate
    # (~1.6 G parameters read per token; `--configs talkie-4l-13b-width`).
    "talkie-4l-13b-width": _config(hidden=5120, layers=4, heads=40, vocab=65540),
}

#: Configs at the released model's width: decode only in the bench (MLX's CPU
#: prefill at this width takes minutes).
WIDTH_13B = ("talkie-1l-13b-width", "talkie-4l-13b-width")

#: The per-op shapes of the real model, decode (L=1) and prefill (L=512).
TALKIE_HEADS, TALKIE_HEAD_DIM, TALKIE_HIDDEN = 40, 128, 5120
#: The MLP's width (swiglu's rows).
TALKIE_INTERMEDIATE = 13696
