"""The DESIGN §8 target table of `talkie-kernels bench`, on hand-made records."""

from __future__ import annotations

from talkie_kernels import bench
from talkie_kernels.benchmarking import MATMULS_ONLY


def _decode(impl, ms):
    return {"kind": "model", "model": "talkie-8l-512", "phase": "decode", "method": "step_loop",
            "dtype": "float32", "impl": impl, "median_ms": ms, "tokens": 32}


def _targets(fused_ms, matmul_ms):
    records = [_decode("reference", 100.0), _decode("fused", fused_ms), _decode(MATMULS_ONLY, matmul_ms)]
    bench._add_speedups(records)
    rows = {t["target"]: t for t in bench.check_targets(records)}
    return rows["decode tok/s, talkie-8l-512 fp32 vs mlx-lm"]


def test_decode_target_passes_and_reports_its_ceiling():
    row = _targets(fused_ms=80.0, matmul_ms=50.0)
    assert row["status"] == "pass" and row["measured"] == 1.25 and row["ceiling"] == 2.0


def test_decode_target_fail_says_when_the_matmuls_alone_forbid_it():
    row = _targets(fused_ms=95.0, matmul_ms=90.0)  # ceiling 1.11x < floor 1.2x
    assert row["status"] == "FAIL: ceiling < floor"
    row = _targets(fused_ms=95.0, matmul_ms=50.0)  # fusion could, but did not
    assert row["status"] == "FAIL"


def test_ceiling_note_quotes_ms_per_token():
    note = bench._ceiling_note("m", [dict(_decode("reference", 64.0)), dict(_decode(MATMULS_ONLY, 32.0))])
    assert "1.00 ms/token" in note and "2.00 ms/token" in note and "at most 2.00×" in note
