"""``talkie-kernels server``: mlx-lm's OpenAI-compatible HTTP server, fused model.

Same flags and endpoints as ``mlx_lm.server`` (mlx-lm 0.32.2): ``main`` runs
its ``main`` with the arguments given here, swapping only the ``load`` that
its ``ModelProvider`` calls for ``talkie_kernels.load`` (see
``swap.loading_through_talkie``). Models named in requests and
``--draft-model`` load through it too, so they must be Talkie checkpoints.
The server runs in one process: started as one of several (``mlx.launch``),
``main`` returns 2 without serving, rank 0 having written why and how to run
``generate`` under ``mlx.launch`` instead (``args.distributed_refusal``).
Batched requests run through ``BatchKVCache``, whose ``offset`` is an
``mx.array`` — the fused model takes it as is.

What this server does that mlx-lm 0.32.2's does not (``robust_serving`` swaps
mlx-lm's ``ResponseGenerator``, ``_run_http_server``, ``_make_sampler``,
``_make_logits_processors`` and ``BatchGenerator`` for this package's, for
the duration of ``main``; mlx-lm's site-packages are not edited):

* **Bad flags are usage errors** (``args``): a port out of range, a
  ``--max-tokens`` of 0, a ``--model`` path with no checkpoint, ... exit
  with code 2 before anything loads.
* **Bad requests are 400s, and never reach the generation thread**
  (``handler``, ``request_checks``): every field mlx-lm reads is checked for
  type and range before the request is queued: an empty ``prompt`` or
  ``messages`` list, non-string content, a non-finite or boolean number, stop
  words that are not strings, a negative ``Content-Length``, a body that is
  not UTF-8 JSON, ... The sampling and logits fields are checked against the
  model's vocabulary and MLX's int32 indices.
* **The generation thread survives** (``supervision``): a prompt that still
  tokenizes to nothing (or whose chat template refuses the messages) is a
  400 from the generation thread, which keeps running; in mlx-lm one empty
  prompt raised inside its batch loop, killed the thread, and every later
  request got a 404 ``generation thread died``. If that thread does die of
  something else, the requests it held get a 500 and it restarts (while the
  model is loaded; ``MAX_RESTARTS`` per burst of failures: a run that
  answered tokens resets the count).
* **A request that fails, fails alone** (``sampling``): its sampler and
  logits processors are guarded: one that raises fails its request with a
  500 while the batch step its neighbours share completes (greedy stands
  in); its stop words are prepared where a failure is its own 400. Any error
  while a request is handled is a 400/500 with a JSON body (an error event
  once a stream began). ``/v1/models`` lists the served model.
* **Long prompts share the time** (``fair_batching.FairBatchGenerator``): a
  request arriving during a long prompt is answered between its chunks.
* **SIGINT and SIGTERM exit with code 0** within about a second, idle or
  generating (``shutdown``): the requests in flight are answered with what
  they generated so far (``finish_reason: "abort"``), then the process exits
  with ``os._exit(0)``, without the interpreter teardown that aborted
  mlx-lm's server (exit 134). Both signals are handled even when the shell
  started the server with SIGINT ignored.
* **A client that disconnects stops its generation at the next decode step**
  (``handler``, ``queueing``). The handler checks its socket at every token
  (and while the prompt is processed or the request waits in the queue; a
  prompt stops at its next chunk); on EOF it stops the request's generation
  context, so the generation thread drops it after the step in progress.
  mlx-lm only noticed when a streamed write failed, and a non-streaming
  request generated on to ``max_tokens``. The server logs ``request <id>:
  client disconnected after N tokens`` (INFO) and, at DEBUG, a ``decode step
  after its client disconnected`` line for every token generated after that
  — the tests count those.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

from ..launch import world
from ..swap import loading_through_talkie, swapped, sys_argv
from .args import PROG, distributed_refusal, talkie_arg_parser
from .fair_batching import FairBatchGenerator
from .sampling import request_logits_processors, request_sampler
from .shutdown import exiting_on_signals, run_http_server
from .supervision import TalkieResponseGenerator

_mlx_server = importlib.import_module("mlx_lm.server")


@contextlib.contextmanager
def robust_serving(module):
    """Within the block, ``module`` serves with this package's generator, sampling,
    batching, handler and shutdown."""
    with swapped(module, ResponseGenerator=TalkieResponseGenerator, _run_http_server=run_http_server,
                 _make_sampler=request_sampler, _make_logits_processors=request_logits_processors,
                 BatchGenerator=FairBatchGenerator):
        yield


def main(argv=None) -> int:
    """Run mlx-lm's server with ``argv`` (default ``sys.argv[1:]``) -> exit code.

    Under ``mlx.launch`` it returns 2 without serving (``--help`` still
    prints). A serving process leaves through ``shutdown.hard_exit``: 0 on
    SIGINT/SIGTERM, 1 when ``--model`` does not load; ``--help`` returns 0,
    and a usage error exits with 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(args):
        group = world()
        if group is not None:
            if group.rank() == 0:
                sys.stderr.write(distributed_refusal(group.size()))
            return 2
    # Until the HTTP server installs its own handlers (nothing to answer yet), a
    # signal exits at once, with code 0 as later.
    with (exiting_on_signals(), sys_argv(PROG, args), talkie_arg_parser(_mlx_server),
          loading_through_talkie(_mlx_server), robust_serving(_mlx_server)):
        _mlx_server.main()
    return 0
