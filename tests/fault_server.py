"""``talkie-kernels server`` with two faults a request can trigger, for tests/test_server_faults.py.

* ``temperature`` ``SAMPLER_FAULT_TEMPERATURE``: the request's sampler raises
  when it samples (an error inside one request's part of a batch step);
* ``top_logprobs`` ``THREAD_FAULT_TOP_LOGPROBS``: formatting its top tokens
  raises in the generation loop itself (the thread dies and restarts).

Run as ``python fault_server.py <server flags>``.
"""

from __future__ import annotations

import importlib
import sys

from talkie_kernels import server
from talkie_kernels.server import sampling

SAMPLER_FAULT_TEMPERATURE = 0.123
THREAD_FAULT_TOP_LOGPROBS = 7

_mlx_server = importlib.import_module("mlx_lm.server")
_make_sampler, _format_top_logprobs = sampling._make_sampler, _mlx_server._format_top_logprobs


def faulty_sampler(args, tokenizer):
    sampler = _make_sampler(args, tokenizer)
    if args.sampling.temperature != SAMPLER_FAULT_TEMPERATURE:
        return sampler

    def fail(logprobs):
        raise RuntimeError("injected sampler fault")

    return fail


def faulty_top_logprobs(logprobs, top_n, tokenizer):
    if top_n == THREAD_FAULT_TOP_LOGPROBS:
        raise RuntimeError("injected generation-loop fault")
    return _format_top_logprobs(logprobs, top_n, tokenizer)


if __name__ == "__main__":
    sampling._make_sampler = faulty_sampler
    _mlx_server._format_top_logprobs = faulty_top_logprobs
    sys.exit(server.main(sys.argv[1:]))
