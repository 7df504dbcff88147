"""`talkie-kernels bench --quick`: the table, the JSON records and the plot are produced.

Only the shape of the output is checked here; timings are never asserted on
(the numbers of a tiny run on a noisy machine mean nothing).
"""

from __future__ import annotations

import json

import pytest

from talkie_kernels import bench, cli
from talkie_kernels.benchmarking import COMPILED_DECODE_NA, IMPLS, MATMULS_ONLY, MODEL_WORKLOADS, OPS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    js, png = out / "bench.json", out / "speedups.png"
    rc = cli.main(["bench", "--quick", "--json", str(js), "--plot", str(png)])
    return rc, js, png


def test_quick_run_writes_json_and_plot(quick_run, capsys):
    rc, js, png = quick_run
    doc = json.loads(js.read_text())
    records = doc["records"]
    # An implementation that fails is reported (exit code 1), never given a number.
    errors = [r for r in records if r["status"] == "error"]
    assert rc == (1 if errors else 0)
    for r in errors:
        assert r["error"] and r["median_ms"] is None and r["speedup_vs_reference"] is None
    if doc["metadata"]["backend"] != "reference":
        # With kernels available every fused row has a number.
        assert not errors, errors
        nodes = doc["metadata"]["graph_nodes_per_decoded_token"]["talkie-2l-256"]
        assert 0 < nodes["fused"] < nodes["reference"]

    meta = doc["metadata"]
    for key in ("date", "mlx", "mlx_lm", "device", "backend", "machine", "cpu_count"):
        assert meta[key] not in (None, "")
    for r in records:
        for key in ("model", "impl", "phase", "median_ms", "device", "backend", "mlx"):
            assert key in r
        assert r["impl"] in IMPLS + (MATMULS_ONLY,) and r["phase"] in ("prefill", "decode")
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["speedup_vs_reference"] > 0

    ops = [r for r in records if r["kind"] == "op"]
    assert {(r["op"], r["phase"], r["impl"]) for r in ops} == {
        (op, ph, impl) for op in OPS for ph in ("prefill", "decode") for impl in IMPLS
    }
    for r in ops:
        assert r["dtype"] == "bfloat16" and len(r["shape"]) in (3, 4)
        if r["impl"] == "reference":
            assert r["status"] == "ok"

    models = [r for r in records if r["kind"] == "model"]
    workloads = MODEL_WORKLOADS
    by = {(r["phase"], r["method"], r["impl"]): r for r in models}
    expected = {(*w, impl) for w in workloads for impl in IMPLS} | {("decode", "step_loop", MATMULS_ONLY)}
    assert len(by) == len(models) and set(by) == expected
    # The matmul floor is timed in the same rounds as decode and yields the ceiling note.
    floor = by["decode", "step_loop", MATMULS_ONLY]
    assert floor["status"] == "ok" and floor["tokens"] == by["decode", "step_loop", "reference"]["tokens"]
    assert any("fusion alone can make decode at most" in n for n in doc["notes"])
    for r in models:
        if r["status"] == "ok":
            assert r["tokens_per_s"] > 0
    for w in workloads:
        assert by[(*w, "reference")]["status"] == "ok"
    assert by["prefill", "forward", "reference_compiled"]["status"] == "ok"
    # Compile does not apply to decoding with mlx-lm's KVCache: said so, not faked.
    for method in ("step_loop", "generate_step"):
        assert by["decode", method, "reference_compiled"]["status"] == "n/a"
        assert by["decode", method, "reference_compiled"]["error"] == COMPILED_DECODE_NA

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_prints_the_table(quick_run, capsys):
    # The module fixture ran first; run the table-only path again to capture it.
    rc = bench.main(["--quick", "--only", "models"])
    out = capsys.readouterr().out
    assert "Models: tokens/s" in out
    assert "reference_compiled" in out and "vs reference" in out
    assert "mlx 0." in out and "backend" in out
    if "Device(gpu" not in out:
        assert "Apple-GPU (Metal) speed is unmeasured" in out
    assert rc in (0, 1)


def test_unknown_config_is_rejected(capsys):
    assert bench.main(["--configs", "no-such-config"]) == 2
    assert "unknown config" in capsys.readouterr().err


def test_help_through_the_router(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--json", "--plot", "--model", "--quick", "--dtype", "--prompt-len", "--decode-tokens", "--no-generate-step"):
        assert flag in out


def test_checkpoint_mode(tmp_path, capsys):
    """``--model PATH``: the reference from mlx_lm.load, the fused model from tk.load."""
    from checkpoints import write_checkpoint

    from talkie_kernels.configs import CONFIGS

    ckpt = write_checkpoint(tmp_path / "ckpt", CONFIGS["talkie-2l-256"], "bfloat16", seed=1)
    js = tmp_path / "ckpt.json"
    rc = bench.main(["--model", str(ckpt), "--only", "models", "--quick", "--json", str(js)])
    records = json.loads(js.read_text())["records"]
    assert rc == (1 if any(r["status"] == "error" for r in records) else 0)
    assert {r["kind"] for r in records} == {"model"}
    for r in records:
        assert r["model"] == "ckpt" and r["dtype"] == "bfloat16"
        assert r["checkpoint"] == str(ckpt.resolve())
    ref = [r for r in records if r["impl"] == "reference"]
    assert len(ref) == 3 and all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in ref)
    assert "bfloat16 weights" in capsys.readouterr().out
