"""``talkie_kernels.load`` needs the memory ``mlx_lm.load`` needs.

The fused model concatenates attn_query/key/value and mlp_gate/mlp_linear at
load; done naively, every part is held next to its concatenation (1.68x
mlx-lm's peak). Each load runs in a fresh subprocess (MLX's peak memory and
the process's max RSS are per process) on a bf16 checkpoint shaped like Talkie 13B in miniature:
40 layers, Talkie's vocabulary, hidden 512 (~370 MB).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from talkie_kernels.configs import CONFIGS

from checkpoints import write_checkpoint

# Talkie 13B's 40 layers and vocabulary; a tenth of its width.
CONFIG = dict(CONFIGS["talkie-13b"], hidden_size=512, num_attention_heads=4, intermediate_size=1408)

# Load, then one short forward (a lazy load reads the weights there).
MEASURE = """
import json, resource, sys
import mlx.core as mx
loader, path, lazy = sys.argv[1], sys.argv[2], sys.argv[3] == "lazy"
if loader == "talkie_kernels":
    from talkie_kernels import load
else:
    from mlx_lm import load
mx.reset_peak_memory()
model, _ = load(path, lazy=lazy)
mx.eval(model(mx.array([[1, 2, 3, 4, 5]])))
try:
    # Linux: this process's own high-water mark. ru_maxrss would start from the
    # pytest process's, which a forked child inherits.
    status = open("/proc/self/status").read()
    rss = int(status.split("VmHWM:")[1].split()[0]) * 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS
print(json.dumps({"peak": mx.get_peak_memory(), "rss": rss}))
"""


@pytest.fixture(scope="module")
def bf16_path(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("memory") / "bf16", CONFIG, "bfloat16")


def measure(loader: str, path, lazy: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, loader, str(path), lazy],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("lazy", ["eager", "lazy"])
def test_load_peak_memory_within_5_percent_of_mlx_lm(bf16_path, lazy):
    ours = measure("talkie_kernels", bf16_path, lazy)
    theirs = measure("mlx_lm", bf16_path, lazy)
    size = (bf16_path / "model.safetensors").stat().st_size
    peak, rss = ours["peak"] / theirs["peak"], ours["rss"] / theirs["rss"]
    print(f"{lazy}, {size / 1e6:.0f} MB checkpoint: MLX peak {ours['peak'] / 1e6:.0f} vs "
          f"{theirs['peak'] / 1e6:.0f} MB ({peak:.3f}x), max RSS {ours['rss'] / 1e6:.0f} vs "
          f"{theirs['rss'] / 1e6:.0f} MB ({rss:.3f}x)")
    assert peak <= 1.05 and rss <= 1.05
