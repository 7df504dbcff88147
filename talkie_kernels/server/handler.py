"""The HTTP handler: mlx-lm's ``APIHandler`` with request checks, disconnects and error answers.

``TalkieAPIHandler`` keeps mlx-lm 0.32.2's endpoints and request parsing, and:

* reads a completion request's body itself first: a negative
  ``Content-Length`` is a 400, one over ``MAX_BODY_BYTES`` a 413, a body that
  is short, not UTF-8 or not JSON a 400;
* checks every field mlx-lm reads for type and range before the request is
  queued (``validate_model_parameters``, with ``request_checks``);
* answers a failure of ``generate`` with the status its cause says
  (``RequestError`` 400, ``queueing.GenerationFailed`` 500, a dead or
  stopping generation thread 503) where mlx-lm answered 404, and any other
  error while a request is handled with a 500; each with a JSON body, or an
  error event once a stream began;
* gives mlx-lm's code a ``_HandlerView`` of the shared generator whose
  ``generate`` checks this connection's socket (``client_gone``), so a
  request whose client disconnected stops generating at the next decode
  step;
* lists the served model at ``/v1/models``, and answers ``finish_reason:
  "abort"`` for the requests shutdown ended.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import socket
from pathlib import Path

from .queueing import ClientGone, GenerationFailed
from .request_checks import (
    INTEGER_FIELDS,
    NUMBER_FIELDS,
    RequestError,
    check_fields,
    check_logit_bias,
    check_request,
    is_int,
    model_limits,
)

_mlx_server = importlib.import_module("mlx_lm.server")

#: Largest request body read (bytes); larger ones get a 413.
MAX_BODY_BYTES = 64 << 20

log = logging.getLogger(__name__)


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


class _HandlerView:
    """What one handler sees of the shared generator: ``generate`` watches its socket."""

    def __init__(self, generator, handler: "TalkieAPIHandler"):
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
        except (ClientGone, BrokenPipeError, ConnectionResetError):
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
        except (ClientGone, BrokenPipeError, ConnectionResetError):
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
        check_request(self.path, self.body, draft_model=self.requested_draft_model,
                      stream_options=self.stream_options, chat_template_kwargs=self.chat_template_kwargs)

    def generate_response(self, text, finish_reason, *args, **kwargs):
        q = self.request_queue
        if finish_reason is not None and q is not None and q.aborted:
            finish_reason = "abort"
        return super().generate_response(text, finish_reason, *args, **kwargs)

