"""`talkie-kernels bench --quick`: the tables, the JSON records and the plot are produced.

Only the shape of the output is checked here; timings are never asserted on
(the numbers of a tiny run on a noisy machine mean nothing).
"""

from __future__ import annotations

import contextlib
import io
import json
import time

import pytest
from mlx.utils import tree_flatten

import talkie_kernels as tk
from talkie_kernels import cli
from talkie_kernels.bench import cli as bench
from talkie_kernels.bench import linear as bench_linear
from talkie_kernels.bench import settings
from talkie_kernels.bench.model_runs import run_models
from talkie_kernels.bench.models import COMPILED_DECODE_NA, MODEL_WORKLOADS
from talkie_kernels.bench.settings import BLOCK_13B, BLOCK_13B_FORMATS, QUICK_FORMATS, Settings
from talkie_kernels.bench.timing import IMPLS, OPS, interleaved


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    js, png = out / "bench.json", out / "speedups.png"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        rc = cli.main(["bench", "--quick", "--linear-shapes", "--json", str(js), "--plot", str(png)])
    return rc, js, png, printed.getvalue()


def test_quick_run_says_where_it_wrote(quick_run):
    _, js, png, printed = quick_run
    assert f"wrote {js.resolve()}" in printed and f"wrote {png.resolve()}" in printed


def test_quick_run_writes_json_and_plot(quick_run):
    rc, js, png, _ = quick_run
    doc = json.loads(js.read_text())
    records, meta = doc["records"], doc["metadata"]
    # An implementation that fails, or a bandwidth that cannot be measured, is
    # reported (exit code 1), never given a number.
    errors = [r for r in records if r["status"] == "error"]
    bandwidth = meta["read_bandwidth"]
    assert rc == (1 if errors or "error" in bandwidth else 0)
    for r in errors:
        assert r["error"] and r["median_ms"] is None and r["speedup_vs_reference"] is None
    if meta["backend"] != "reference":
        # With kernels available every fused row has a number, and the bench measured the bandwidth.
        assert not errors, errors
        assert bandwidth["gbps"] > 0 and bandwidth["nbytes"] >= 512 << 20 and bandwidth["threads"] >= 1
        # Measured at the start and the end of the run; the higher is the floors' bandwidth.
        assert bandwidth["gbps"] == max(bandwidth["gbps_start"], bandwidth["gbps_end"])
        nodes = meta["graph_nodes_per_decoded_token"]["talkie-2l-256"]
        assert 0 < nodes["fused"] < nodes["reference"]

    for key in ("date", "mlx", "mlx_lm", "device", "backend", "machine", "cpu_count"):
        assert meta[key] not in (None, "")
    for r in records:
        for key in ("model", "impl", "phase", "median_ms", "samples", "device", "backend", "mlx"):
            assert key in r
        assert r["impl"] in IMPLS and r["phase"] in ("prefill", "decode")
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert r["samples"] >= 1
            # The prefill GEMM table times the fused op only (MLX's q4 takes ~100 s per 13B-shape call).
            if r["kind"] == "linear_prefill":
                assert r["speedup_vs_reference"] is None
            else:
                assert r["speedup_vs_reference"] > 0

    ops = [r for r in records if r["kind"] == "op"]
    assert {(r["op"], r["phase"], r["impl"]) for r in ops} == {
        (op, ph, impl) for op in OPS for ph in ("prefill", "decode") for impl in IMPLS
    }
    for r in ops:
        assert r["dtype"] == "bfloat16" and len(r["shape"]) in (3, 4)
        if r["impl"] == "reference":
            assert r["status"] == "ok"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_models_at_each_format(quick_run):
    _, js, _, _ = quick_run
    doc = json.loads(js.read_text())
    models = [r for r in doc["records"] if r["kind"] == "model"]
    by = {(r["dtype"], r["phase"], r["method"], r["impl"]): r for r in models}
    assert len(by) == len(models)
    # float32: every workload and implementation; quantized: prefill and the
    # step-loop decode, reference and fused (compiled and generate_step would
    # time the same MLX matmuls again).
    expected = {("float32", *w, impl) for w in MODEL_WORKLOADS for impl in IMPLS}
    expected |= {("q4", p, m, impl) for p, m in MODEL_WORKLOADS[:2] for impl in ("reference", "fused")}
    assert QUICK_FORMATS == ("float32", "q4") and set(by) == expected
    for key, r in by.items():
        if key[3] == "reference" or (key[3] == "reference_compiled" and key[1] == "prefill"):
            assert r["status"] == "ok" and r["tokens_per_s"] > 0
    # Compile does not apply to decoding with mlx-lm's KVCache: said so, not faked.
    for method in ("step_loop", "generate_step"):
        r = by["float32", "decode", method, "reference_compiled"]
        assert r["status"] == "n/a" and r["error"] == COMPILED_DECODE_NA
    # generate_step's fused row carries the synchronous loop timed in its rounds.
    piped = by["float32", "decode", "generate_step", "fused"]
    if piped["status"] == "ok":
        assert piped["sync_tokens_per_s_local"] > 0 and piped["vs_sync_local"] > 0
    # Every decode row carries its floor: weight bytes per token ÷ the measured bandwidth.
    bandwidth = doc["metadata"]["read_bandwidth"]
    for r in models:
        if r["phase"] == "decode":
            assert r["weight_bytes_per_token"] > 0
            if "error" not in bandwidth:
                assert r["floor_tokens_per_s"] == pytest.approx(bandwidth["gbps"] * 1e9 / r["weight_bytes_per_token"])
                if r["status"] == "ok":
                    assert r["of_floor"] == pytest.approx(r["tokens_per_s"] / r["floor_tokens_per_s"])
    # 4-bit weights are smaller than fp32 ones (embedding aside, quantized the same way).
    assert by["q4", "decode", "step_loop", "fused"]["weight_bytes_per_token"] < \
        by["float32", "decode", "step_loop", "fused"]["weight_bytes_per_token"] / 4
    assert any("q4: fused logits vs reference" in n for n in doc["notes"])


