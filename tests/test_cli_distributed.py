"""The command line under ``mlx.launch``: two processes over MLX's ring backend on 127.0.0.1.

``generate`` and ``bench --model`` shard the checkpoint across the ranks
(tensor parallel, ``--pipeline`` for pipeline parallel) and print from rank 0
only; ``server`` refuses (exit code 2). Each rank runs with one native thread;
every run has a timeout. Ranks are started either by ``mlx.launch`` itself
(running the ``talkie-kernels`` console script, as the README shows; it merges
the ranks' output and always exits 0) or directly with the environment it sets
(``MLX_RANK``, a JSON ``MLX_HOSTFILE``), to see each rank's output and exit
code.
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

import pytest

from talkie_kernels.configs import CONFIGS

from checkpoints import write_checkpoint

SCRIPT = Path(sys.executable).with_name("talkie-kernels")
TIMEOUT = 45
GENERATE = ["--prompt", "Once upon a time", "--ignore-chat-template", "--max-tokens", "8",
            "--temp", "0", "--verbose", "False"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # talkie-2l-256: 2 heads (one per rank), 2 blocks (one per pipeline stage).
    return write_checkpoint(tmp_path_factory.mktemp("cli-dist") / "fp32", CONFIGS["talkie-2l-256"])


def _env() -> dict:
    env = dict(os.environ, TALKIE_KERNELS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("MLX_RANK", "MLX_HOSTFILE"):
        env.pop(k, None)
    return env


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _communicate(p: subprocess.Popen, timeout: float):
    try:
        o, e = p.communicate(timeout=timeout)
        return p.returncode, o, e
    except subprocess.TimeoutExpired:
        _kill(p)
        o, e = p.communicate()
        return None, o, e


def single(args, timeout=TIMEOUT):
    """``talkie-kernels *args`` in one process -> (returncode, stdout, stderr)."""
    p = subprocess.Popen([str(SCRIPT), *args], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    return _communicate(p, timeout)


def ranks(args, n=2, timeout=TIMEOUT):
    """``talkie-kernels *args`` as ranks 0..n-1 of a ring on 127.0.0.1 ->
    [(returncode, stdout, stderr)] per rank (returncode None: killed at the timeout)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"127.0.0.1:{p}"] for p in _free_ports(n)], f)
    procs = []
    try:
        for r in range(n):
            env = _env() | {"MLX_RANK": str(r), "MLX_HOSTFILE": f.name}
            procs.append(subprocess.Popen(
                [str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        return [_communicate(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
        os.unlink(f.name)


def launch(args, n=2, timeout=TIMEOUT):
    """``mlx.launch --backend ring --hosts 127.0.0.1 -n N -- talkie-kernels *args`` ->
    (returncode, stdout, stderr) of mlx.launch (which exits 0 whatever the ranks do)."""
    for _ in range(20):  # mlx.launch listens on starting-port + rank
        port = _free_ports(1)[0]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            continue
    cmd = [str(Path(sys.executable).with_name("mlx.launch")), "--backend", "ring", "--hosts", "127.0.0.1",
           "-n", str(n), "--starting-port", str(port), "--env", "TALKIE_KERNELS_NUM_THREADS=1",
           "--", str(SCRIPT), *args]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    return _communicate(p, timeout)


@pytest.fixture(scope="module")
def single_output(ckpt):
    rc, o, e = single(["generate", "--model", str(ckpt), *GENERATE])
    assert rc == 0 and o.strip(), (rc, o, e[-2000:])
    return o


def test_generate_tensor_parallel_under_mlx_launch(ckpt, single_output):
    rc, o, e = launch(["generate", "--model", str(ckpt), *GENERATE])
    assert rc == 0, (rc, o, e[-3000:])
    assert "exited with code" not in e and "[ring]" not in e, e[-3000:]
    assert o == single_output  # rank 0's text, once


def test_generate_pipeline_prints_on_rank_0_only(ckpt, single_output):
    (rc0, o0, e0), (rc1, o1, e1) = ranks(["generate", "--model", str(ckpt), "--pipeline", *GENERATE])
    assert rc0 == rc1 == 0, (rc0, e0[-2000:], rc1, e1[-2000:])
    assert o0 == single_output
    assert o1 == "" and e1 == "", (o1, e1)  # the other rank runs silently


def test_bench_model_under_two_ranks_prints_one_table(ckpt, tmp_path):
    out = tmp_path / "bench.json"
    (rc0, o0, e0), (rc1, o1, e1) = ranks(
        ["bench", "--model", str(ckpt), "--quick", "--only", "models", "--json", str(out)], timeout=90
    )
    assert rc0 == rc1 == 0, (rc0, o0[-2000:], e0[-2000:], rc1, e1[-2000:])
    assert o0.count("talkie-kernels bench") == 1 and "fused" in o0
    assert "sharded across 2 processes, tensor parallel" in " ".join(o0.split())
    assert o1 == "" and e1 == ""
    data = json.loads(out.read_text())
    assert data["settings"]["distributed"] == {"size": 2, "parallelism": "tensor"}
    fused = [r for r in data["records"] if r["impl"] == "fused" and r["kind"] == "model"]
    assert fused and all(r["status"] == "ok" for r in fused)
    refs = [r for r in data["records"] if r["impl"] == "reference"]
    assert refs and all(r["status"] == "n/a" for r in refs)


def test_server_refuses_under_two_ranks(ckpt):
    runs = ranks(["server", "--model", str(ckpt)], timeout=30)
    assert [rc for rc, _, _ in runs] == [2, 2], runs
    err = runs[0][2]
    assert "the server runs in a single process, but this is one of 2 processes" in err
    assert "talkie-kernels generate" in err and "mlx.launch" in err
    assert runs[1][2] == ""
