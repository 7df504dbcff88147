"""``residual_norm``: eager plain MLX vs mx.compile'd plain MLX vs the fused op, decode (L=1) and prefill (L=512), bf16.

Gated residual add with the gated embedding skip, then RMSNorm: (1, L, 5120) (target: prefill >= 3x plain MLX).
The baseline is ``talkie_kernels.reference.residual_norm``; the fused op is ``talkie_kernels.residual_norm``
(dispatched to the current backend, recorded in extra_info).
"""

import pytest

from talkie_kernels.bench.timing import IMPLS, PHASES


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_residual_norm(op_bench, impl, phase):
    op_bench("residual_norm", impl, phase)