def test_quick_run_linear_table(quick_run):
    _, js, _, _ = quick_run
    doc = json.loads(js.read_text())
    rows = [r for r in doc["records"] if r["kind"] == "linear"]
    assert {(r["name"], r["dtype"], r["impl"]) for r in rows} == {
        (name, fmt, impl) for name, _, _ in bench_linear.QUICK_SHAPES for fmt in bench_linear.FORMATS
        for impl in bench_linear.IMPLS
    }
    bandwidth = doc["metadata"]["read_bandwidth"]
    for r in rows:
        # The tiny --quick shapes stand in for Talkie 13B's: no target reads them.
        assert r["model"] == "quick stand-in" and r["shape"][0] == 1 and r["weight_bytes"] > 0
        if r["status"] == "ok":
            assert r["gbps"] == pytest.approx(r["weight_bytes"] / (r["median_ms"] / 1e3) / 1e9)
            assert r["calls_per_sample"] >= 1
            if "error" not in bandwidth:
                # Of the probe beside the row (the run's own where the row has none).
                assert r["read_gbps_local"] > 0
                assert r["pct_of_read_bandwidth"] == pytest.approx(100 * r["gbps"] / r["read_gbps_local"])
    targets = {t["target"]: t for t in doc["targets"]}
    for fmt in bench_linear.FORMATS:
        label = f"linear at Talkie 13B decode shapes, {fmt}: worst shape, of read bandwidth"
        assert targets[label]["status"] == "not run (--linear-shapes, not --quick)"
    assert targets["one-block 13B-width q4 decode: time per token ÷ its floor"]["status"] == "not run (--block-13b)"


