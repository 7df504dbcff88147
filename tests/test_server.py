"""``talkie-kernels server`` as a subprocess on 127.0.0.1, driven by real HTTP clients.

Every wait has a timeout. Covered: a chat completion; invalid requests are 4xx
JSON errors and the server keeps serving after each; a prompt that tokenizes to
nothing (a chat template rendering "") is a 400 from the generation thread,
which survives it; a client that disconnects stops its generation at the next
decode step (the server's DEBUG log names every token generated after the
disconnect; the test counts them); SIGINT / SIGTERM exit with code 0 within 2 s,
idle and while generating, answering the request in flight.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from talkie_kernels.checkpoint import write_checkpoint
from talkie_kernels.configs import CONFIGS

from servers import START_TIMEOUT_S, Server, free_port

EXIT_BUDGET_S = 2.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("server") / "ckpt", CONFIGS["talkie-2l-256"])


@pytest.fixture(scope="module")
def no_eos(ckpt) -> dict:
    """A ``logit_bias`` that keeps the random model from ending a long generation early."""
    eos = json.loads((ckpt / "config.json").read_text())["eos_token_id"]
    return {str(eos): -1e9}


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    s = Server(ckpt, tmp_path_factory.mktemp("log") / "server.log")
    yield s
    s.kill()


def test_chat_completion(server):
    status, data = server.request(
        "POST", "/v1/chat/completions",
        {"model": "default_model", "messages": [{"role": "user", "content": "Hello"}],
         "max_tokens": 8, "temperature": 0.0},
    )
    assert status == 200, data
    choice = json.loads(data)["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert json.loads(data)["usage"]["completion_tokens"] >= 1


CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]

BAD_REQUESTS = {
    "empty prompt": (TEXT, {"prompt": ""}, "prompt is empty"),
    "no prompt": (TEXT, {"max_tokens": 3}, "did not contain a prompt"),
    "prompt not a string": (TEXT, {"prompt": ["hi"]}, "prompt must be a string"),
    "prompt null": (TEXT, {"prompt": None}, "prompt must be a string"),
    "empty messages": (CHAT, {"messages": []}, "messages is empty"),
    "messages not a list": (CHAT, {"messages": "hi"}, "messages must be a list"),
    "message not an object": (CHAT, {"messages": ["hi"]}, "messages[0] must be an object"),
    "message without role": (CHAT, {"messages": [{"content": "hi"}]}, "role must be a non-empty string"),
    "non-string content": (CHAT, {"messages": [{"role": "user", "content": 5}]}, "content must be a string"),
    "image content": (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
                      "must be a text part"),
    "max_tokens 0": (TEXT, {"prompt": "hi", "max_tokens": 0}, "max_tokens must be at least 1"),
    "max_tokens negative": (CHAT, {"messages": HI, "max_tokens": -5}, "max_tokens must be at least 1"),
    "max_tokens bool": (TEXT, {"prompt": "hi", "max_tokens": True}, "max_tokens must be an integer"),
    "max_tokens string": (TEXT, {"prompt": "hi", "max_tokens": "5"}, "max_tokens must be of type"),
    "temperature NaN": (TEXT, {"prompt": "hi", "temperature": float("nan")}, "temperature must be a finite number"),
    "temperature negative": (TEXT, {"prompt": "hi", "temperature": -1}, "temperature must be at least 0"),
    "top_p string": (TEXT, {"prompt": "hi", "top_p": "high"}, "top_p must be of type"),
    "stream not bool": (TEXT, {"prompt": "hi", "stream": "yes"}, "stream must be of type"),
    "stream_options string": (TEXT, {"prompt": "hi", "stream": True, "stream_options": "x"}, "stream_options"),
    "stop not strings": (TEXT, {"prompt": "hi", "stop": [1, 2]}, "stop must be a string or a list of strings"),
    "stop empty word": (TEXT, {"prompt": "hi", "stop": [""]}, "stop words must not be empty"),
    "seed negative": (TEXT, {"prompt": "hi", "seed": -1}, "seed must be an integer"),
    "seed too large": (TEXT, {"prompt": "hi", "seed": 2**64}, "seed must be an integer"),
    "logit_bias bad key": (TEXT, {"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias must be a dict"),
    "logit_bias outside vocab": (TEXT, {"prompt": "hi", "logit_bias": {"99999999": 1}}, "outside the vocabulary"),
    "tools string": (CHAT, {"messages": HI, "tools": "x"}, "tools must be a list"),
    "role_mapping list": (CHAT, {"messages": HI, "role_mapping": [1]}, "role_mapping"),
    "chat_template_kwargs string": (CHAT, {"messages": HI, "chat_template_kwargs": "x"}, "chat_template_kwargs"),
    "model number": (TEXT, {"prompt": "hi", "model": 3}, "requested_model must be of type"),
    "draft_model number": (TEXT, {"prompt": "hi", "draft_model": 3}, "draft_model must be a string"),
    "top_logprobs too many": (TEXT, {"prompt": "hi", "top_logprobs": 50}, "top_logprobs must be at most"),
    "body a list": (TEXT, [1, 2], "JSON dictionary"),
}
BAD_BODIES = {
    "bad JSON": (TEXT, b'{"prompt": "hi",', {}, "Invalid JSON", 400),
    "deep JSON": (CHAT, b"[" * 100_000 + b"]" * 100_000, {}, "Invalid JSON", 400),
    "not UTF-8": (TEXT, b'{"prompt": "\xff\xfe"}', {}, "not UTF-8", 400),
    "empty body": (CHAT, b"", {}, "Invalid JSON", 400),
    "negative Content-Length": (TEXT, b"", {"Content-Length": "-5"}, "Content-Length", 400),
    "huge Content-Length": (TEXT, b"", {"Content-Length": str(1 << 40)}, "bytes is over", 413),
}


def _assert_still_serving(server):
    reply = server.complete()
    assert reply["usage"]["completion_tokens"] >= 1
    assert server.request("GET", "/health", timeout=5) == (200, b'{"status": "ok"}')


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_invalid_request_is_400_and_server_keeps_serving(server, case):
    path, body, message = BAD_REQUESTS[case]
    status, data = server.request("POST", path, body)
    assert status == 400, data
    assert message in json.loads(data)["error"]
    _assert_still_serving(server)


@pytest.mark.parametrize("case", BAD_BODIES)
def test_invalid_body_is_4xx_and_server_keeps_serving(server, case):
    path, raw, headers, message, code = BAD_BODIES[case]
    status, data = server.request("POST", path, raw=raw, headers=headers, timeout=10)
    assert status == code, data
    assert message in json.loads(data)["error"]
    _assert_still_serving(server)


def test_prompt_of_zero_tokens_is_400_from_the_generation_thread(ckpt, tmp_path):
    # A chat template that renders nothing: the request passes validation and
    # reaches the generation thread with 0 tokens (in mlx-lm, the batch loop's
    # "empty prompt" error killed the thread: every later request got a 404).
    s = Server(ckpt, tmp_path / "server.log", "--chat-template", "{{ '' }}")
    try:
        for _ in range(2):
            status, data = s.request("POST", CHAT, {"messages": HI, "max_tokens": 3})
            assert status == 400, data
            assert "tokenizes to 0 tokens" in json.loads(data)["error"]
        _assert_still_serving(s)  # text completions do not use the template
        assert "generation thread failed" not in s.text()
    finally:
        s.kill()


def _post_raw(server, body: dict) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return sock


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_client_disconnect_stops_generation(server, no_eos, stream):
    log_before = server.text()
    before = set(re.findall(r"request (\S+): client disconnected", log_before))
    sock = _post_raw(server, {"prompt": "Hello", "max_tokens": 10**6, "stream": stream, "logit_bias": no_eos})
    if stream:
        received = b""
        while received.count(b"data: ") < 3:  # generating
            chunk = sock.recv(65536)
            assert chunk, "stream ended early"
            received += chunk
    else:
        server.wait_for(r"Prompt processing progress: (\d+)/\1", since=len(log_before))  # generating
        time.sleep(0.3)
    sock.close()

    deadline = time.monotonic() + 10
    while True:
        found = set(re.findall(r"request (\S+): client disconnected", server.text())) - before
        if found:
            break
        assert time.monotonic() < deadline, f"disconnect not noticed: {server.text()[-2000:]}"
        time.sleep(0.05)
    (rid,) = found
    tokens = int(re.search(rf"request {re.escape(rid)}: client disconnected after (\d+) tokens", server.text())[1])
    assert tokens >= (3 if stream else 1)
    # Several hundred decode steps a second on this model: had the generation
    # gone on, a second would log hundreds of steps after the disconnect.
    time.sleep(1.0)
    after = server.text().count(f"request {rid}: decode step after its client disconnected")
    assert after <= 2, f"{after} decode steps after the client disconnected"
    _assert_still_serving(server)


def _stop(s: Server, signum) -> float:
    t0 = time.monotonic()
    os.kill(s.proc.pid, signum)
    try:
        code = s.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        s.kill()
        pytest.fail(f"server still running 10 s after {signal.Signals(signum).name}")
    elapsed = time.monotonic() - t0
    assert code == 0, f"exit code {code}: {s.text()[-3000:]}"
    assert "terminate called" not in s.text()
    return elapsed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_idle_exits_0(ckpt, tmp_path, signum):
    s = Server(ckpt, tmp_path / "server.log")
    try:
        s.complete()
        assert _stop(s, signum) < EXIT_BUDGET_S
    finally:
        s.kill()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_generating_exits_0_and_answers(ckpt, tmp_path, no_eos, signum, stream):
    s = Server(ckpt, tmp_path / "server.log")
    try:
        c = s.connection(timeout=10)
        c.request("POST", TEXT, json.dumps({"prompt": "Hello", "max_tokens": 10**6, "stream": stream,
                                            "logit_bias": no_eos}))
        if stream:
            r = c.getresponse()
            assert r.status == 200
            first = [r.fp.readline() for _ in range(6)]
            assert any(line.startswith(b"data: ") for line in first)
        else:
            s.wait_for(r"Prompt processing progress: (\d+)/\1")
            time.sleep(0.3)
        elapsed = _stop(s, signum)
        assert elapsed < EXIT_BUDGET_S
        if stream:
            events = [line for line in r.read().split(b"\n") if line.startswith(b"data: ")]
            assert events[-1] == b"data: [DONE]"
            assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"
        else:
            r = c.getresponse()
            assert r.status == 200
            reply = json.loads(r.read())
            assert reply["choices"][0]["finish_reason"] == "abort"
            assert 1 <= reply["usage"]["completion_tokens"] < 10**6
    finally:
        s.kill()


def test_model_that_does_not_load_exits_1(ckpt, tmp_path):
    # mlx-lm loads --model in its generation thread; when that failed, the thread
    # died and the server answered 503 forever. Ours says why and exits.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"junk")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "talkie_kernels.cli", "server", "--model", str(bad),
             "--host", "127.0.0.1", "--port", str(free_port())],
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            assert proc.wait(timeout=START_TIMEOUT_S) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert f"cannot load --model {bad}: exiting" in log.read_text()


def test_generation_thread_that_dies_fails_its_requests_and_restarts():
    """In process, with a stand-in model: the requests the thread held get an error, the next run serves."""
    import types

    from talkie_kernels.server import supervision as S

    class Provider:
        cli_args = types.SimpleNamespace(model="stand-in")
        model = None

        def load_default(self):
            self.model = object()

        def reset(self):
            pass

    class Crashy(S.TalkieResponseGenerator):
        runs = 0

        def _generate(self):
            self.model_provider.load_default()
            Crashy.runs += 1
            if Crashy.runs == 1:
                self.requests.get(timeout=10)  # a request arrives, then the loop fails
                raise RuntimeError("boom")
            while not self._stop:
                time.sleep(0.01)

    gen = Crashy(Provider(), None)
    try:
        with pytest.raises(S.GenerationFailed, match=r"generation failed \(RuntimeError: boom\)"):
            gen.generate(None, None)
        deadline = time.monotonic() + 10
        while Crashy.runs < 2:
            assert time.monotonic() < deadline, "generation thread did not restart"
            time.sleep(0.01)
        assert gen.generation_available() and gen.is_healthy
    finally:
        assert gen.stop_and_join(timeout=5)
