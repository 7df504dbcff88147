"""SIGINT and SIGTERM: the server exits with code 0 within about a second, idle or generating.

``run_http_server`` (swapped in for mlx-lm 0.32.2's ``_run_http_server``)
serves with ``handler.TalkieAPIHandler`` and turns either signal into
``Shutdown`` in the main thread, even when the shell started the server with
SIGINT ignored. Then:

1. the listening socket closes (no new connections);
2. the generator's ``stop_and_join`` answers the requests in flight with
   what they generated so far (``finish_reason: "abort"``) and gives the
   generation thread up to ``SHUTDOWN_JOIN_S`` to finish its step;
3. the handlers get up to ``SHUTDOWN_ANSWER_S`` to write those answers;
4. ``hard_exit(0)``: ``os._exit`` after flushing the output, with no
   interpreter teardown while MLX work may still run on another thread (that
   teardown is what aborted mlx-lm's server with ``terminate called without
   an active exception``, exit 134).

A second signal during these steps exits at once. Before the HTTP server
runs (the model loading, nothing to answer yet), ``exiting_on_signals`` has
either signal exit at once, with code 0 as later.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import time
import warnings
from http.server import ThreadingHTTPServer

from .handler import TalkieAPIHandler

_mlx_server = importlib.import_module("mlx_lm.server")

#: At shutdown: seconds the generation thread gets to finish its step, then
#: seconds the handlers get to write their last answers, before ``os._exit(0)``.
SHUTDOWN_JOIN_S = 0.8
SHUTDOWN_ANSWER_S = 0.4

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Shutdown(BaseException):
    """Raised in the main thread by SIGINT / SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def hard_exit(code: int = 0) -> None:
    """Flush stdout, stderr and logging, then ``os._exit(code)``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    logging.shutdown()
    os._exit(code)


@contextlib.contextmanager
def exiting_on_signals():
    """Within the block, SIGINT and SIGTERM exit at once with code 0."""
    previous = {s: signal.signal(s, lambda *_: hard_exit(0)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_http_server(host, port, response_generator, server_class=ThreadingHTTPServer, handler_class=None):
    """mlx-lm's ``_run_http_server`` with ``TalkieAPIHandler`` and SIGINT/SIGTERM → exit 0."""
    handler_class = handler_class or TalkieAPIHandler
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    server_class.address_family, _, _, _, address = next(iter(infos))
    fingerprint = _mlx_server.get_system_fingerprint()

    def raise_shutdown(signum, frame):
        raise Shutdown(signum)

    previous = {s: signal.signal(s, raise_shutdown) for s in _SIGNALS}
    httpd = None
    try:
        httpd = server_class(
            address,
            lambda *a, **k: handler_class(response_generator, *a, system_fingerprint=fingerprint, **k),
        )
        warnings.warn("mlx_lm.server is not recommended for production as it only implements basic security checks.")
        logging.info(f"Starting httpd at {host} on port {port}...")
        httpd.serve_forever()
    except Shutdown as stop:
        # A second signal while answering: leave at once.
        for s in previous:
            signal.signal(s, lambda *_: hard_exit(0))
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
        hard_exit(0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
