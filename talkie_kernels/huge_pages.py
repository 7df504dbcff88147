"""Loaded weights in 2 MiB pages on Linux CPUs: ``huge_pages(tree)``.

A decode step reads every weight from DRAM once per token; in 4 KiB pages
(what MLX's CPU allocator gets from malloc under Linux's default THP
"madvise" mode) that costs a page walk per 4 KiB, twice over in a VM. The
native op (``csrc/cpu/huge_pages.cpp``) marks each array's memory
``MADV_HUGEPAGE`` and collapses it in place (``MADV_COLLAPSE``, Linux 6.1+),
one 2 MiB page at a time, so no weight is ever held twice. Measured on Zen 3
(2 cores, AVX2, M = 1): ``linear`` q4 / q8 from DRAM 1.08-1.21x.

``talkie_kernels.load`` applies it to every weight as it is evaluated on the
CPU, and the bench to its weights and its read probe's buffer;
``TALKIE_KERNELS_HUGE_PAGES=0`` turns all of that off.
"""

from __future__ import annotations

import os
import sys
import warnings

import mlx.core as mx
from mlx.utils import tree_flatten

#: Set to "0" to leave loaded weights in the allocator's own pages.
ENV = "TALKIE_KERNELS_HUGE_PAGES"


def wanted() -> bool:
    """Whether to ask for 2 MiB pages: on Linux, on the CPU device, unless ``ENV`` is "0"."""
    return sys.platform.startswith("linux") and os.environ.get(ENV, "1") != "0" and mx.default_device() == mx.cpu


def huge_pages(tree) -> int:
    """Collapse every evaluated array in ``tree`` (an array, or a tree of them as
    ``model.parameters()``) into 2 MiB pages; the bytes now in such pages.

    0 where not ``wanted()`` or without the native extension. Where the kernel cannot do it
    (no transparent huge pages, or it collapsed none: Linux before 6.1) a
    ``RuntimeWarning`` says why and the weights stay as they are.
    """
    from . import native

    if not wanted() or native.ops is None or not hasattr(native.ops, "huge_pages"):
        return 0
    arrays = [tree] if isinstance(tree, mx.array) else [a for _, a in tree_flatten(tree) if isinstance(a, mx.array)]
    done = asked = 0
    try:
        for a in arrays:
            if a.nbytes >= (4 << 20):  # (smaller ones may hold no whole 2 MiB page)
                asked += a.nbytes
                done += int(native.ops.huge_pages(a))
    except RuntimeError as e:
        why = str(e)
    else:
        why = None if done or not asked else "the kernel collapsed none of them (MADV_COLLAPSE needs Linux 6.1+)"
    if why:
        warnings.warn(f"weights stay in 4 KiB pages (decode reads them ~10 % slower): {why}",
                      RuntimeWarning, stacklevel=2)
    return done


__all__ = ["ENV", "huge_pages", "wanted"]
