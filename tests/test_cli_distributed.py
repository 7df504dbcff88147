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
import sys
from pathlib import Path

import pytest

from talkie_kernels.configs import CONFIGS

import ring
from checkpoints import write_checkpoint

SCRIPT = Path(sys.executable).with_name("talkie-kernels")
TIMEOUT = 45
GENERATE = ["--prompt", "Once upon a time", "--ignore-chat-template", "--max-tokens", "8",
            "--temp", "0", "--verbose", "False"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # talkie-2l-256: 2 heads (one per rank), 2 blocks (one per pipeline stage).
    return write_checkpoint(tmp_path_factory.mktemp("cli-dist") / "fp32", CONFIGS["talkie-2l-256"])


def single(args, timeout=TIMEOUT):
    """``talkie-kernels *args`` in one process -> (returncode, stdout, stderr)."""
    return ring.communicate(ring.start([SCRIPT, *args]), timeout)


def ranks(args, n=2, timeout=TIMEOUT):
    """``talkie-kernels *args`` as ranks 0..n-1 of a ring on 127.0.0.1 ->
    [(returncode, stdout, stderr)] per rank (returncode None: killed at the timeout)."""
    return ring.run_ranks([SCRIPT, *args], n, timeout)


def launch(args, n=2, timeout=TIMEOUT):
    """``mlx.launch ... -- talkie-kernels *args`` -> (returncode, stdout, stderr) of mlx.launch."""
    return ring.run_launch(["--", SCRIPT, *args], n, timeout)


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
