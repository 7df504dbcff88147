"""``talkie-kernels server`` as a subprocess on 127.0.0.1, for the server tests (every wait bounded)."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
FAULT_SERVER = Path(__file__).with_name("fault_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``talkie-kernels server`` in a subprocess, its output in ``log``.

    ``faults``: run it through ``fault_server.py`` (faults a request can trigger);
    ``env``: variables set for it."""

    def __init__(self, ckpt: Path, log: Path, *extra: str, faults: bool = False, env=None):
        self.port = free_port()
        self.log = log
        self._out = open(log, "wb")
        command = [str(FAULT_SERVER)] if faults else ["-m", "talkie_kernels.cli", "server"]
        self.proc = subprocess.Popen(
            [sys.executable, *command, "--model", str(ckpt),
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "DEBUG", *extra],
            stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.text()[-3000:]}")
            try:
                status, body = self.request("GET", "/health", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"server did not start within {START_TIMEOUT_S} s: {self.text()[-3000:]}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def connection(self, timeout=30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, *, raw: bytes | None = None, headers=None, timeout=30):
        """-> (status, body bytes)."""
        c = self.connection(timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            c.request(method, path, data, headers={"Content-Type": "application/json", **(headers or {})})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def complete(self, **body):
        status, data = self.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2, **body})
        assert status == 200, data
        return json.loads(data)

    def wait_for(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        """The first match of ``pattern`` in the log after its first ``since`` characters."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text()[since:])
            if m:
                return m
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the server log within {timeout} s: {self.text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()