def test_quick_run_prefill_table(quick_run):
    _, js, _, _ = quick_run
    doc = json.loads(js.read_text())
    rows = [r for r in doc["records"] if r["kind"] == "linear_prefill"]
    assert {(r["name"], r["dtype"], r["impl"]) for r in rows} == {
        (name, fmt, "fused") for name, _, _ in bench_linear.QUICK_SHAPES for fmt in bench_linear.PREFILL_FORMATS
    }
    peak = doc["metadata"]["fma_peak"]
    if doc["metadata"]["backend"] != "reference":
        # Measured at the start and the end of the run, at the kernels' instruction set; the higher is kept.
        assert peak["gflops"] == max(peak["gflops_start"], peak["gflops_end"]) > 0 and peak["isa"]
    for r in rows:
        M, K, N = r["shape"]
        assert r["model"] == "quick stand-in" and M == bench_linear.QUICK_PREFILL_M
        if r["status"] == "ok":
            assert r["gflops"] == pytest.approx(2 * M * K * N / (r["median_ms"] / 1e3) / 1e9)
            if "error" not in peak:
                assert r["fma_peak_local"] > 0
                assert r["pct_of_fma_peak"] == pytest.approx(100 * r["gflops"] / r["fma_peak_local"])
    targets = {t["target"]: t for t in doc["targets"]}
    label = "prefill GEMM at Talkie 13B shapes, M = 512, bfloat16: worst shape, of the FMA peak"
    assert targets[label]["status"] == "not run (--linear-shapes, not --quick)"


def test_quick_run_prints_the_tables(quick_run, capsys):
    # The module fixture ran first; run the table-only paths again to capture them.
    rc = bench.main(["--quick", "--only", "models", "--dtypes", "q4"])
    out = capsys.readouterr().out
    assert "Models: tokens/s" in out and "floor:" in out and "of floor" in out
    assert "vs reference" in out and "n = timed samples per row" in out
    assert "mlx 0." in out and "backend" in out and ("read bandwidth" in out)
    if "Device(gpu" not in out:
        assert "Apple-GPU (Metal) speed is unmeasured" in out
    assert rc in (0, 1)
    rc = bench.main(["--quick", "--only", "linear"])
    out = capsys.readouterr().out
    assert "linear at Talkie 13B's decode shapes" in out and "GB/s" in out and "of read BW" in out
    # The probe's line names its instruction: the FMA, or v4-bf16's vdpbf16ps.
    peak = f"{tk.native.ops.fma_peak_instruction()} peak" if tk.native_available() else "fp32 FMA peak"
    assert "linear prefill GEMM" in out and "of FMA peak" in out and peak in out
    assert rc in (0, 1)


