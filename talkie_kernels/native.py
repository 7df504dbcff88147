"""Loader for the compiled CPU extension ``talkie_kernels._native``.

``ops`` is the extension module, or None when it did not load; ``load_error``
then says why. Nothing here falls back silently: the dispatcher in
``talkie_kernels/__init__.py`` warns once when it has to use the reference.
"""

from __future__ import annotations

import mlx.core as mx  # noqa: F401  (mlx.core must be loaded before the extension)

try:
    from . import _native as ops

    load_error: str | None = None
except ImportError as e:  # not built (e.g. a source checkout without `pip install`)
    ops = None
    load_error = f"{type(e).__name__}: {e}"


def available() -> bool:
    return ops is not None
