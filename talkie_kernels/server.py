"""``talkie-kernels server``: mlx-lm's OpenAI-compatible HTTP server, fused model.

Same flags and endpoints as ``mlx_lm.server`` (mlx-lm 0.32.2): this runs its
``main`` with the arguments given here, swapping only the ``load`` that its
``ModelProvider`` calls for ``talkie_kernels.load`` (see
``swap.loading_through_talkie``). Models named in requests and
``--draft-model`` load through it too, so they must be Talkie checkpoints.
Distributed serving (``mlx.launch``) uses mlx-lm's ``sharded_load`` and is not
routed. Batched requests run through ``BatchKVCache``, whose ``offset`` is an
``mx.array`` — the fused model takes it as is.

mlx-lm builds its parser inside ``main``; ``talkie_arg_parser`` swaps the
``argparse`` its module sees for one whose ``ArgumentParser`` carries this
command's prog and description and Talkie's ``--model`` / ``--draft-model`` help
(flags and defaults untouched).

What this server does that mlx-lm 0.32.2's does not (``robust_serving`` swaps
mlx-lm's ``ResponseGenerator`` and ``_run_http_server`` for the classes below,
for the duration of ``main``; mlx-lm's site-packages are not edited):

* **Bad requests are 400s, and never reach the generation thread.** Every field
  mlx-lm reads is checked for type and range before the request is queued
  (``TalkieAPIHandler.validate_model_parameters``): an empty ``prompt`` or
  ``messages`` list, non-string content, a non-finite or boolean number, stop
  words that are not strings, a negative ``Content-Length``, a body that is not
  UTF-8 JSON, ... A prompt that still tokenizes to nothing (or whose chat
  template refuses the messages) is a 400 from the generation thread, which
  keeps running: in mlx-lm one empty prompt raised inside its batch loop, killed
  the thread, and every later request got a 404 ``generation thread died``. If
  that thread does die of something else, the requests it held get a 500 and
  it restarts (while the model is loaded; ``MAX_RESTARTS`` per burst of
  failures: a run that answered tokens resets the count). The sampling and
  logits fields are checked against the model's vocabulary and MLX's int32
  indices (``request_checks``).
* **A request that fails, fails alone.** Its sampler and logits processors
  are guarded (``_request_sampler``): one that raises fails its request with
  a 500 while the batch step its neighbours share completes (greedy stands
  in); its stop words are prepared where a failure is its own 400. Any error
  while a request is handled is a 400/500 with a JSON body (an error event
  once a stream began). ``/v1/models`` lists the served model.
* **Long prompts share the time** (``fair_batching.FairBatchGenerator``): a
  request arriving during a long prompt is answered between its chunks.
* **SIGINT and SIGTERM exit with code 0** within about a second, idle or
  generating: the requests in flight are answered with what they generated so
  far (``finish_reason: "abort"``), the generation thread gets up to
  ``SHUTDOWN_JOIN_S`` to finish its step, then the process exits with
  ``os._exit(0)`` (no interpreter teardown while MLX work may still be on
  another thread: that teardown is what aborted mlx-lm's server with
  ``terminate called without an active exception``, exit 134). Both signals are
  handled even when the shell started the server with SIGINT ignored.
* **A client that disconnects stops its generation at the next decode step.**
  The handler checks its socket at every token (and while the prompt is
  processed or the request waits in the queue; a prompt stops at its next
  chunk); on EOF it stops the request's
  generation context, so the generation thread drops it after the step in
  progress. mlx-lm only noticed when a streamed write failed, and a
  non-streaming request generated on to ``max_tokens``. The server logs
  ``request <id>: client disconnected after N tokens`` (INFO) and, at DEBUG, a
  ``decode step after its client disconnected`` line for every token generated
  after that — the tests count those.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from queue import Empty as QueueEmpty
from queue import Queue

import mlx.core as mx

from .cli import local_path_problem
from .fair_batching import FairBatchGenerator
from .swap import loading_through_talkie, swapped, sys_argv
from .request_checks import (
    INTEGER_FIELDS,
    NUMBER_FIELDS,
    RequestError,
    check_fields,
    check_logit_bias,
    check_messages,
    check_prompt,
    check_stop,
    is_int,
    model_limits,
)

_mlx_server = importlib.import_module("mlx_lm.server")
_make_sampler, _make_logits_processors = _mlx_server._make_sampler, _mlx_server._make_logits_processors

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

#: Largest request body read (bytes); larger ones get a 413.
MAX_BODY_BYTES = 64 << 20
#: At shutdown: seconds the generation thread gets to finish its step, then
#: seconds the handlers get to write their last answers, before ``os._exit(0)``.
SHUTDOWN_JOIN_S = 0.8
SHUTDOWN_ANSWER_S = 0.4
#: How often a handler waiting for its first token checks its client (seconds).
WAIT_POLL_S = 0.1
#: Restarts of a generation thread that died, before it is left dead.
MAX_RESTARTS = 10

log = logging.getLogger("talkie_kernels.server")


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


# --------------------------------------------------------------------------
# Requests between the handlers and the generation thread


class GenerationFailed(RuntimeError):
    """The generation thread died holding this request, or the request failed in it:
    answered with a 500 (or an error event)."""


class _PromptStopped(Exception):
    """Raised from a prompt's progress report once its client left: ends the prompt
    of a request served alone (mlx-lm's ``_serve_single`` answers it on the queue)."""


class _ClientGone(BaseException):
    """The client of a request closed its connection (escapes mlx-lm's ``except Exception``)."""


class _Shutdown(BaseException):
    """Raised in the main thread by SIGINT / SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_ABORT = object()  # put on a request's queue at shutdown: end the answer here


def client_gone(sock) -> bool:
    """Has the peer of ``sock`` closed the connection? (Never blocks.)"""
    flags = getattr(socket, "MSG_DONTWAIT", None)
    if sock is None or flags is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | flags) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing to read
    except OSError:
        return True  # reset, or closed on our side


class _RequestQueue(Queue):
    """The queue the generation thread answers one request on, which counts its tokens.

    Once the request is ``abandoned`` (its client left), a generation context
    put on it is stopped at once and every token or prompt chunk still put on
    it is logged; a request served alone (``stop_prompt_on_abandon``) stops
    its prompt at the next chunk. Once it ``fail``-ed, its answer is that
    error and nothing more is queued.
    """

    def __init__(self, label: str, owner: "TalkieResponseGenerator | None" = None):
        super().__init__()
        self.label = label
        self._owner = owner
        self.ctx = None
        self.tokens = 0
        self.tokens_after_abandon = 0
        self.chunks_after_abandon = 0
        self.abandoned = False
        self.aborted = False
        self.failure: GenerationFailed | None = None
        self.stop_prompt_on_abandon = False

    def put(self, item, block=True, timeout=None):
        if self.failure is not None and item is not _ABORT:
            return
        if isinstance(item, _mlx_server.GenerationContext):
            self.ctx = item
            if self.abandoned:
                item.stop()
        elif isinstance(item, _mlx_server.Response):
            self.tokens += 1
            if self._owner is not None:
                self._owner.tokens_served += 1
            if self.abandoned:
                self.tokens_after_abandon += 1
                log.debug(
                    "request %s: decode step after its client disconnected (%d)",
                    self.label, self.tokens_after_abandon,
                )
        elif isinstance(item, tuple) and self.abandoned:  # (tokens processed, total): a prompt chunk
            self.chunks_after_abandon += 1
            log.debug("request %s: prompt chunk after its client disconnected (%d)",
                      self.label, self.chunks_after_abandon)
            if self.stop_prompt_on_abandon:
                raise _PromptStopped(f"request {self.label}: client disconnected")
        super().put(item, block, timeout)

    def _stop(self) -> None:
        if self.ctx is not None:
            self.ctx.stop()
        if self._owner is not None:
            self._owner.stop_pending = True

    def abandon(self) -> None:
        if not self.abandoned:
            self.abandoned = True
            self._stop()

    def fail(self, error: Exception) -> None:
        """This request alone failed in the generation thread: answer it with ``error``."""
        if self.failure is None:
            log.error("request %s failed: %s: %s", self.label, type(error).__name__, error)
            self.failure = GenerationFailed(
                f"this request failed ({type(error).__name__}: {error}); other requests are unaffected"
            )
            Queue.put(self, self.failure)
            self._stop()


@dataclass
class _QueuedArguments(_mlx_server.GenerationArguments):
    """mlx-lm's arguments of a request, with the queue it is answered on."""

    queue: _RequestQueue | None = None


def _guard(q: _RequestQueue | None, fn, fallback):
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


def _request_sampler(args, tokenizer):
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


def _request_logits_processors(args):
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


class _StopAwareBudget:
    """mlx-lm's ``TimeBudget`` (up to 0.5 s of batch steps between checks for stopped
    requests and new ones), cut short after the step in which a request was stopped:
    its generation ends at the next decode step, not up to 0.5 s later."""

    def __init__(self, budget, owner):
        self._budget, self._owner = budget, owner

    def __iter__(self):
        iter(self._budget)
        return self

    def __next__(self):
        if self._owner.stop_pending:
            self._owner.stop_pending = False
            raise StopIteration
        return next(self._budget)


class TalkieResponseGenerator(_mlx_server.ResponseGenerator):
    """mlx-lm's generation thread, made to survive bad requests and to shut down on time."""

    def __init__(self, *args, **kwargs):
        self._outstanding: set[_RequestQueue] = set()
        self._outstanding_lock = threading.Lock()
        #: A request was stopped: end the current batch time budget after this step.
        self.stop_pending = False
        #: Tokens answered since the start: a failed run that answered some was healthy.
        self.tokens_served = 0
        super().__init__(*args, **kwargs)  # starts the thread

    @property
    def _time_budget(self):
        return self._stop_aware_budget

    @_time_budget.setter
    def _time_budget(self, budget):  # mlx-lm's __init__ assigns its TimeBudget here
        self._stop_aware_budget = _StopAwareBudget(budget, self)

    # -- the generation thread

    def _tokenize(self, tokenizer, request, args):
        try:
            out = super()._tokenize(tokenizer, request, args)
        except Exception as e:  # the request's content: its template, its parts
            raise RequestError(f"cannot tokenize the request: {type(e).__name__}: {e}") from e
        if len(out[0]) == 0:
            raise RequestError("the prompt is empty: it tokenizes to 0 tokens")
        # The model this request is served with (it may be one the request named).
        args.sampling.top_k = model_limits(
            args.sampling.top_k, args.logits.logit_bias, self.model_provider.model.args.vocab_size
        )
        try:  # made here, where a failure answers this request alone; cached for the batch loop
            self._make_state_machine(self.model_provider.model_key, tokenizer, args.stop_words)
        except Exception as e:
            raise RequestError(f"cannot use the stop words: {type(e).__name__}: {e}") from e
        return out

    def _serve_single(self, request, stream):
        request[0].stop_prompt_on_abandon = True  # its prompt is one call: stop it from the progress report
        super()._serve_single(request, stream)

    def _run_generate(self):
        restarts, served = 0, 0
        while True:
            try:
                self._generate()
                return
            except Exception as e:
                log.exception("generation thread failed: %s", e)
                if restarts == 0 and self.model_provider.model is None and self.cli_args.model is not None:
                    # --model does not load: nothing could be served; say so and leave.
                    log.error("cannot load --model %s: exiting", self.cli_args.model)
                    _hard_exit(1)
                self._fail_outstanding(GenerationFailed(f"generation failed ({type(e).__name__}: {e}); request dropped"))
                # The budget is per burst of failures: a run that answered tokens was healthy.
                restarts = 1 if self.tokens_served > served else restarts + 1
                served = self.tokens_served
                if self._stop or self.model_provider.model is None or restarts > MAX_RESTARTS:
                    self._generation_failed = True
                    return
                log.warning("restarting the generation thread (%d)", restarts)

    # -- the handlers' side

    def _register(self, q: _RequestQueue) -> None:
        with self._outstanding_lock:
            self._outstanding.add(q)

    def release(self, q: _RequestQueue) -> None:
        with self._outstanding_lock:
            self._outstanding.discard(q)

    def _fail_outstanding(self, item) -> None:
        with self._outstanding_lock:
            queues = list(self._outstanding)
        for q in queues:
            if item is _ABORT:
                q.aborted = True
                if q.ctx is not None:
                    q.ctx.stop()
            Queue.put(q, item)
        self.stop_pending = True

    def active_requests(self) -> int:
        with self._outstanding_lock:
            return len(self._outstanding)

    def _wait(self, q: _RequestQueue, gone):
        while True:
            try:
                return q.get(timeout=WAIT_POLL_S)
            except QueueEmpty:
                if q.aborted:
                    return _ABORT
                if not self.generation_available():
                    raise RuntimeError("generation thread died") from None
                if gone():
                    raise _ClientGone()

    def generate(self, request, generation_args, progress_callback=None, *, label="request",
                 gone=lambda: False, register=lambda q: None):
        """mlx-lm's ``generate``, whose token iterator raises ``_ClientGone`` once ``gone()``.

        The request's queue counts as in flight (``active_requests``) from
        ``register(queue)`` until the handler calls ``release(queue)`` after
        writing its answer: shutdown waits for those answers.
        """
        q = _RequestQueue(label, self)
        if not self.generation_available():
            raise RuntimeError("generation thread died")
        self._register(q)
        register(q)
        if generation_args is not None:
            fields = {f.name: getattr(generation_args, f.name) for f in dataclasses.fields(generation_args)}
            generation_args = _QueuedArguments(**fields, queue=q)
        try:
            self.requests.put((q, request, generation_args))
            ctx = self._wait(q, gone)
        except BaseException:
            q.abandon()
            raise
        if ctx is _ABORT:
            raise RuntimeError("the server is shutting down")
        if isinstance(ctx, Exception):
            raise ctx

        def tokens():
            try:
                while True:
                    item = self._wait(q, gone)
                    if item is None or item is _ABORT:
                        return
                    if isinstance(item, Exception):
                        raise item
                    if gone():
                        raise _ClientGone()
                    if isinstance(item, tuple):
                        if progress_callback is not None:
                            progress_callback(*item)
                        continue
                    yield item
            except _ClientGone:
                q.abandon()
                raise

        return ctx, tokens()

    def stop_and_join(self, timeout: float | None = None) -> bool:
        """Stop the loop, end every request in flight, wait up to ``timeout``: joined?"""
        self._stop = True
        self._fail_outstanding(_ABORT)
        self._generation_thread.join(timeout)
        return not self._generation_thread.is_alive()


class _HandlerView:
    """What one handler sees of the shared generator: ``generate`` watches its socket."""

    def __init__(self, generator: TalkieResponseGenerator, handler: "TalkieAPIHandler"):
        self._generator, self._handler = generator, handler

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def generate(self, request, args, progress_callback=None):
        h = self._handler
        try:
            return self._generator.generate(
                request, args, progress_callback,
                label=getattr(h, "request_id", "request"),
                gone=lambda: client_gone(h.connection),
                register=lambda q: setattr(h, "request_queue", q),
            )
        except RequestError:
            h.error_status = 400
            raise
        except GenerationFailed:
            h.error_status = 500
            raise
        except RuntimeError:
            h.error_status = 503
            raise


# --------------------------------------------------------------------------
# HTTP


class TalkieAPIHandler(_mlx_server.APIHandler):
    """mlx-lm's handler with request validation, disconnect detection and shutdown answers."""

    def __init__(self, response_generator, *args, **kwargs):
        self.error_status = None
        self.request_queue = None
        self.headers_sent = False
        super().__init__(_HandlerView(response_generator, self), *args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
        try:
            super().log_message(format, *args)
        except ValueError:
            pass  # stderr already closed at exit

    def handle(self):
        generator = self.response_generator._generator
        try:
            super().handle()
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            q = self.request_queue
            if q is not None:
                q.abandon()
            log.info(
                "request %s: client disconnected after %d tokens; its generation stops at the next decode step",
                getattr(self, "request_id", "?"), q.tokens if q is not None else 0,
            )
            self.close_connection = True
        finally:
            if self.request_queue is not None:
                generator.release(self.request_queue)

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True
        self._set_completion_headers(status)
        body = json.dumps({"error": message}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _set_completion_headers(self, status_code: int = 200):
        # mlx-lm answers every failure of ``generate`` with a 404: a bad
        # request is a 400, a dead or stopping generation thread a 503.
        if status_code == 404 and self.error_status is not None:
            status_code, self.error_status = self.error_status, None
        super()._set_completion_headers(status_code)

    def do_POST(self):
        if self.path not in ("/v1/completions", "/v1/chat/completions", "/chat/completions"):
            return super().do_POST()
        length = self.headers.get("Content-Length")
        if length is None:
            return super().do_POST()  # 411
        try:
            n = int(length)
        except ValueError:
            return super().do_POST()  # 400
        if n < 0:
            return self._error(400, f"Invalid Content-Length header: {n}")
        if n > MAX_BODY_BYTES:
            return self._error(413, f"request body of {n} bytes is over the {MAX_BODY_BYTES} bytes served")
        raw = self.rfile.read(n)
        if len(raw) < n:
            return self._error(400, f"request body ended after {len(raw)} of its {n} bytes")
        try:
            json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return self._error(400, f"request body is not UTF-8: {e}")
        except (ValueError, RecursionError) as e:
            return self._error(400, f"Invalid JSON in request body: {e}")
        rfile, self.rfile = self.rfile, io.BytesIO(raw)
        self.headers_sent = False
        try:
            super().do_POST()
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:
            self._answer_failure(e)
        finally:
            self.rfile = rfile

    def end_headers(self):
        self.headers_sent = True
        super().end_headers()

    def _answer_failure(self, e: Exception) -> None:
        """Any error while this request was prepared, generated or written: a 400 (the
        request's fault) or 500 with a JSON body, or, once a stream began, an error event."""
        if isinstance(e, (RequestError, GenerationFailed)):
            status, message = (400 if isinstance(e, RequestError) else 500), str(e)
            log.error("request %s: %s", getattr(self, "request_id", "?"), message)
        else:
            status, message = 500, f"request failed ({type(e).__name__}: {e})"
            log.exception("request %s: %s", getattr(self, "request_id", "?"), message)
        self.close_connection = True
        if not self.headers_sent:
            self._headers_buffer = []  # a 200 may be buffered: replaced by the error
            self._error(status, message)
        elif getattr(self, "stream", False):
            self.wfile.write(f"data: {json.dumps({'error': message})}\n\n".encode())
            self.wfile.flush()

    def handle_models_request(self):
        """The served model (mlx-lm listed the Hugging Face cache's mlx models, and
        answered a 200 with no body when there was no cache directory)."""
        provider = self.response_generator.model_provider
        names = [provider.cli_args.model, provider.model_key[0] if provider.model_key else None]
        ids = []
        for name in names:
            if name is not None:
                path = Path(name).expanduser()
                ident = str(path.resolve()) if path.exists() else name
                if ident not in ids:
                    ids.append(ident)
        wanted = self.path[len("/v1/models/"):] if self.path.startswith("/v1/models/") else None
        models = [{"id": i, "object": "model", "created": self.created}
                  for i in ids if wanted is None or i == wanted or i.lstrip("/") == wanted]
        body = json.dumps({"object": "list", "data": models}).encode()
        self._set_completion_headers(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def validate_model_parameters(self) -> None:
        b = self.body
        # mlx-lm wants floats here; JSON writes 0 and 1 as integers.
        for name in ("xtc_probability", "xtc_threshold"):
            if is_int(getattr(self, name)):
                setattr(self, name, float(getattr(self, name)))
        check_logit_bias(self.logit_bias)  # before mlx-lm's float(): a list there was a TypeError
        super().validate_model_parameters()
        check_fields({name: getattr(self, name) for name in (*INTEGER_FIELDS, *NUMBER_FIELDS, "seed")})
        provider = self.response_generator.model_provider
        if provider.model is not None and self.requested_model in ("default_model", provider.cli_args.model):
            # The generation thread checks again against the model it serves with.
            model_limits(self.top_k, self.logit_bias, provider.model.args.vocab_size)
        if not isinstance(self.requested_draft_model, str):
            raise RequestError("draft_model must be a string")
        if self.stream_options is not None and not (
            isinstance(self.stream_options, dict)
            and isinstance(self.stream_options.get("include_usage", False), bool)
        ):
            raise RequestError("stream_options must be an object whose include_usage is a boolean")
        check_stop(b.get("stop"))
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise RequestError("chat_template_kwargs must be an object")
        if self.path == "/v1/completions":
            if "prompt" not in b:
                raise RequestError("Request did not contain a prompt")
            check_prompt(b["prompt"])
        else:
            if "messages" not in b:
                raise RequestError("Request did not contain messages")
            check_messages(b["messages"])
            tools = b.get("tools")
            if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
                raise RequestError("tools must be a list of objects")
            mapping = b.get("role_mapping")
            if mapping is not None and not (
                isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
            ):
                raise RequestError("role_mapping must map names to strings")

    def generate_response(self, text, finish_reason, *args, **kwargs):
        q = self.request_queue
        if finish_reason is not None and q is not None and q.aborted:
            finish_reason = "abort"
        return super().generate_response(text, finish_reason, *args, **kwargs)


def _hard_exit(code: int = 0) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    logging.shutdown()
    os._exit(code)


def _run_http_server(host, port, response_generator, server_class=ThreadingHTTPServer, handler_class=None):
    """mlx-lm's ``_run_http_server`` with ``TalkieAPIHandler`` and SIGINT/SIGTERM → exit 0."""
    handler_class = handler_class or TalkieAPIHandler
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    server_class.address_family, _, _, _, address = next(iter(infos))
    fingerprint = _mlx_server.get_system_fingerprint()

    def raise_shutdown(signum, frame):
        raise _Shutdown(signum)

    previous = {s: signal.signal(s, raise_shutdown) for s in (signal.SIGINT, signal.SIGTERM)}
    httpd = None
    try:
        httpd = server_class(
            address,
            lambda *a, **k: handler_class(response_generator, *a, system_fingerprint=fingerprint, **k),
        )
        warnings.warn("mlx_lm.server is not recommended for production as it only implements basic security checks.")
        logging.info(f"Starting httpd at {host} on port {port}...")
        httpd.serve_forever()
    except _Shutdown as stop:
        # A second signal while answering: leave at once.
        for s in previous:
            signal.signal(s, lambda *_: _hard_exit(0))
        name = signal.Signals(stop.signum).name
        logging.info(f"{name}: shutting down (answering the requests in flight)")
        if httpd is not None:
            httpd.socket.close()  # refuse new connections
        joined = response_generator.stop_and_join(timeout=SHUTDOWN_JOIN_S)
        deadline = time.monotonic() + SHUTDOWN_ANSWER_S
        while response_generator.active_requests() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not joined:
            logging.info("generation thread still in a step: exiting without it")
        _hard_exit(0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def robust_serving(module):
    """Within the block, ``module`` serves with this file's generator, handler and shutdown."""
    with swapped(module, ResponseGenerator=TalkieResponseGenerator, _run_http_server=_run_http_server,
                 _make_sampler=_request_sampler, _make_logits_processors=_request_logits_processors,
                 BatchGenerator=FairBatchGenerator):
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


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(args):
        from .cli import world

        group = world()
        if group is not None:
            if group.rank() == 0:
                sys.stderr.write(distributed_refusal(group.size()))
            return 2
    # Until the HTTP server installs its own handlers (nothing to answer yet), a
    # signal exits at once, with code 0 as later.
    early = {s: signal.signal(s, lambda *_: _hard_exit(0)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with (sys_argv(PROG, args), talkie_arg_parser(_mlx_server), loading_through_talkie(_mlx_server),
              robust_serving(_mlx_server)):
            _mlx_server.main()
    finally:
        for s, h in early.items():
            signal.signal(s, h)
    return 0
