"""What passes between a request's handler and the generation thread.

mlx-lm 0.32.2's ``ResponseGenerator.generate`` puts ``(queue, request,
arguments)`` on the generation thread's queue and reads the answer from that
queue: first a ``GenerationContext`` (or an exception), then
``(processed, total)`` prompt progress tuples and ``Response`` tokens, then
``None``. Here that queue is a ``RequestQueue``, which also counts the
request's tokens, stops its generation once its client left, and carries the
request's own failure; ``QueuedArguments`` hands it to the sampler built for
the request (``sampling``). ``StopAwareBudget`` ends mlx-lm's batch time
budget after the step in which a request was stopped.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from queue import Queue

_mlx_server = importlib.import_module("mlx_lm.server")

log = logging.getLogger(__name__)


class GenerationFailed(RuntimeError):
    """The generation thread died holding this request, or the request failed in it:
    answered with a 500 (or an error event)."""


class PromptStopped(Exception):
    """Raised from a prompt's progress report once its client left: ends the prompt
    of a request served alone (mlx-lm's ``_serve_single`` answers it on the queue)."""


class ClientGone(BaseException):
    """The client of a request closed its connection (escapes mlx-lm's ``except Exception``)."""


ABORT = object()  # put on a request's queue at shutdown: end the answer here


class RequestQueue(Queue):
    """The queue the generation thread answers one request on, which counts its tokens.

    Once the request is ``abandoned`` (its client left), a generation context
    put on it is stopped at once and every token or prompt chunk still put on
    it is logged; a request served alone (``stop_prompt_on_abandon``) stops
    its prompt at the next chunk. Once it ``fail``-ed, its answer is that
    error and nothing more is queued. ``owner`` (the generator) counts every
    request's tokens in ``tokens_served`` and learns of a stop through
    ``stop_pending``.
    """

    def __init__(self, label: str, owner=None):
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
        if self.failure is not None and item is not ABORT:
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
                raise PromptStopped(f"request {self.label}: client disconnected")
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
class QueuedArguments(_mlx_server.GenerationArguments):
    """mlx-lm's arguments of a request, with the queue it is answered on."""

    queue: RequestQueue | None = None


class StopAwareBudget:
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
