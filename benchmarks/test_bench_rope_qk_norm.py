"""``rope_qk_norm``: eager plain MLX vs mx.compile'd plain MLX vs the fused op, decode (L=1) and prefill (L=512), bf16.

RoPE + QK RMSNorm + head gain on q and k: (1, 40, L, 128) each (targets: prefill >= 10x, decode >= 2x plain MLX).
The baseline is ``talkie_kernels.reference.rope_qk_norm``; the fused op is ``talkie_kernels.rope_qk_norm``
(dispatched to the current backend, recorded in extra_info).
"""

import pytest

from talkie_kernels.bench.timing import IMPLS, PHASES


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_rope_qk_norm(op_bench, impl, phase):
    op_bench("rope_qk_norm", impl, phase)
