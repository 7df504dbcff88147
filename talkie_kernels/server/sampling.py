"""Each request's sampler and logits processors, guarded: a failure fails that request alone.

mlx-lm 0.32.2 builds them per request (``_make_sampler``,
``_make_logits_processors``) and calls them inside the batch step all
requests share: one that raised there killed the generation thread, and
every request it held failed. ``request_sampler`` and ``request_logits_processors``
(swapped in for mlx-lm's by ``robust_serving``) build mlx-lm's, and catch a
failure in building or calling one: the request fails with it (its
``RequestQueue.fail``, a 500) and a stand-in completes the step (greedy for
the sampler, the logits unchanged for a processor). Arguments without a
queue (not ``queueing.QueuedArguments``) get mlx-lm's, unguarded.
"""

from __future__ import annotations

import importlib

import mlx.core as mx

_mlx_server = importlib.import_module("mlx_lm.server")
# Module globals, not looked up on mlx_lm.server at each call: mlx-lm's names
# hold these guards while the server runs.
_make_sampler, _make_logits_processors = _mlx_server._make_sampler, _mlx_server._make_logits_processors


def _guard(q, fn, fallback):
    """``fn`` for request ``q``: once it (or making it) raised, ``q`` fails and ``fallback``
    stands in, so the batch step its neighbours share completes."""
    if q is None:
        return fn

    def call(*args):
        if q.failure is None:
            try:
                return fn(*args)
            except Exception as e:
                q.fail(e)
        return fallback(*args)

    return call


def request_sampler(args, tokenizer):
    """mlx-lm's ``_make_sampler`` whose failures fail the request alone (greedy stands in)."""
    q = getattr(args, "queue", None)
    try:
        sampler = _make_sampler(args, tokenizer)
    except Exception as e:
        if q is None:
            raise
        q.fail(e)
        sampler = None
    return _guard(q, sampler, lambda logprobs: mx.argmax(logprobs, axis=-1))


def request_logits_processors(args):
    """mlx-lm's ``_make_logits_processors`` whose failures fail the request alone."""
    q = getattr(args, "queue", None)
    try:
        processors = _make_logits_processors(args)
    except Exception as e:
        if q is None:
            raise
        q.fail(e)
        return []
    return [_guard(q, p, lambda tokens, logits: logits) for p in processors]