def test_quick_depths_run(tmp_path, capsys):
    # --depths --quick: the depth table, the op table, the prefill share, the
    # KV append and the depth plot; the 13B-width targets say what measures them.
    js, png = tmp_path / "d.json", tmp_path / "d.png"
    rc = bench.main(["--quick", "--only", "ops", "--depths", "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Decode by cached positions" in out and "update_and_fetch per token" in out and "attention share" in out
    doc = json.loads(js.read_text())
    kinds = {r["kind"] for r in doc["records"]}
    assert {"depth", "attention", "attention_share", "kv_append"} <= kinds
    depth = [r for r in doc["records"] if r["kind"] == "depth"]
    assert [r["depth"] for r in depth] == [0, 16] and all(r["floor_ms"] > 0 and r["tokens_per_s"] > 0 for r in depth)
    assert png.with_suffix(".depths.png").stat().st_size > 0
    targets = {t["target"]: t for t in doc["targets"]}
    share = targets["attention share of a 2048-token prefill, 13B width bf16"]
    assert share["status"] == "not run (--depths, not --quick)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depths", "0,-5"], "argument --depths: expected comma-separated integers >= 0, got '0,-5'"),
        (["--configs", "no-such-config"], "argument --configs: unknown config(s) ['no-such-config']"),
        (["--configs", ","], "argument --configs: names no config"),
        (["--dtypes", "float32,q5x"], "argument --dtypes: unknown weight format(s) ['q5x']"),
        (["--op-dtype", "int8"], "argument --op-dtype: invalid choice: 'int8'"),
        (["--only", "everything"], "argument --only: invalid choice"),
        (["--seed", "-1"], "argument --seed: -1 is not an integer >= 0 and < 2**63"),
        (["--seed", str(2**63)], "argument --seed"),
        (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["--rounds", "0"], "argument --rounds: 0 is not an integer >= 1"),
        (["--rounds", "-2"], "argument --rounds: -2 is not an integer >= 1"),
        (["--prompt-len", "0"], "argument --prompt-len: 0 is not an integer >= 1"),
        (["--prompt-len", "-16"], "argument --prompt-len"),
        (["--decode-tokens", "0"], "argument --decode-tokens: 0 is not an integer >= 1"),
        (["--decode-prompt", "-1"], "argument --decode-prompt: -1 is not an integer >= 1"),
        (["--model", "/no/such/checkpoint"], "--model /no/such/checkpoint: no such checkpoint directory"),
        (["--model", "."], "no config.json (not a checkpoint directory)"),
        (["--model", ".", "--dtypes", "q4"], "do not apply with --model"),
        (["--json", "/no/such/dir/out.json"], "--json /no/such/dir/out.json: directory /no/such/dir does not exist"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: talkie-kernels bench") and message in err
    assert "Traceback" not in err


def test_settings_of_the_flags():
    parse = bench.build_parser().parse_args
    s = Settings.from_args(parse([]))
    assert [(r.name, r.prompt_len, r.formats) for r in s.models] == [
        ("talkie-8l-512", 64, ["float32", "bfloat16", "q4", "q8"])]
    assert not s.do_linear and s.decode_lengths(False) == (32, 16) and s.decode_lengths(True) == (4, 4)
    s = Settings.from_args(parse(["--block-13b", "--linear-shapes", "--dtypes", "bfloat16"]))
    assert [(r.name, r.formats) for r in s.models] == [("talkie-8l-512", ["bfloat16"]),
                                                       (BLOCK_13B, list(BLOCK_13B_FORMATS))]
    assert BLOCK_13B_FORMATS == ("q4", "q8", "bfloat16")
    assert s.workloads(s.models[1], "q4") == [("decode", "step_loop", ("reference", "fused"))]
    assert not s.models[1].fused_only and not s.all_isas
    # Four blocks at 13B width: decode only, fused alone.
    s4 = Settings.from_args(parse(["--configs", "talkie-4l-13b-width", "--dtypes", "q4,bfloat16", "--all-isas"]))
    (run,) = s4.models
    assert (run.name, run.formats, run.fused_only, s4.all_isas) == ("talkie-4l-13b-width", ["q4", "bfloat16"], True, True)
    assert s4.workloads(run, "q4") == [("decode", "step_loop", ("reference", "fused"))]
    # ... and with --prompt-len, a prefill of that many tokens before the decode
    # (fused alone: mlx-lm's would take minutes); one block at 13B width stays decode only.
    sp = Settings.from_args(parse(["--configs", "talkie-4l-13b-width,talkie-1l-13b-width", "--dtypes", "q4",
                                   "--prompt-len", "512"]))
    four, one = sp.models
    assert (four.prompt_len, one.prompt_len) == (512, 0)
    assert [w[:2] for w in sp.workloads(four, "q4")] == [("prefill", "forward"), ("decode", "step_loop")]
    assert sp.workloads(one, "q4") == [("decode", "step_loop", ("reference", "fused"))]
    assert s.do_linear and s.linear_shapes == bench_linear.SHAPES_13B
    assert [(n, K, N) for n, K, N in bench_linear.SHAPES_13B] == [
        ("attn_qkv", 5120, 15360), ("attn_resid", 5120, 5120), ("mlp_gate_linear", 5120, 27392),
        ("mlp_resid", 13696, 5120), ("lm_head", 5120, 65540)]
    s = Settings.from_args(parse(["--configs", "talkie-8l-512,talkie-2l-256"]))
    assert [(r.name, r.prompt_len) for r in s.models] == [("talkie-8l-512", 64), ("talkie-2l-256", 512)]
    s = Settings.from_args(parse(["--only", "linear"]))
    assert s.do_linear and not s.do_models and not s.do_ops


def test_slow_cases_are_sampled_fewer_times():
    """A case whose warm-up takes seconds gets one or two samples; its warm-up counts only if named."""
    def case(seconds):
        return lambda: (lambda: time.sleep(seconds))

    res = interleaved({"fast": case(0.001), "slow": case(0.06), "slow_reused": case(0.06)},
                      rounds=7, min_rounds=3, budget_s=0.5, slow_s=0.05, reuse_warmup=("slow_reused",))
    assert len(res["fast"].samples_ms) == 7
    assert len(res["slow"].samples_ms) == 2 and len(res["slow_reused"].samples_ms) == 2
    res = interleaved({"slow": case(0.06)}, rounds=7, budget_s=0.05, slow_s=0.05, reuse_warmup=("slow",))
    assert len(res["slow"].samples_ms) == 1  # only the warm-up, kept as the sample
    res = interleaved({"slow": case(0.06)}, rounds=4)  # no budget: exact
    assert len(res["slow"].samples_ms) == 4


def test_read_probe_interleaves_with_a_row():
    """A linear row's bandwidth is read in its own rounds: one read of the kept buffer per round."""
    from talkie_kernels.bench.probes import ReadProbe

    probe = ReadProbe(1 << 20)
    res = interleaved({"kernel": lambda: (lambda: time.sleep(0.001)), "probe": probe.case}, rounds=5)
    assert len(res["kernel"].samples_ms) == 5 and len(probe.values) == 1 + 5  # its warm-up read, then one per round
    assert all(0 < g < float("inf") for g in probe.values)
    reads = probe.values[1:]
    assert probe.take_median() == sorted(reads)[2] and probe.values == [] and probe.take_median() is None


def test_13b_width_decode_floor_is_read_in_its_rounds(tmp_path, monkeypatch):
    """The decode rows that targets hold to their floor (13B-width configs; here a small
    stand-in named one) read it against the read probe in their own rounds; other rows
    (prefill) carry none and keep the run's bandwidth."""
    from talkie_kernels.bench import model_runs

    monkeypatch.setattr(model_runs, "WIDTH_13B", {"talkie-2l-256"})
    js = tmp_path / "b.json"
    bench.main(["--only", "models", "--quick", "--configs", "talkie-2l-256", "--dtypes", "q4",
                "--no-generate-step", "--json", str(js)])
    records = [r for r in json.loads(js.read_text())["records"] if r["kind"] == "model"]
    decode = [r for r in records if r["phase"] == "decode"]
    assert decode and all(r["read_gbps_local"] > 0 for r in decode)
    for r in decode:
        assert r["floor_tokens_per_s"] == pytest.approx(r["read_gbps_local"] * 1e9 / r["weight_bytes_per_token"])
    assert all("read_gbps_local" not in r for r in records if r["phase"] == "prefill")


def test_fma_probe_stops_with_the_row():
    """A prefill row's FMA peak is read only in rounds where the row still takes samples: a slow
    GEMM cut to min_rounds by the budget leaves no trailing probe reads in its median."""
    from talkie_kernels.bench.probes import FmaProbe

    probe = FmaProbe(1 << 20)
    res = interleaved({"gemm": lambda: (lambda: time.sleep(0.02)), "probe": probe.case}, rounds=6, min_rounds=2,
                      budget_s=0.01, companions=("probe",))
    assert len(res["gemm"].samples_ms) == 2 and len(probe.values) == 1 + 2
    assert all(0 < g < float("inf") for g in probe.values) and probe.take_median() is not None


def test_linear_weights_and_their_rotation():
    """Each format of one weight in turn, quantized as mlx_lm.convert -q does; copies that overflow the cache."""
    import mlx.core as mx

    got = [(fmt, [a.dtype for a in arrays], kwargs) for fmt, arrays, kwargs in bench_linear.weights(128, 96, ("bfloat16", "q4", "q8"))]
    assert got == [
        ("bfloat16", [mx.bfloat16], {}),
        ("q4", [mx.uint32, mx.bfloat16, mx.bfloat16], {"group_size": 64, "bits": 4}),
        ("q8", [mx.uint32, mx.bfloat16, mx.bfloat16], {"group_size": 64, "bits": 8}),
    ]
    _, arrays, _ = next(bench_linear.weights(1024, 1024, ["q4"]))
    copies = bench_linear.rotation(arrays)
    total = len(copies) * bench_linear.nbytes(arrays)
    assert total >= bench_linear.ROTATION_FACTOR * bench_linear.last_level_cache_bytes() > total - bench_linear.nbytes(arrays)
    assert all(mx.array_equal(c[0], arrays[0]) for c in copies)


def test_help_through_the_router(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--json", "--plot", "--model", "--quick", "--dtypes", "--prompt-len", "--decode-tokens",
                 "--no-generate-step", "--linear-shapes", "--block-13b", "--all-isas", "--only"):
        assert flag in out


def test_checkpoint_mode(tmp_path, capsys):
    """``--model PATH``: the reference from mlx_lm.load, the fused model from tk.load."""
    from checkpoints import write_checkpoint

    from talkie_kernels.configs import CONFIGS

    ckpt = write_checkpoint(tmp_path / "ckpt", CONFIGS["talkie-2l-256"], "bfloat16", seed=1)
    js = tmp_path / "ckpt.json"
    rc = bench.main(["--model", str(ckpt), "--only", "models", "--quick", "--json", str(js)])
    doc = json.loads(js.read_text())
    records = doc["records"]
    assert rc == (1 if any(r["status"] == "error" for r in records) or "error" in doc["metadata"]["read_bandwidth"] else 0)
    assert {r["kind"] for r in records} == {"model"}
    for r in records:
        assert r["model"] == "ckpt" and r["dtype"] == "bfloat16"
        assert r["checkpoint"] == str(ckpt.resolve())
    ref = [r for r in records if r["impl"] == "reference"]
    assert len(ref) == 3 and all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in ref)
    assert "bfloat16" in capsys.readouterr().out


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    from checkpoints import write_checkpoint

    from talkie_kernels.configs import CONFIGS

    return write_checkpoint(tmp_path_factory.mktemp("bench_ckpt") / "hf", CONFIGS["talkie-2l-256"], "bfloat16", seed=2)


