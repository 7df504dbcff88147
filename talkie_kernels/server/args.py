"""The server's command line: mlx-lm's parser with this command's words and checks.

mlx-lm 0.32.2 builds its parser inside ``mlx_lm.server.main``;
``talkie_arg_parser`` swaps the ``argparse`` that module sees for one whose
``ArgumentParser`` carries this command's prog and description and Talkie's
``--model`` / ``--draft-model`` help (flags and defaults untouched), and whose
``parse_args`` refuses what cannot serve (``check_server_args``) with a usage
error, exit code 2. ``distributed_refusal`` is what ``main`` writes instead of
serving when started under ``mlx.launch``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import types

from ..arg_checks import local_path_problem
from ..swap import swapped

PROG = "talkie-kernels server"
DESCRIPTION = (
    "mlx-lm's OpenAI-compatible HTTP server (mlx_lm.server, mlx-lm 0.32.2) on the fused "
    "Talkie model, with the same flags and endpoints; what differs: every model (--model, "
    "--draft-model, a model named in a request) loads with talkie_kernels.load, so it "
    "must be a Talkie checkpoint; it runs in one process (under mlx.launch it "
    "refuses to start, exit code 2: run generate there); invalid requests (an empty prompt, ...) get a 400 "
    "and the server keeps serving; SIGINT/SIGTERM exit with code 0, answering the "
    "requests in flight with what they generated (finish_reason \"abort\"); a request "
    "whose client disconnected stops generating at the next decode step (its prompt at "
    "the next chunk); a request that fails while it is generated fails alone (a 500); a "
    "request arriving during another's long prompt is served between its chunks. "
    "`talkie-kernels init-checkpoint DIR` writes a small random-weight one to try."
)
HELP = {
    "--model": "A Talkie checkpoint: a local directory or a Hugging Face repo "
    "(else the model named in each request).",
    "--draft-model": "A Talkie checkpoint for speculative decoding.",
}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.update(prog=PROG, description=DESCRIPTION)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        for name in names:
            kwargs["help"] = HELP.get(name, kwargs.get("help"))
        return super().add_argument(*names, **kwargs)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        problem = check_server_args(ns)
        if problem:
            self.error(problem)
        return ns


def check_server_args(ns) -> str | None:
    """Why parsed server flags cannot serve (for ``parser.error``), or None.

    mlx-lm's parser takes any int or float: a bad port was a traceback at bind,
    a missing --model killed the generation thread (the server then answered
    503 forever), --max-tokens 0 made every request without max_tokens a 400.
    """
    rules = [
        ("--port", ns.port, 0 <= ns.port <= 65535, "a port in [0, 65535]"),
        ("--max-tokens", ns.max_tokens, ns.max_tokens >= 1, ">= 1"),
        ("--num-draft-tokens", ns.num_draft_tokens, ns.num_draft_tokens >= 1, ">= 1"),
        ("--decode-concurrency", ns.decode_concurrency, ns.decode_concurrency >= 1, ">= 1"),
        ("--prompt-concurrency", ns.prompt_concurrency, ns.prompt_concurrency >= 1, ">= 1"),
        ("--prefill-step-size", ns.prefill_step_size, ns.prefill_step_size >= 1, ">= 1"),
        ("--prompt-cache-size", ns.prompt_cache_size, ns.prompt_cache_size >= 0, ">= 0"),
        ("--kv-bits", ns.kv_bits, ns.kv_bits is None or ns.kv_bits in (2, 3, 4, 5, 6, 8), "one of 2, 3, 4, 5, 6, 8"),
        ("--kv-group-size", ns.kv_group_size, ns.kv_group_size in (32, 64, 128), "one of 32, 64, 128"),
        ("--quantized-kv-start", ns.quantized_kv_start, ns.quantized_kv_start >= 0, ">= 0"),
        ("--temp", ns.temp, math.isfinite(ns.temp) and ns.temp >= 0, "a finite number >= 0"),
        ("--top-p", ns.top_p, 0 <= ns.top_p <= 1, "in [0, 1]"),
        ("--top-k", ns.top_k, ns.top_k >= 0, ">= 0"),
        ("--min-p", ns.min_p, 0 <= ns.min_p <= 1, "in [0, 1]"),
    ]
    if ns.prompt_cache_bytes is not None:
        rules.append(("--prompt-cache-bytes", ns.prompt_cache_bytes, ns.prompt_cache_bytes >= 0, ">= 0"))
    for flag, value, ok, want in rules:
        if not ok:
            return f"argument {flag}: {value} is not {want}"
    if not isinstance(ns.chat_template_args, dict):
        return "argument --chat-template-args: must be a JSON object"
    return (local_path_problem("--model", ns.model, config=True)
            or local_path_problem("--draft-model", ns.draft_model, config=True)
            or local_path_problem("--adapter-path", ns.adapter_path, config=False))


@contextlib.contextmanager
def talkie_arg_parser(module):
    """Within the block, ``module.argparse.ArgumentParser`` is this command's parser."""
    with swapped(module, argparse=types.SimpleNamespace(**{**vars(argparse), "ArgumentParser": _Parser})):
        yield


def distributed_refusal(size: int) -> str:
    """What the server says when started as one of ``size`` processes (mlx.launch)."""
    return (
        f"{PROG}: error: the server runs in a single process, but this is one of {size} "
        "processes (started by mlx.launch): run it without mlx.launch; to generate with a "
        "model sharded across machines, run generate under mlx.launch instead, e.g.\n"
        "  mlx.launch --backend ring --hostfile hosts.json -- /path/to/.venv/bin/talkie-kernels generate "
        "--model PATH --prompt \"...\"\n"
    )
