"""``rms_norm``: eager plain MLX vs mx.compile'd plain MLX vs the fused op, decode (L=1) and prefill (L=512), bf16.

Weightless RMSNorm over the hidden size: (1, L, 5120).
The baseline is ``talkie_kernels.reference.rms_norm``; the fused op is ``talkie_kernels.rms_norm``
(dispatched to the current backend, recorded in extra_info).
"""

import pytest

from talkie_kernels.bench.timing import IMPLS, PHASES


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_rms_norm(op_bench, impl, phase):
    op_bench("rms_norm", impl, phase)
