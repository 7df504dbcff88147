"""The native CPU backend: the compiled extension ``talkie_kernels._native``
and the ops over it.

``ops`` is the extension module, or None when it did not load; ``load_error``
then says why and what to do. Nothing here falls back silently: the dispatcher
in ``talkie_kernels/__init__.py`` warns once when it has to use the reference.

The ops (``rms_norm``, ``rope``, ``rope_qk_norm``, ``residual_norm``,
``linear``) check their arguments like every backend (``_checks``) and call
the extension, which takes arrays and numbers only; ``_<op>`` are the
unchecked calls the dispatcher uses.

Where the extension comes from:

* an installed package (``pip install .``) or an editable install: next to
  this file, as ``talkie_kernels._native``;
* a source tree, i.e. Python started in the clone root (``sys.path[0]`` is the
  clone, so its ``talkie_kernels/`` shadows the installed package, and the
  clone has no compiled ``_native``): the extension of the installed
  ``talkie-kernels`` distribution of the same version, loaded from its file
  under the same module name. ``location`` is the file that was loaded.
"""

from __future__ import annotations

from . import _checks as C

import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import mlx.core as mx  # noqa: F401  (mlx.core must be loaded before the extension)

DISTRIBUTION = "talkie-kernels"
_MODULE = f"{__package__}._native"
_HERE = Path(__file__).resolve().parent


def _own_version() -> str | None:
    """This package's ``__version__`` (``__init__`` may still be running: read its source)."""
    version = getattr(sys.modules.get(__package__), "__version__", None)
    if version is None:
        source = (_HERE / "__init__.py").read_text(encoding="utf-8")
        found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source, re.M)
        version = found.group(1) if found else None
    return version


def _is_extension(name: str) -> bool:
    return name.startswith("_native.") and any(
        name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _installed_extensions():
    """``(version, path)`` of each installed distribution's ``talkie_kernels/_native``
    file outside this directory (one per ``talkie-kernels`` on ``sys.path``)."""
    seen = set()
    for dist in importlib.metadata.distributions(name=DISTRIBUTION):
        for file in dist.files or ():
            if file.parent.as_posix() != __package__ or not _is_extension(file.name):
                continue
            path = Path(dist.locate_file(file)).resolve()
            if path.parent != _HERE and path not in seen and path.is_file():
                seen.add(path)
                yield dist.version, path


def _load_installed():
    """Load an installed extension of this version -> ``(module, path, None)``,
    or ``(None, None, reason)`` with what to do."""
    version = _own_version()
    other_versions = []
    failures = []
    for dist_version, path in _installed_extensions():
        if dist_version != version:
            other_versions.append(f"{dist_version} ({path})")
            continue
        try:
            spec = importlib.util.spec_from_file_location(_MODULE, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[_MODULE] = module
            spec.loader.exec_module(module)
            setattr(sys.modules[__package__], "_native", module)  # as an import would
        except ImportError as e:
            sys.modules.pop(_MODULE, None)
            failures.append(f"{path}: {type(e).__name__}: {e}")
            continue
        return module, path, None
    if failures:
        found = "the installed copy failed to load: " + "; ".join(failures)
    elif other_versions:
        found = (
            f"the installed {DISTRIBUTION} is another version than this source tree's "
            f"{version}: {', '.join(other_versions)}"
        )
    else:
        found = f"no installed {DISTRIBUTION} {version} provides one"
    return None, None, (
        f"{_HERE} is a source tree without the compiled extension `_native`, and {found}; "
        f"run `pip install .` in {_HERE.parent} (Python started there then loads the "
        f"installed extension)"
    )


ops = None
location: Path | None = None
load_error: str | None = None

try:
    # An installed package, or an editable install (whose import hook finds it).
    from . import _native as ops

    location = Path(ops.__file__)
except ImportError as e:
    if any(_is_extension(p.name) for p in _HERE.iterdir()):
        load_error = f"{type(e).__name__}: {e}"  # there, but built for another MLX / Python
    else:  # a source tree
        ops, location, load_error = _load_installed()


def available() -> bool:
    return ops is not None


# ---- the ops ------------------------------------------------------------------


def _rms_norm(x, eps):
    return ops.rms_norm(x, eps)


def _rope(x, offset, base):
    return ops.rope(x, offset, base)


def _rope_qk_norm(q, k, head_gain, offset, base, eps):
    return ops.rope_qk_norm(q, k, head_gain, offset, base, eps)


def _residual_norm(x, y, gain, skip, skip_gain, eps):
    return ops.residual_norm(x, y, gain, skip, skip_gain, eps)


def _swiglu(gate, x):
    return ops.swiglu(gate, x)


def _linear(x, weight, scales, biases, group_size, bits, mode):
    return ops.linear(x, weight, scales, biases, group_size, bits, mode)


def _require():
    if ops is None:
        raise RuntimeError(f"talkie_kernels: the native CPU extension is not available ({load_error}).")


def rms_norm(x, eps=None):
    """Weightless RMSNorm over the last axis, fp32 reduction, one rounding (see ``reference.rms_norm``)."""
    _require()
    return _rms_norm(*C.rms_norm_args(x, eps))


def rope(x, offset=0, *, base=1e6):
    """Talkie's inverse-rotation RoPE on x (B, H, L, D) (see ``reference.rope``)."""
    _require()
    return _rope(*C.rope_args(x, offset, base))


def rope_qk_norm(q, k, head_gain, offset=0, *, base=1e6, eps=None):
    """Fused RoPE -> RMSNorm -> head gain (q only) on q, k (B, H, L, D) -> (q, k)."""
    _require()
    return _rope_qk_norm(*C.rope_qk_norm_args(q, k, head_gain, offset, base, eps))


def residual_norm(x, y, gain, skip=None, skip_gain=None, *, eps=None):
    """Fused ``x_new = x + gain·y [+ skip_gain·skip]`` (rounded once), ``normed = rms_norm(x_new)``."""
    _require()
    return _residual_norm(*C.residual_norm_args(x, y, gain, skip, skip_gain, eps))


def swiglu(gate, x):
    """``silu(gate) · x`` in fp32, rounded once (see ``talkie_kernels.swiglu``)."""
    _require()
    return _swiglu(*C.swiglu_args(gate, x))


def linear(x, weight, scales=None, biases=None, *, group_size=None, bits=None, mode="affine"):
    """``x @ weight.T``, dense or MLX-quantized (see ``talkie_kernels.linear``)."""
    _require()
    return _linear(*C.linear_args(x, weight, scales, biases, group_size, bits, mode))


def _scaled_dot_product_attention(q, k, v, scale, mask):
    return ops.scaled_dot_product_attention(q, k, v, scale, mask)


def scaled_dot_product_attention(q, k, v, *, scale, mask=None):
    """Attention on the CPU: split-K decode, tiled prefill (see ``talkie_kernels.scaled_dot_product_attention``)."""
    _require()
    return _scaled_dot_product_attention(*C.scaled_dot_product_attention_args(q, k, v, scale, mask))


def _quantized_scaled_dot_product_attention(q, q_keys, q_values, scale, mask, group_size, bits):
    return ops.quantized_scaled_dot_product_attention(q, q_keys, q_values, scale, mask, group_size, bits)


def quantized_scaled_dot_product_attention(q, q_keys, q_values, *, scale, mask=None, group_size=64, bits=8):
    """Attention over ``mx.quantize``'d K/V on the CPU, dequantized as it is read."""
    _require()
    return _quantized_scaled_dot_product_attention(
        *C.quantized_scaled_dot_product_attention_args(q, q_keys, q_values, scale, mask, group_size, bits)
    )
