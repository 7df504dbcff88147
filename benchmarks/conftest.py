"""pytest-benchmark suites: per-op and ``linear`` timings and model tokens/s.

Run with ``pytest benchmarks --benchmark-only`` (the default ``pytest`` run only
collects ``tests/``). Everything is built by ``talkie_kernels.bench.timing``,
``bench.models`` and ``bench.linear``, the same code ``talkie-kernels bench``
uses: inputs at Talkie's shapes, the baselines from ``talkie_kernels.reference``
and mlx-lm's plain model, the random-weight models (one config registry:
``talkie_kernels.configs``) and weights.

pytest-benchmark runs each test on its own, so implementations are not
interleaved here (``talkie-kernels bench`` interleaves them); compare within a
group (``--benchmark-group-by=group``, the default).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import talkie_kernels as tk
from talkie_kernels.bench import linear as BL
from talkie_kernels.bench import models as M
from talkie_kernels.bench import timing as B

#: Timed rounds per benchmark (after one warm-up round) and sample lengths:
#: the same defaults as ``talkie-kernels bench`` (bench.timing.DEFAULTS).
OP_ROUNDS = LINEAR_ROUNDS = B.DEFAULTS.rounds
MODEL_ROUNDS = {"prefill": B.DEFAULTS.min_rounds, "decode": B.DEFAULTS.rounds}
OP_SAMPLE_MS = B.DEFAULTS.op_sample_ms
LINEAR_SAMPLE_MS = B.DEFAULTS.linear_sample_ms
OP_DTYPE = B.parse_dtype(B.DEFAULTS.op_dtype)
#: Weight format of the models (a ``bench.models.WEIGHT_FORMATS`` name).
MODEL_FORMAT = "float32"


def pytest_benchmark_update_machine_info(config, machine_info):
    meta = B.metadata()
    machine_info["talkie_kernels"] = {k: meta[k] for k in ("mlx", "mlx_lm", "talkie_kernels", "git", "backend", "device", "metal_available")}


_op_setups: dict = {}
_models: dict = {}
_linear_setups: dict = {}


def _op_setup(op, phase):
    """Inputs and the chain length, shared by the three implementations of one (op, phase)."""
    key = (op, phase)
    if key not in _op_setups:
        state = B.op_inputs(op, B.op_shape(op, phase), OP_DTYPE)
        inner = B.calibrate_inner(B.op_step(op, "reference", phase), state, OP_SAMPLE_MS)
        _op_setups[key] = (state, inner)
    return _op_setups[key]


def _models_for(config):
    if config not in _models:
        _models.clear()  # one config's models in memory at a time
        mx.clear_cache()
        _models[config] = M.build_models(config, MODEL_FORMAT)
    return _models[config]


def _linear_setup(M, K, N, fmt):
    """x, the weight's rotation copies, linear's kwargs and the weight bytes; one weight in memory at a time."""
    key = (M, K, N, fmt)
    if key not in _linear_setups:
        _linear_setups.clear()
        mx.clear_cache()
        _, arrays, kwargs = next(BL.weights(K, N, [fmt]))
        _linear_setups[key] = (BL.activation(M, K), BL.rotation(arrays), kwargs, BL.nbytes(arrays))
    return _linear_setups[key]


def _info(benchmark, **kw):
    benchmark.extra_info.update(kw, backend=tk.backend(), device=str(mx.default_device()), mlx=mx.__version__)


def _percentiles(benchmark, per: float = 1.0) -> dict:
    """p20/p50/p80 in ms of the timed rounds, each divided by ``per``."""
    data = benchmark.stats.stats.data
    return {f"p{q}_ms": float(np.percentile(data, q)) * 1e3 / per for q in (20, 50, 80)}


@pytest.fixture
def op_bench(benchmark):
    """``op_bench(op, impl, phase)``: time chained calls of one op at Talkie's shape."""

    def run(op, impl, phase):
        state, inner = _op_setup(op, phase)
        shape = B.op_shape(op, phase)
        benchmark.group = f"{op} {phase} {'x'.join(map(str, shape))} {B.dtype_name(OP_DTYPE)} (x{inner} calls per round)"
        _info(benchmark, op=op, impl=impl, phase=phase, shape=list(shape), dtype=B.dtype_name(OP_DTYPE), calls_per_round=inner)
        try:
            step = B.op_step(op, impl, phase)
            B.op_thunk(step, state, 1)()  # fails here, clearly, if the op is unavailable
        except Exception as e:
            pytest.fail(f"{impl} {op} unavailable: {type(e).__name__}: {e}")
        benchmark.pedantic(B.op_thunk(step, state, inner), rounds=OP_ROUNDS, warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:  # per call, not per round
            benchmark.extra_info.update(_percentiles(benchmark, inner))

    return run


@pytest.fixture
def model_bench(benchmark):
    """``model_bench(config, prompt_len, impl, phase, method)``: prefill or decode tokens/s.

    ``method``: ``forward`` (prefill), ``step_loop`` (our synchronous greedy
    loop) or ``generate_step`` (mlx-lm's pipelined loop).
    """

    def run(config, prompt_len, impl, phase, method):
        models = _models_for(config)
        vocab = M.vocab_size(models["reference"])
        tokens = prompt_len if phase == "prefill" else M.DECODE_TOKENS
        benchmark.group = f"{config} {phase} {method} ({tokens} tokens, {MODEL_FORMAT})"
        _info(benchmark, model=config, impl=impl, phase=phase, method=method, tokens=tokens, dtype=MODEL_FORMAT,
              prompt_len=prompt_len if phase == "prefill" else M.DECODE_PROMPT)
        try:
            model = M.model_for(models, impl)
            if phase == "prefill":
                prepare = M.prefill_case(model, M.prompt_ids(vocab, prompt_len), impl)
            else:
                make = M.decode_case if method == "step_loop" else M.generate_step_case
                prepare = make(model, M.prompt_ids(vocab, M.DECODE_PROMPT), M.DECODE_TOKENS, impl)
        except B.NotApplicable as e:
            pytest.skip(str(e))
        except Exception as e:
            pytest.fail(f"{impl} unavailable: {type(e).__name__}: {e}")
        # setup (untimed): prefills the decode prompt the first time; decode
        # rounds then continue one sequence.
        benchmark.pedantic(lambda thunk: thunk(), setup=lambda: ((prepare(),), {}),
                           rounds=MODEL_ROUNDS[phase], warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:
            benchmark.extra_info.update(_percentiles(benchmark))
            benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median

    return run


@pytest.fixture
def linear_bench(benchmark):
    """``linear_bench(phase, M, K, N, fmt, impl)``: time ``x (M, K) @ W.T`` for W (N, K) in ``fmt``.

    ``fmt``: a float dtype or ``q4``/``q8`` (affine, group 64, bf16 scales). Calls
    cycle through copies of the weight that together overflow the last-level
    cache (``bench.linear.rotation``), as a decode step reads its weights.
    """

    def run(phase, M, K, N, fmt, impl):
        x, copies, kwargs, nbytes = _linear_setup(M, K, N, fmt)
        benchmark.group = f"linear {phase} ({M}, {K}) @ ({N}, {K}).T {fmt}"
        _info(benchmark, op="linear", impl=impl, phase=phase, shape=[M, K, N], dtype=fmt, weight_bytes=nbytes)
        try:
            calls = BL.calls_per_sample(impl, x, copies, kwargs, LINEAR_SAMPLE_MS)
        except Exception as e:
            pytest.fail(f"{impl} linear unavailable: {type(e).__name__}: {e}")
        benchmark.extra_info["calls_per_round"] = calls
        benchmark.pedantic(BL.thunk(impl, x, copies, kwargs, calls), rounds=LINEAR_ROUNDS, warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:  # per call, not per round
            benchmark.extra_info.update(_percentiles(benchmark, calls))
            per_call_s = benchmark.stats.stats.median / calls
            benchmark.extra_info["weight_gbps"] = nbytes / per_call_s / 1e9
            benchmark.extra_info["gflops"] = 2 * M * K * N / per_call_s / 1e9

    return run
