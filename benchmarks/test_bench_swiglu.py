"""``swiglu``: eager plain MLX vs mx.compile'd plain MLX vs the fused op, decode (L=1) and prefill (L=512), bf16.

The MLP's gated activation silu(gate)·x on the two halves of one projection: (1, L, 13696)
(target: prefill >= 10x plain MLX). The baseline is ``talkie_kernels.reference.swiglu``; the fused
op is ``talkie_kernels.swiglu`` (dispatched to the current backend, recorded in extra_info).
"""

import pytest

from talkie_kernels.bench.timing import IMPLS, PHASES


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_swiglu(op_bench, impl, phase):
    op_bench("swiglu", impl, phase)