def _bench_checkpoint(path, tmp_path, capsys):
    js = tmp_path / f"{path.name}.json"
    rc = bench.main(["--model", str(path), "--only", "models", "--quick", "--no-generate-step", "--json", str(js)])
    doc = json.loads(js.read_text())
    records = doc["records"]
    assert rc == (1 if any(r["status"] == "error" for r in records) or "error" in doc["metadata"]["read_bandwidth"] else 0)
    assert {r["phase"] for r in records} == {"prefill", "decode"}
    fused = [r for r in records if r["impl"] == "fused"]
    assert len(fused) == 2 and all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in fused)
    decode = [r for r in fused if r["phase"] == "decode"]
    assert decode[0]["weight_bytes_per_token"] > 0  # measured against its floor
    return records, doc["notes"], capsys.readouterr().out


def test_checkpoint_mode_puts_both_models_in_huge_pages(tmp_path, monkeypatch):
    """``--model``: mlx_lm.load's reference gets its weights in 2 MiB pages, as
    talkie_kernels.load leaves the fused model's, so neither reads through 4 KiB pages."""
    from checkpoints import write_checkpoint

    from talkie_kernels.bench import models as M
    from talkie_kernels.configs import CONFIGS

    ckpt = write_checkpoint(tmp_path / "ckpt", CONFIGS["talkie-2l-256"], "bfloat16", seed=1)
    given = []
    monkeypatch.setattr(M, "huge_pages", lambda tree: given.append(tree) or 0)
    models = M.load_models(ckpt)
    ref = dict(tree_flatten(models["reference"].parameters()))
    assert any(dict(tree_flatten(t)).keys() == ref.keys() for t in given)


