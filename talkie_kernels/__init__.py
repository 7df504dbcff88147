"""talkie_kernels: fused MLX kernels for the Talkie 13B language model.

Public ops dispatch on the device of the default stream (arguments checked once,
by ``_checks.<op>_args``, for every backend):

* GPU with Metal available -> ``talkie_kernels.metal`` (``mx.fast.metal_kernel``);
* CPU -> the native extension (``talkie_kernels._native``, MLX Primitives);
  without it, a one-time ``RuntimeWarning`` and ``talkie_kernels.reference``;
* anything else -> ``talkie_kernels.reference``.
"""

from __future__ import annotations

import warnings

import mlx.core as mx

from . import _checks as C
from . import native, reference

__version__ = "0.1.0"

__all__ = [
    "rms_norm",
    "rope",
    "rope_qk_norm",
    "residual_norm",
    "swiglu",
    "linear",
    "scaled_dot_product_attention",
    "quantized_scaled_dot_product_attention",
    "native_available",
    "backend",
    "load",
    "sharded_load",
    "reference",
]

_warned = False


def native_available() -> bool:
    """True when the compiled CPU extension loaded."""
    return native.available()


def backend() -> str:
    """The implementation the top-level ops use right now: 'metal', 'native' or 'reference'."""
    device = mx.default_device()
    if device.type == mx.gpu and mx.metal.is_available():
        return "metal"
    if device.type == mx.cpu and native_available():
        return "native"
    return "reference"


def _impl():
    """The backend module for the default device; warns once when a CPU stream
    has to use the reference because the extension did not load."""
    global _warned
    name = backend()
    if name == "metal":
        from . import metal

        return metal
    if name == "native":
        return native
    if mx.default_device().type == mx.cpu and not _warned:
        _warned = True
        warnings.warn(
            "talkie_kernels: the native CPU extension is not available "
            f"({native.load_error}); using the plain-MLX reference, which is slower.",
            RuntimeWarning,
            stacklevel=3,
        )
    return reference


def rms_norm(x, eps=None):
    """Weightless RMSNorm over the last axis, fp32 reduction. See ``reference.rms_norm``."""
    return _impl()._rms_norm(*C.rms_norm_args(x, eps))


def rope(x, offset=0, *, base=1e6):
    """Talkie's inverse-rotation RoPE on (B, H, L, D). See ``reference.rope``."""
    return _impl()._rope(*C.rope_args(x, offset, base))


def rope_qk_norm(q, k, head_gain, offset=0, *, base=1e6, eps=None):
    """Fused RoPE -> RMSNorm -> per-head gain on q, k in one pass -> (q, k)."""
    return _impl()._rope_qk_norm(*C.rope_qk_norm_args(q, k, head_gain, offset, base, eps))


def residual_norm(x, y, gain, skip=None, skip_gain=None, *, eps=None):
    """Fused ``x + gain·y [+ skip_gain·skip]`` then RMSNorm -> (x_new, normed)."""
    return _impl()._residual_norm(*C.residual_norm_args(x, y, gain, skip, skip_gain, eps))


def swiglu(gate, x):
    """``silu(gate) · x``, the gated activation of Talkie's MLP, in fp32 and rounded once.

    On the CPU the native loop (gate and x may be the two halves of one
    projection's output, read in place); on the GPU MLX's own compiled
    element-wise kernel. See ``reference.swiglu``.
    """
    return _impl()._swiglu(*C.swiglu_args(gate, x))


def linear(x, weight, scales=None, biases=None, *, group_size=None, bits=None, mode="affine"):
    """``x @ weight.T``, dense or MLX-quantized, with ``mx.quantized_matmul``'s semantics.

    On the CPU the native kernels (dense fp32/fp16/bf16, affine 4/6/8 bits at
    group sizes 32/64/128; other modes through MLX's op); on the GPU and as the
    reference, MLX's own ``matmul`` / ``quantized_matmul``. See ``reference.linear``.
    """
    return _impl()._linear(*C.linear_args(x, weight, scales, biases, group_size, bits, mode))


def scaled_dot_product_attention(q, k, v, *, scale, mask=None):
    """Attention with ``mx.fast.scaled_dot_product_attention``'s semantics.

    q (B, Hq, L, D), k/v (B, Hkv, S, D/Dv), Hq a multiple of Hkv; mask None,
    ``"causal"`` or a bool/float array broadcastable to (B, Hq, L, S). On the
    CPU the native kernels (K/V read in place, split-K decode, tiled prefill,
    fp32 throughout); on the GPU MLX's own fused op. See ``reference.scaled_dot_product_attention``.
    """
    return _impl()._scaled_dot_product_attention(*C.scaled_dot_product_attention_args(q, k, v, scale, mask))


def quantized_scaled_dot_product_attention(q, q_keys, q_values, *, scale, mask=None, group_size=64, bits=8):
    """mlx-lm's ``quantized_scaled_dot_product_attention`` (K/V as ``mx.quantize``
    triples, bits 4 or 8): native on the CPU, mlx-lm's composition elsewhere."""
    args = C.quantized_scaled_dot_product_attention_args(q, q_keys, q_values, scale, mask, group_size, bits)
    return _impl()._quantized_scaled_dot_product_attention(*args)


def load(path_or_repo, **kwargs):
    """Load a Talkie checkpoint as the fused model: ``(model, tokenizer)``, like ``mlx_lm.load``."""
    from .loader import load as _load

    return _load(path_or_repo, **kwargs)


def sharded_load(path_or_repo, pipeline_group=None, tensor_group=None, **kwargs):
    """This rank's share of a Talkie checkpoint (tensor or pipeline parallel):
    ``(model, tokenizer)``, like ``mlx_lm.utils.sharded_load``."""
    from .loader import sharded_load as _sharded_load

    return _sharded_load(path_or_repo, pipeline_group, tensor_group, **kwargs)


def __getattr__(name):
    # Submodules that pull in more (Metal kernels, the emulator, the model) load lazily.
    if name in ("metal", "testing", "models", "loader", "cli"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'talkie_kernels' has no attribute {name!r}")
