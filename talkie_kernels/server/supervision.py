"""The supervised generation thread: ``TalkieResponseGenerator``.

mlx-lm 0.32.2's ``ResponseGenerator`` runs one thread that tokenizes, batches
and generates every request; when anything raised in its batch loop, the
thread died and every later request got a 404 ``generation thread died``.
This subclass:

1. tokenizes a request where its own faults (an empty prompt, a chat
   template that refuses its messages, unusable stop words, a ``top_k`` or
   ``logit_bias`` outside the served model's vocabulary) are a
   ``RequestError`` for it alone (a 400), before it is generated;
2. restarts the thread when it dies of something else, after failing the
   requests it held with ``GenerationFailed`` (a 500): up to
   ``MAX_RESTARTS`` per burst of failures (a run that answered tokens resets
   the count), and only while the model is loaded; a ``--model`` that does
   not load at all exits the process with code 1;
3. answers each request on a ``queueing.RequestQueue``, which ``generate``
   waits on while it checks the handler's ``gone()``: once the client left,
   the token iterator raises ``queueing.ClientGone`` and the request's
   generation stops after the step in progress;
4. keeps the set of requests in flight, so that ``stop_and_join`` (at
   shutdown) can answer each with ``queueing.ABORT`` and the HTTP server
   can wait for those answers (``active_requests``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from queue import Empty as QueueEmpty
from queue import Queue

from .queueing import ABORT, ClientGone, GenerationFailed, QueuedArguments, RequestQueue, StopAwareBudget
from .request_checks import RequestError, model_limits
from .shutdown import hard_exit

_mlx_server = importlib.import_module("mlx_lm.server")

#: How often a handler waiting for its first token checks its client (seconds).
WAIT_POLL_S = 0.1
#: Restarts of a generation thread that died, before it is left dead.
MAX_RESTARTS = 10

log = logging.getLogger(__name__)


class TalkieResponseGenerator(_mlx_server.ResponseGenerator):
    """mlx-lm's generation thread, made to survive bad requests and to shut down on time."""

    def __init__(self, *args, **kwargs):
        self._outstanding: set[RequestQueue] = set()
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
        self._stop_aware_budget = StopAwareBudget(budget, self)

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
                    hard_exit(1)
                self._fail_outstanding(GenerationFailed(f"generation failed ({type(e).__name__}: {e}); request dropped"))
                # The budget is per burst of failures: a run that answered tokens was healthy.
                restarts = 1 if self.tokens_served > served else restarts + 1
                served = self.tokens_served
                if self._stop or self.model_provider.model is None or restarts > MAX_RESTARTS:
                    self._generation_failed = True
                    return
                log.warning("restarting the generation thread (%d)", restarts)

    # -- the handlers' side

    def _register(self, q: RequestQueue) -> None:
        with self._outstanding_lock:
            self._outstanding.add(q)

    def release(self, q: RequestQueue) -> None:
        with self._outstanding_lock:
            self._outstanding.discard(q)

    def _fail_outstanding(self, item) -> None:
        with self._outstanding_lock:
            queues = list(self._outstanding)
        for q in queues:
            if item is ABORT:
                q.aborted = True
                if q.ctx is not None:
                    q.ctx.stop()
            Queue.put(q, item)
        self.stop_pending = True

    def active_requests(self) -> int:
        with self._outstanding_lock:
            return len(self._outstanding)

    def _wait(self, q: RequestQueue, gone):
        while True:
            try:
                return q.get(timeout=WAIT_POLL_S)
            except QueueEmpty:
                if q.aborted:
                    return ABORT
                if not self.generation_available():
                    raise RuntimeError("generation thread died") from None
                if gone():
                    raise ClientGone()

    def generate(self, request, generation_args, progress_callback=None, *, label="request",
                 gone=lambda: False, register=lambda q: None):
        """mlx-lm's ``generate``, whose token iterator raises ``ClientGone`` once ``gone()``.

        The request's queue counts as in flight (``active_requests``) from
        ``register(queue)`` until the handler calls ``release(queue)`` after
        writing its answer: shutdown waits for those answers.
        """
        q = RequestQueue(label, self)
        if not self.generation_available():
            raise RuntimeError("generation thread died")
        self._register(q)
        register(q)
        if generation_args is not None:
            fields = {f.name: getattr(generation_args, f.name) for f in dataclasses.fields(generation_args)}
            generation_args = QueuedArguments(**fields, queue=q)
        try:
            self.requests.put((q, request, generation_args))
            ctx = self._wait(q, gone)
        except BaseException:
            q.abandon()
            raise
        if ctx is ABORT:
            raise RuntimeError("the server is shutting down")
        if isinstance(ctx, Exception):
            raise ctx

        def tokens():
            try:
                while True:
                    item = self._wait(q, gone)
                    if item is None or item is ABORT:
                        return
                    if isinstance(item, Exception):
                        raise item
                    if gone():
                        raise ClientGone()
                    if isinstance(item, tuple):
                        if progress_callback is not None:
                            progress_callback(*item)
                        continue
                    yield item
            except ClientGone:
                q.abandon()
                raise

        return ctx, tokens()

    def stop_and_join(self, timeout: float | None = None) -> bool:
        """Stop the loop, end every request in flight, wait up to ``timeout``: joined?"""
        self._stop = True
        self._fail_outstanding(ABORT)
        self._generation_thread.join(timeout)
        return not self._generation_thread.is_alive()