@pytest.mark.parametrize("writer", ["mlx_lm.convert", "mlx_lm.convert -q"])
def test_checkpoint_mode_on_mlx_lm_convert_outputs(hf_checkpoint, tmp_path, capsys, writer):
    """mlx_lm.load reads these: the fused model is compared against mlx-lm's."""
    from mlx_lm.convert import convert

    dst = tmp_path / writer.replace(" ", "").replace(".", "_")
    convert(str(hf_checkpoint), str(dst), quantize=writer.endswith("-q"))
    records, notes, out = _bench_checkpoint(dst, tmp_path, capsys)
    ref = [r for r in records if r["impl"] == "reference"]
    assert len(ref) == 2 and all(r["status"] == "ok" for r in ref)
    assert all(r["speedup_vs_reference"] for r in records if r["impl"] == "fused")
    assert not any("no mlx-lm comparison" in n for n in notes)
    if writer.endswith("-q"):
        assert all(r["dtype"].endswith("4-bit") for r in records)


@pytest.mark.parametrize("quantize", [True, False], ids=["-q", "float"])
def test_checkpoint_mode_on_talkie_kernels_convert_outputs(hf_checkpoint, tmp_path, capsys, quantize):
    """Fused keys (and a quantized lm_head): mlx_lm.load cannot read it, so the fused
    model is measured alone against its floor, and the output says why."""
    dst = tmp_path / ("tkq" if quantize else "tkf")
    assert cli.main(["convert", "--hf-path", str(hf_checkpoint), "--mlx-path", str(dst), *(["-q"] if quantize else [])]) == 0
    records, notes, out = _bench_checkpoint(dst, tmp_path, capsys)
    for r in records:
        if r["impl"] != "fused":
            assert r["status"] == "n/a" and "mlx_lm.load cannot read this checkpoint" in r["error"]
    assert not any(r["speedup_vs_reference"] for r in records)
    (note,) = [n for n in notes if "no mlx-lm comparison possible" in n]
    assert "talkie-kernels convert output" in note and "against its floor" in note
    assert "no mlx-lm comparison possible" in " ".join(out.split())


