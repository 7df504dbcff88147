"""Graph size of a model step: the primitive nodes of ``mx.export_to_dot``.

On the CPU at Talkie's small test sizes, per-op overhead dominates decode, so
the number of primitives per decoded token is a lever the bench measures
(target: the fused model ≤ 0.35× mlx-lm's plain model). Tests and benchmarks
share these.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile

import mlx.core as mx

_PRIMITIVE = re.compile(r'\[label ="([^"]*)", shape=rectangle\]')


def primitive_nodes(outputs) -> collections.Counter:
    """Counter of primitive names in the unevaluated graph that produces ``outputs``.

    Evaluated arrays are leaves, so evaluate every input first (weights, cache,
    token ids) to count one step only. A multi-output primitive counts once.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    fd, path = tempfile.mkstemp(suffix=".dot")
    os.close(fd)
    try:
        mx.export_to_dot(path, *outputs)
        with open(path) as f:
            return collections.Counter(_PRIMITIVE.findall(f.read()))
    finally:
        os.unlink(path)


def count_nodes(outputs) -> int:
    """Number of primitive nodes in the graph producing ``outputs`` (see ``primitive_nodes``)."""
    return sum(primitive_nodes(outputs).values())


def decode_step_nodes(model, prompt_len: int = 16, batch: int = 1) -> collections.Counter:
    """Primitives of one decode step (one new token per row) of an mlx-lm model.

    Prefills a fresh ``make_prompt_cache`` cache with ``prompt_len`` tokens and
    evaluates it, then builds (without evaluating) the logits of the next token.
    """
    from mlx_lm.models.cache import make_prompt_cache

    mx.eval(model.parameters())
    cache = make_prompt_cache(model)
    vocab = model.args.vocab_size
    prompt = mx.arange(batch * prompt_len).reshape(batch, prompt_len) % vocab
    mx.eval(model(prompt, cache=cache))
    mx.eval([c.state for c in cache])
    token = mx.zeros((batch, 1), dtype=mx.int32)
    mx.eval(token)
    return primitive_nodes(model(token, cache=cache))
