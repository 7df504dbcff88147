"""``rope``: eager plain MLX vs mx.compile'd plain MLX vs the fused op, decode (L=1) and prefill (L=512), bf16.

Talkie's inverse-rotation RoPE on one of q/k: (1, 40, L, 128), decode at position 512.
The baseline is ``talkie_kernels.reference.rope``; the fused op is ``talkie_kernels.rope``
(dispatched to the current backend, recorded in extra_info).
"""

import pytest

from talkie_kernels.bench.timing import IMPLS, PHASES


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_rope(op_bench, impl, phase):
    op_bench("rope", impl, phase)
