"""Running processes as ranks of MLX's ring backend on 127.0.0.1, for the
distributed tests (tests/test_distributed.py, tests/test_cli_distributed.py).

Every process gets one native thread and its own session (so a timeout kills
it and its children); a rank still running at the timeout is killed and
reported with returncode None.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def env() -> dict:
    """This process's environment, one native thread, no rank of its own."""
    out = dict(os.environ, TALKIE_KERNELS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("MLX_RANK", "MLX_HOSTFILE"):
        out.pop(k, None)
    return out


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start(cmd, environ=None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(c) for c in cmd], env=environ or env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL, start_new_session=True,
    )


def communicate(p: subprocess.Popen, timeout: float):
    """(returncode, stdout, stderr); returncode None when killed at the timeout."""
    try:
        o, e = p.communicate(timeout=timeout)
        return p.returncode, o, e
    except subprocess.TimeoutExpired:
        kill(p)
        o, e = p.communicate()
        return None, o, e


def run_ranks(cmd, n: int = 2, timeout: float = 60):
    """``cmd`` as ranks 0..n-1 of a ring on 127.0.0.1 (the environment
    ``mlx.launch`` would set) -> [(returncode, stdout, stderr)] per rank."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"127.0.0.1:{p}"] for p in free_ports(n)], f)
    procs = []
    try:
        for r in range(n):
            procs.append(start(cmd, env() | {"MLX_RANK": str(r), "MLX_HOSTFILE": f.name}))
        return [communicate(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)
        os.unlink(f.name)


def run_launch(tail, n: int = 2, timeout: float = 60):
    """``mlx.launch --backend ring --hosts 127.0.0.1 -n N ... *tail`` ->
    (returncode, stdout, stderr) of mlx.launch (which exits 0 whatever the ranks do)."""
    launch = Path(sys.executable).with_name("mlx.launch")
    # The console script, or the same entry point without it.
    cmd = [launch] if launch.exists() else [
        sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"
    ]
    # mlx.launch listens on starting-port + rank: two consecutive free ports.
    for _ in range(20):
        port = free_ports(1)[0]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            continue
    cmd += ["--backend", "ring", "--hosts", "127.0.0.1", "-n", n, "--starting-port", port,
            "--env", "TALKIE_KERNELS_NUM_THREADS=1", *tail]
    return communicate(start(cmd), timeout)
