"""Tokens/s of Talkie-shaped random-weight models: mlx-lm's plain model (eager and
mx.compile'd) vs the fused model, with the same weights.

Prefill: one prompt forward with a fresh mlx-lm KV cache. Decode: 32 greedy
steps per round, continuing one sequence after a 16-token prompt (prefilled
untimed), driven two ways: our
synchronous step loop (``mx.eval`` per token) and mlx-lm's own
``generate_step`` (``mx.async_eval`` pipelining, as ``mlx_lm.generate`` runs).
The compiled reference does not apply to decode with mlx-lm's KVCache and is
skipped with the reason.
Each benchmark stores ``tokens_per_s`` in ``extra_info``.
"""

import pytest

from talkie_kernels.bench.models import DEFAULT_MODELS, MODEL_WORKLOADS
from talkie_kernels.bench.timing import IMPLS


@pytest.mark.parametrize("phase, method", MODEL_WORKLOADS, ids=["prefill", "decode", "decode-generate_step"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config, prompt_len", DEFAULT_MODELS, ids=[c for c, _ in DEFAULT_MODELS])
def test_model(model_bench, config, prompt_len, impl, phase, method):
    model_bench(config, prompt_len, impl, phase, method)