def test_checkpoint_mode_on_an_unreadable_checkpoint(hf_checkpoint, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(hf_checkpoint / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(SystemExit) as info:
        bench.main(["--model", str(bad), "--only", "models", "--quick"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "neither mlx_lm.load" in err and "nor talkie_kernels.load" in err and "Traceback" not in err


@pytest.mark.skipif(not tk.native_available(), reason="the native extension is not built")
def test_all_isas_measures_every_table_from_v3_up(tmp_path):
    """``--all-isas``: each row and each target names its instruction set; the table in use is restored."""
    isas = [t for t in tk.native.ops.available_isas() if t != "base"]
    if len(isas) < 2:
        pytest.skip(f"this CPU runs {isas or 'only the baseline'}: one table, nothing to compare")
    before = tk.native.ops.isa()
    js = tmp_path / "isas.json"
    bench.main(["--quick", "--only", "linear", "--all-isas", "--json", str(js)])
    doc = json.loads(js.read_text())
    assert tk.native.ops.isa() == before
    assert doc["metadata"]["isas"] == isas
    for isa in isas:
        rows = [r for r in doc["records"] if r["isa"] == isa]
        assert {(r["name"], r["dtype"], r["impl"]) for r in rows} == {
            (name, fmt, impl) for name, _, _ in bench_linear.QUICK_SHAPES for fmt in bench_linear.FORMATS
            for impl in bench_linear.IMPLS}
        labels = [t["target"] for t in doc["targets"] if t["target"].endswith(f" ({isa})")]
        assert len(labels) == len(doc["targets"]) // len(isas)


@pytest.mark.skipif(not tk.native_available(), reason="the native extension is not built")
def test_fused_only_model_has_no_reference_rows(monkeypatch):
    """A FUSED_ONLY config runs the fused model alone; its reference rows are n/a, saying why."""
    monkeypatch.setattr(settings, "FUSED_ONLY", ("talkie-2l-256",))
    args = bench.build_parser().parse_args(["--quick", "--configs", "talkie-2l-256", "--dtypes", "q4"])
    s = Settings.from_args(args)
    records = run_models(s, lambda desc: None, notes := [], {})
    ref = [r for r in records if r["impl"] == "reference"]
    fused = [r for r in records if r["impl"] == "fused"]
    assert ref and all(r["status"] == "n/a" and "mlx-lm not timed" in r["error"] for r in ref)
    assert fused and all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in fused)
    assert any("mlx-lm not timed" in n for n in notes)


@pytest.mark.skipif(not tk.native_available(), reason="the native extension is not built")
def test_isas_names_the_tables(tmp_path, capsys):
    """``--isas``: just the named tables; unknown names and both flags together are argparse errors."""
    isa = tk.native.ops.available_isas()[-1]
    js = tmp_path / "isa.json"
    bench.main(["--quick", "--only", "linear", "--isas", isa, "--json", str(js)])
    doc = json.loads(js.read_text())
    assert doc["metadata"]["isas"] == [isa] and {r["isa"] for r in doc["records"]} == {isa}
    for argv, message in ((["--isas", "no-such-isa"], "argument --isas: unknown instruction set(s) ['no-such-isa']"),
                          (["--isas", isa, "--all-isas"], "--all-isas and --isas both choose the kernel tables")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--quick", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
