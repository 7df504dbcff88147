"""Run ``mx.fast.metal_kernel`` sources on the CPU (DESIGN §5).

* ``metal_kernel(...)``: same constructor and call signature as
  ``mx.fast.metal_kernel``; runs the exact MSL source through a C++ shim with
  Metal's SIMT semantics (threadgroups, simdgroups of 32, barriers).
* ``emulate_metal()``: context manager under which ``talkie_kernels.metal``
  builds its kernels through the emulator.
"""

from __future__ import annotations

from ._emulator import EmulatorError, MetalCompileError, MetalKernel, emulate_metal, metal_kernel

__all__ = ["metal_kernel", "emulate_metal", "MetalKernel", "EmulatorError", "MetalCompileError"]
