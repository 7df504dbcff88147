"""Run ``mx.fast.metal_kernel`` sources on the CPU (the SIMT emulator; see docs/ARCHITECTURE.md).

* ``metal_kernel(name, input_names, output_names, source, header="",
  ensure_row_contiguous=True, atomic_outputs=False, compile_options=None)``:
  the constructor of ``mx.fast.metal_kernel``; the returned kernel is called
  like MLX's (keyword-only ``inputs, output_shapes, output_dtypes, grid,
  threadgroup, template, init_value, verbose, stream``) and returns a list of
  ``mx.array``. It runs the exact MSL source with Metal's semantics:
  dispatchThreads grids (partial last threadgroups), simdgroups of 32 formed
  from consecutive ``thread_index_in_threadgroup``, ``simd_*`` / ``quad_sum``
  operations, ``threadgroup_barrier``, threadgroup memory shared by one
  threadgroup, atomics.
* ``emulate_metal()``: context manager under which ``talkie_kernels.metal``
  builds its kernels through ``metal_kernel``.

Beyond a GPU, the emulator reports: a barrier not reached by every thread of
a threadgroup (threads that returned, or waiting at another barrier) as
``EmulatorError``; writes past either end of an output as ``EmulatorError``;
reads of uninitialized outputs, of threadgroup memory not written in this
threadgroup and past the ends of an input as NaN (all-ones for integers);
``double``, ``std::``, ``new``/``delete``, exceptions, RTTI, ``goto``,
mutable statics, VLAs, non-Metal ``#include``s, recursion and calls through
function pointers as ``MetalCompileError`` (a ``ValueError``, like a failed
Metal compile in MLX), with the compiler output and the numbered generated
source.

Environment: ``TALKIE_KERNELS_EMULATOR_CACHE`` (library cache directory),
``TALKIE_KERNELS_EMULATOR_WORKERS`` (OS threads sharing the threadgroups;
default: CPU count, at most 8), ``TALKIE_KERNELS_EMULATOR_STACK_KB`` (minimum
fiber stack, default 64; stacks grow to the kernel's frame sizes), ``CXX``
(compiler; recursion and indirect-call checks need GCC >= 10).

Limits: Linux with GCC (the fiber switch is x86-64 assembly, elsewhere
ucontext); math is IEEE-accurate (``fast::`` is as precise as ``precise::``,
so a GPU may be slightly less accurate); lanes of one simdgroup that diverge
into the same operation on the same source line are treated as converged;
inactive lanes read by a shuffle give the reader's own value; a kernel that
spins waiting for another thread without a barrier hangs (threads are
cooperative); a wild pointer or an integer division by zero crashes the
process instead of giving garbage (with a report naming the kernel and the
GPU thread, then the previous handler, e.g. Python's faulthandler);
calls are eager, so not inside ``mx.compile`` or ``mx.vmap``; no
``simdgroup_matrix`` or textures.
"""

from __future__ import annotations

from ._emulator import EmulatorError, MetalCompileError, MetalKernel, emulate_metal, metal_kernel

__all__ = ["metal_kernel", "emulate_metal", "MetalKernel", "EmulatorError", "MetalCompileError"]
