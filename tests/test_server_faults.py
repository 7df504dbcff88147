"""What one request does stays with it: real HTTP on 127.0.0.1, concurrent requests.

One server per mode (batched, and ``--kv-bits 8``, which serves requests one at
a time), started through ``fault_server.py`` so a request can trigger a fault
in its sampler or in the generation loop. Covered: sampling fields at the
model's limits (``top_k`` equal to the vocabulary, context sizes of 2**31,
``logit_bias`` values that are not numbers) are served or refused with a 400
while the requests beside them finish; a request whose sampler raises gets a
500 alone; a generation loop that dies a dozen times restarts each time (its
budget is per burst of failures); ``/v1/models`` lists the served model with
no Hugging Face cache; a waiting short request is answered between another
request's prompt chunks; a disconnect stops a prompt at the next chunk.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from talkie_kernels.checkpoint import write_checkpoint
from talkie_kernels.configs import CONFIGS

from fault_server import SAMPLER_FAULT_TEMPERATURE, THREAD_FAULT_TOP_LOGPROBS
from servers import Server

TEXT = "/v1/completions"
VOCAB = CONFIGS["talkie-2l-256"]["vocab_size"]
#: Prompt chunks of 64 tokens: a 3,000-token prompt is ~50 chunks.
CHUNK = "64"


def long_prompt(words: str) -> str:
    """~12,000 tokens, so that with the native attention its chunks still take
    seconds (at ~3,000 the whole prompt could finish before a second request
    arrived); each test its own words (a prompt seen before is served from the
    prompt cache)."""
    return f"{words} " * 2400


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("faults") / "ckpt", CONFIGS["talkie-2l-256"])


@pytest.fixture(scope="module")
def no_eos(ckpt) -> dict:
    eos = json.loads((ckpt / "config.json").read_text())["eos_token_id"]
    return {str(eos): -1e9}


@pytest.fixture(scope="module", params=["batched", "kv-bits-8"])
def server(request, ckpt, tmp_path_factory):
    extra = ("--kv-bits", "8") if request.param == "kv-bits-8" else ()
    s = Server(ckpt, tmp_path_factory.mktemp("log") / "server.log", "--prefill-step-size", CHUNK, *extra,
               faults=True, env={"HF_HUB_CACHE": str(tmp_path_factory.mktemp("hf") / "absent")})
    s.mode = request.param
    yield s
    s.kill()


class Concurrent:
    """Requests posted on threads: ``results[name] = (status, JSON body)``."""

    def __init__(self, server):
        self.server, self.results, self.threads = server, {}, []

    def post(self, name, body, path=TEXT):
        def run():
            status, data = self.server.request("POST", path, body, timeout=120)
            self.results[name] = (status, json.loads(data))

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def join(self):
        for t in self.threads:
            t.join(timeout=150)
            assert not t.is_alive(), "a request got no answer"
        return self.results


def neighbours(server, no_eos, n=3):
    """``n`` greedy requests in flight (generating when this returns)."""
    c = Concurrent(server)
    since = len(server.text())
    for i in range(n):
        c.post(f"greedy{i}", {"prompt": f"Hello {i}", "max_tokens": 40, "temperature": 0, "logit_bias": no_eos})
    server.wait_for(r"Prompt processing progress: (\d+)/\1", since=since)
    return c


def assert_neighbours_served(results, n=3):
    for i in range(n):
        status, body = results[f"greedy{i}"]
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 40


REFUSED = {
    "top_k above vocab": ({"top_k": VOCAB + 1, "temperature": 1}, f"top_k must be at most the vocabulary size ({VOCAB})"),
    "top_k 2**70": ({"top_k": 2**70, "temperature": 1}, "top_k must be at most"),
    "repetition_context_size 2**31": ({"repetition_context_size": 2**31, "repetition_penalty": 1.1},
                                      "repetition_context_size must be at most 2**31 - 1"),
    "presence_context_size 2**31": ({"presence_context_size": 2**31, "presence_penalty": 0.5},
                                    "presence_context_size must be at most"),
    "frequency_context_size 2**31": ({"frequency_context_size": 2**31, "frequency_penalty": 0.5},
                                     "frequency_context_size must be at most"),
    "logit_bias value a list": ({"logit_bias": {"5": [1]}}, "logit_bias['5'] is [1], not a finite number"),
    "logit_bias value an object": ({"logit_bias": {"5": {}}}, "logit_bias['5'] is {}"),
    "logit_bias value null": ({"logit_bias": {"5": None}}, "logit_bias['5'] is null"),
    "logit_bias a list": ({"logit_bias": [1]}, "logit_bias must be a dict of token ids to finite numbers, not list"),
    "logit_bias negative id": ({"logit_bias": {"-1": 1}}, "key '-1' is not a token id"),
    "logit_bias id = vocab": ({"logit_bias": {str(VOCAB): 1}}, f"token id {VOCAB}, outside the vocabulary"),
}


def test_fields_at_the_models_limits_fail_alone(server, no_eos):
    # mlx-lm: top_k = vocab (or above, or a context size of 2**31) raised inside the
    # batch step and all four requests got a 500; logit_bias lists closed the connection.
    c = neighbours(server, no_eos)
    c.post("top_k = vocab", {"prompt": "x", "max_tokens": 3, "top_k": VOCAB, "temperature": 1})
    c.post("top_k = vocab - 1", {"prompt": "x", "max_tokens": 3, "top_k": VOCAB - 1, "temperature": 1})
    for name, (fields, _) in REFUSED.items():
        c.post(name, {"prompt": "x", "max_tokens": 3, **fields})
    results = c.join()
    assert_neighbours_served(results)
    for name in ("top_k = vocab", "top_k = vocab - 1"):
        status, body = results[name]
        assert status == 200 and body["usage"]["completion_tokens"] >= 1, (name, body)
    for name, (_, message) in REFUSED.items():
        status, body = results[name]
        assert status == 400 and message in body["error"], (name, body)
    assert "generation thread failed" not in server.text()


def test_a_request_whose_sampler_raises_fails_alone(server, no_eos):
    c = neighbours(server, no_eos)
    c.post("faulty", {"prompt": "x", "max_tokens": 3, "temperature": SAMPLER_FAULT_TEMPERATURE})
    results = c.join()
    assert_neighbours_served(results)
    status, body = results["faulty"]
    assert status == 500 and "injected sampler fault" in body["error"], body
    # Streamed: the 200 and its headers are sent; the stream ends with an error event.
    status, data = server.request("POST", TEXT, {"prompt": "x", "max_tokens": 3, "stream": True,
                                                 "temperature": SAMPLER_FAULT_TEMPERATURE})
    events = [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: {")]
    assert status == 200 and "injected sampler fault" in events[-1]["error"], data


def test_generation_loop_failures_restart_it_every_time(server):
    # mlx-lm's thread died for good at the first; this server's restart budget
    # (10) was for the life of the process: the 11th failure left it dead.
    for _ in range(12):
        status, data = server.request("POST", TEXT, {"prompt": "x", "max_tokens": 2,
                                                     "top_logprobs": THREAD_FAULT_TOP_LOGPROBS})
        assert status == 500 and "injected generation-loop fault" in json.loads(data)["error"], data
        assert server.complete()["usage"]["completion_tokens"] >= 1
    assert server.request("GET", "/health") == (200, b'{"status": "ok"}')


def test_models_lists_the_served_model_without_a_cache(server, ckpt):
    status, data = server.request("GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(data)["data"]] == [str(ckpt.resolve())]


def test_short_request_is_served_between_a_long_prompts_chunks(server):
    if server.mode == "kv-bits-8":
        pytest.skip("--kv-bits serves one request at a time (mlx-lm batches only unquantized caches)")
    c = Concurrent(server)
    since = len(server.text())
    c.post("long", {"prompt": long_prompt("the king had three daughters"), "max_tokens": 1})
    m = server.wait_for(r"Prompt processing progress: (\d+)/(\d+)", since=since, timeout=60)
    total = int(m[2])
    status, body = server.request("POST", TEXT, {"prompt": "Hello", "max_tokens": 3, "temperature": 0})
    assert status == 200 and body
    # Answered while the long prompt was still being processed.
    done = [int(n) for n in re.findall(rf"Prompt processing progress: (\d+)/{total}\b", server.text()[since:])]
    assert max(done) < total, "the short request waited for the whole long prompt"
    assert c.join()["long"][0] == 200


def test_disconnect_stops_a_long_prompt_at_the_next_chunk(server):
    before = set(re.findall(r"request (\S+): client disconnected", server.text()))
    since = len(server.text())
    c = server.connection(timeout=10)
    c.request("POST", TEXT, json.dumps({"prompt": long_prompt("steam engines and the wireless"), "max_tokens": 1}))
    server.wait_for(r"Prompt processing progress: \d+/", since=since, timeout=60)
    c.close()
    deadline = time.monotonic() + 10
    while not (found := set(re.findall(r"request (\S+): client disconnected", server.text())) - before):
        assert time.monotonic() < deadline, f"disconnect not noticed: {server.text()[-2000:]}"
        time.sleep(0.05)
    (rid,) = found
    time.sleep(1.0)  # dozens of 64-token chunks, had the prompt gone on
    after = server.text().count(f"request {rid}: prompt chunk after its client disconnected")
    assert after <= 1, f"{after} prompt chunks after the client disconnected"
    assert server.complete()["usage"]["completion_tokens"] >= 1
