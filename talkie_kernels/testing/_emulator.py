"""``metal_kernel``: ``mx.fast.metal_kernel`` sources run on the CPU.

How a call runs:

1. The kernel's source is generated as MLX does (``mlx/fast.cpp``,
   ``write_signature``): ``header``, the template line, then a function whose
   parameters are the inputs (``const device T*``; 0-d inputs ``const constant
   T&``), ``<name>_shape/_strides/_ndim`` only where the source mentions them,
   the outputs (``device T*`` or ``device atomic<T>*``) and every
   thread-position attribute the source names; the body is ``source``.
2. That text is checked for what Metal refuses, rewritten where C++ differs
   (``threadgroup`` declarations, ``1.0h`` literals; lines kept), and
   compiled after ``include/tk_msl.h`` (MSL on C++17) with a driver that calls
   the kernel for one thread (``_build``).
3. The runtime (``simt_runtime.cpp``) runs the grid threadgroup by
   threadgroup: each thread a fiber switching only at a simdgroup operation
   or a barrier; kernels with neither run as plain calls.

Data moves through NumPy buffers (bfloat16 as uint16 bit patterns) with guard
zones: writes past an output's ends raise; reads past a (copied) input's ends
see NaN / all-ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re

import mlx.core as mx
import numpy as np

from . import _build
from ._build import EmulatorError
from ._source import (
    MetalCompileError,
    check_metal_subset,
    rewrite_half_literals,
    rewrite_threadgroup,
)

MAX_THREADS_PER_THREADGROUP = 1024

# mx dtype -> (MSL type name as MLX's get_type_string spells it, NumPy
# transport dtype). bfloat16 travels as its uint16 bit pattern.
_TYPES = {
    mx.float32: ("float", np.float32),
    mx.float16: ("half", np.float16),
    mx.bfloat16: ("bfloat16_t", np.uint16),
    mx.int8: ("int8_t", np.int8),
    mx.int16: ("int16_t", np.int16),
    mx.int32: ("int32_t", np.int32),
    mx.int64: ("int64_t", np.int64),
    mx.uint8: ("uint8_t", np.uint8),
    mx.uint16: ("uint16_t", np.uint16),
    mx.uint32: ("uint32_t", np.uint32),
    mx.uint64: ("uint64_t", np.uint64),
    mx.bool_: ("bool", np.bool_),
}


def _ids3(field: str) -> str:
    return f"uint3(ids->{field}[0], ids->{field}[1], ids->{field}[2])"


_DISPATCH_THREADS = (
    "(ids->dispatch_threads_per_threadgroup[0] * ids->dispatch_threads_per_threadgroup[1]"
    " * ids->dispatch_threads_per_threadgroup[2])"
)

# Thread-position attributes in MLX's order: name -> (MSL type, value in the driver).
_ATTRIBUTES = {
    "dispatch_quadgroups_per_threadgroup": ("uint", f"({_DISPATCH_THREADS} + 3) / 4"),
    "dispatch_simdgroups_per_threadgroup": ("uint", f"({_DISPATCH_THREADS} + 31) / 32"),
    "dispatch_threads_per_threadgroup": ("uint3", _ids3("dispatch_threads_per_threadgroup")),
    "grid_origin": ("uint3", "uint3(0u, 0u, 0u)"),
    "grid_size": ("uint3", _ids3("threads_per_grid")),
    "quadgroup_index_in_threadgroup": ("uint", "ids->quadgroup_index_in_threadgroup"),
    "quadgroups_per_threadgroup": ("uint", "ids->quadgroups_per_threadgroup"),
    "simdgroup_index_in_threadgroup": ("uint", "ids->simdgroup_index_in_threadgroup"),
    "simdgroups_per_threadgroup": ("uint", "ids->simdgroups_per_threadgroup"),
    "thread_execution_width": ("uint", "32u"),
    "thread_index_in_quadgroup": ("uint", "ids->thread_index_in_quadgroup"),
    "thread_index_in_simdgroup": ("uint", "ids->thread_index_in_simdgroup"),
    "thread_index_in_threadgroup": ("uint", "ids->thread_index_in_threadgroup"),
    "thread_position_in_grid": ("uint3", _ids3("thread_position_in_grid")),
    "thread_position_in_threadgroup": ("uint3", _ids3("thread_position_in_threadgroup")),
    "threadgroup_position_in_grid": ("uint3", _ids3("threadgroup_position_in_grid")),
    "threadgroups_per_grid": ("uint3", _ids3("threadgroups_per_grid")),
    "threads_per_grid": ("uint3", _ids3("threads_per_grid")),
    "threads_per_simdgroup": ("uint", "32u"),
    "threads_per_threadgroup": ("uint3", _ids3("threads_per_threadgroup")),
}

# Inputs with fewer elements go to the constant address space (as in MLX;
# the same memory here).
_MAX_CONSTANT_ARRAY_SIZE = 8

# Bytes of guard zone around every output buffer and copied input buffer.
_GUARD = 4096
_GUARD_BYTE = 0xA5


def _type_name(dtype) -> str:
    if dtype not in _TYPES:
        raise ValueError(f"[metal_kernel] The emulator does not support dtype {dtype}.")
    return _TYPES[dtype][0]


def _template_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, mx.Dtype):
        return _type_name(value)
    raise ValueError(
        f"[metal_kernel] Invalid template argument {value!r}: must be a dtype, int or bool."
    )


def _as_list(value, what: str) -> list:
    """MLX's kernel call takes lists (its pre-0.2x dict API is gone): refuse dicts too."""
    if value is None:
        return []
    if isinstance(value, (dict, str, mx.array)):
        raise TypeError(
            f"[metal_kernel] `{what}` must be a list, as mx.fast.metal_kernel takes "
            f"(got {type(value).__name__})."
        )
    return list(value)


def _workers() -> int:
    env = os.environ.get("TALKIE_KERNELS_EMULATOR_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


class _Compiled:
    """A loaded kernel instantiation and what a launch needs from it."""

    __slots__ = ("fn", "has_sync", "stack_bytes", "lines", "line_array", "library")

    def __init__(self, library, fn, has_sync, stack_bytes, generated):
        self.library = library
        self.fn = fn
        self.has_sync = has_sync
        self.stack_bytes = stack_bytes
        self.lines = [line.encode() for line in generated.split("\n")]
        self.line_array = (ctypes.c_char_p * len(self.lines))(*self.lines)


class MetalKernel:
    """Emulated ``mx.fast.metal_kernel``: call it like MLX's kernel object."""

    def __init__(self, name, input_names, output_names, source, header="",
                 ensure_row_contiguous=True, atomic_outputs=False, compile_options=None):
        if not output_names:
            raise ValueError("[metal_kernel] Must specify at least one output.")
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.source = source
        self.header = header
        self.ensure_row_contiguous = ensure_row_contiguous
        self.atomic_outputs = atomic_outputs
        self.compile_options = compile_options  # math mode: the emulator is always precise
        # As MLX: a plain substring search of the source.
        self._shape_infos = [
            (f"{n}_shape" in source, f"{n}_strides" in source, f"{n}_ndim" in source)
            for n in self.input_names
        ]
        self._attributes = [a for a in _ATTRIBUTES if a in source]
        self._compiled: dict[tuple, _Compiled] = {}

    # -- source generation ---------------------------------------------------

    def _parameters(self, inputs, output_dtypes):
        """(MSL parameter, driver argument) pairs in MLX's buffer order."""
        params = []

        def add(decl, arg):
            params.append((f"{decl} [[buffer({len(params)})]]", arg))

        for name, (dtype, ndim, size), (shape, strides, nd) in zip(
            self.input_names, inputs, self._shape_infos
        ):
            t = _type_name(dtype)
            space = "constant" if size < _MAX_CONSTANT_ARRAY_SIZE else "device"
            i = len(params)
            if ndim == 0:
                add(f"  const {space} {t}& {name}", f"*(const {t}*)a[{i}]")
                continue
            add(f"  const {space} {t}* {name}", f"(const {t}*)a[{i}]")
            if shape:
                add(f"  const constant int* {name}_shape", f"(const int*)a[{len(params)}]")
            if strides:
                add(f"  const constant int64_t* {name}_strides", f"(const int64_t*)a[{len(params)}]")
            if nd:
                add(f"  const constant int& {name}_ndim", f"*(const int*)a[{len(params)}]")
        for name, dtype in zip(self.output_names, output_dtypes):
            t = _type_name(dtype)
            if self.atomic_outputs:
                t = f"atomic<{t}>"
            add(f"  device {t}* {name}", f"({t}*)a[{len(params)}]")
        for attr in self._attributes:
            mtype, value = _ATTRIBUTES[attr]
            params.append((f"  {mtype} {attr} [[{attr}]]", value))
        return params

    def _kernel_name(self, inputs, output_dtypes, template):
        """MLX's naming: the template values and the argument types."""
        name = f"custom_kernel_{self.name}"
        if template:
            tdef = "<" + ", ".join(_template_value(v) for _, v in template) + ">"
            name += "_" + re.sub(r"<|>|, ", "_", tdef)[:-1]
        for dtype, ndim, size in inputs:
            name += "_" + _type_name(dtype)
            if ndim == 0:
                name += "s"
            elif size < _MAX_CONSTANT_ARRAY_SIZE:
                name += "c"
        for dtype in output_dtypes:
            name += "_" + _type_name(dtype)
        return re.sub(r"\W", "_", name)

    def _generate(self, kernel_name, params, template):
        """The kernel source as MLX generates it: header, signature, body."""
        text = self.header
        if template:
            kinds = []
            for tname, value in template:
                kind = ("bool" if isinstance(value, bool) else "int" if isinstance(value, int)
                        else "typename")
                kinds.append(f"{kind} {tname}")
            text += "template <" + ", ".join(kinds) + ">\n"
        text += f"[[kernel]] void {kernel_name}(\n"
        text += ",\n".join(decl for decl, _ in params) + ") {\n"
        return text + self.source + "\n}\n"

    def _compile(self, inputs, output_dtypes, template, verbose) -> _Compiled:
        key = (tuple(inputs), tuple(output_dtypes), tuple((n, repr(v)) for n, v in template))
        compiled = self._compiled.get(key)
        if compiled is not None and not verbose:
            _build.stats["memory_hits"] += 1
            return compiled
        kernel_name = self._kernel_name(inputs, output_dtypes, template)
        params = self._parameters(inputs, output_dtypes)
        generated = self._generate(kernel_name, params, template)
        targs = ""
        if template:
            targs = "<" + ", ".join(_template_value(v) for _, v in template) + ">"
        if verbose:
            shown = generated
            if template:
                inst = kernel_name + targs
                shown += (f'\ntemplate [[host_name("{kernel_name}")]] [[kernel]] '
                          f"decltype({inst}) {inst};\n")
            print(f"Generated source code for `{self.name}`:\n```\n{shown}\n```")
        if compiled is not None:
            _build.stats["memory_hits"] += 1
            return compiled
        check_metal_subset(self.name, self.header, generated)
        check_metal_subset(self.name, self.source, generated)
        body = rewrite_threadgroup(self.name, rewrite_half_literals(generated))
        call_args = ",\n      ".join(arg for _, arg in params)
        unit = (
            '#include "tk_msl.h"\n'
            "#define double tk_error_metal_has_no_double\n"
            '#line 1 "generated"\n'
            f"{body}\n"
            '#line 1 "emulator_driver"\n'
            "#undef double\n"
            'extern "C" __attribute__((visibility("default")))\n'
            "void tk_thread(void* const* a, const tk_ids* ids) {\n"
            "  (void)a;\n"
            "  (void)ids;\n"
            f"  {kernel_name}{targs}(\n      {call_args});\n"
            "}\n"
        )
        library, fn, has_sync, stack = _build.kernel_library(self.name, unit, generated)
        compiled = self._compiled[key] = _Compiled(library, fn, has_sync, stack, generated)
        return compiled

    # -- call ----------------------------------------------------------------

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup,
                 template=None, init_value=None, verbose=False, stream=None):
        inputs = _as_list(inputs, "inputs")
        output_shapes = _as_list(output_shapes, "output_shapes")
        output_dtypes = _as_list(output_dtypes, "output_dtypes")
        template = [tuple(p) for p in _as_list(template, "template")]
        for what, got, want in (("inputs", inputs, self.input_names),
                                ("output_shapes", output_shapes, self.output_names),
                                ("output_dtypes", output_dtypes, self.output_names)):
            if len(got) != len(want):
                raise ValueError(
                    f"[metal_kernel] Expected `{what}` to have size {len(want)} "
                    f"but got size {len(got)}."
                )
        grid = tuple(int(g) for g in grid)
        threadgroup = tuple(int(t) for t in threadgroup)
        if len(grid) != 3 or len(threadgroup) != 3:
            raise ValueError("[metal_kernel] `grid` and `threadgroup` must have three entries.")
        if min(grid) < 0 or min(threadgroup) < 1:
            raise ValueError(f"[metal_kernel] Invalid grid {grid} or threadgroup {threadgroup}.")
        tg_size = threadgroup[0] * threadgroup[1] * threadgroup[2]
        if tg_size > MAX_THREADS_PER_THREADGROUP:
            raise ValueError(
                f"[metal_kernel] Thread group size ({tg_size}) is greater than the maximum "
                f"allowed threads per threadgroup ({MAX_THREADS_PER_THREADGROUP})."
            )

        arrays = [x if isinstance(x, mx.array) else mx.array(x) for x in inputs]
        signature = [(x.dtype, x.ndim, x.size) for x in arrays]
        compiled = self._compile(signature, list(output_dtypes), template, verbose)

        try:
            mx.eval(arrays)
        except ValueError as e:
            raise EmulatorError(
                f"[metal_kernel] `{self.name}`: the emulator runs eagerly on evaluated "
                "inputs, so it cannot run inside mx.compile or mx.vmap (MLX's Metal "
                f"kernels can). ({e})"
            ) from e
        keep = []  # buffers that must outlive the launch
        args = []
        for x, (shape, strides, nd) in zip(arrays, self._shape_infos):
            a = _input_buffer(x, self.ensure_row_contiguous)
            keep.append(a)
            args.append(a.ctypes.data)
            if x.ndim > 0:
                extras = []
                if shape:
                    extras.append(np.array(a.shape, dtype=np.int32))
                if strides:
                    extras.append(np.array([b // a.itemsize for b in a.strides], dtype=np.int64))
                if nd:
                    extras.append(np.array([a.ndim], dtype=np.int32))
                keep.extend(extras)
                args.extend(e.ctypes.data for e in extras)
        outputs, guarded = [], []
        for shape, dtype in zip(output_shapes, output_dtypes):
            out, buf = _output_buffer(tuple(int(s) for s in shape), dtype, init_value)
            outputs.append(out)
            guarded.append(buf)
            args.append(out.ctypes.data)

        if all(g > 0 for g in grid):
            self._launch(compiled, args, grid, threadgroup)
            for name, out, buf in zip(self.output_names, outputs, guarded):
                damage = _guard_damage(buf, out.nbytes)
                if damage:
                    raise EmulatorError(
                        f"[metal_kernel] `{self.name}` wrote out of bounds of output "
                        f"`{name}` (shape {out.shape}): {damage}."
                    )
        del keep
        return [_to_mx(o, d) for o, d in zip(outputs, output_dtypes)]

    def _launch(self, compiled, args, grid, threadgroup):
        arg_array = (ctypes.c_void_p * max(1, len(args)))(*args)
        error = ctypes.create_string_buffer(8192)
        launch = _build.Launch()
        name = self.name.encode()
        launch.name = name
        launch.grid[:] = grid
        # As MLX: the threadgroup is clamped to the grid.
        launch.threadgroup[:] = [min(t, g) for t, g in zip(threadgroup, grid)]
        launch.has_sync = int(compiled.has_sync)
        launch.workers = _workers()
        launch.stack_bytes = compiled.stack_bytes
        launch.fn = compiled.fn
        launch.args = arg_array
        launch.error = ctypes.cast(error, ctypes.c_char_p)
        launch.error_size = len(error)
        launch.lines = compiled.line_array
        launch.n_lines = len(compiled.lines)
        if _build.runtime().tk_run(ctypes.byref(launch)) != 0:
            raise EmulatorError(
                f"[metal_kernel] `{self.name}`: {error.value.decode(errors='replace')}"
            )


# ---------------------------------------------------------------------------
# Buffers


def _input_buffer(x: mx.array, contiguous: bool) -> np.ndarray:
    if x.dtype not in _TYPES:
        raise ValueError(f"[metal_kernel] The emulator does not support dtype {x.dtype}.")
    if x.dtype == mx.bfloat16:
        x = x.view(mx.uint16)
    a = np.asarray(x)
    if not contiguous:
        return a  # MLX passes the array as it is, with its own strides
    # Copied between guard zones of all-ones bytes (NaN for floating point),
    # so that reads past either end show up in the results.
    buf = np.full(a.nbytes + 2 * _GUARD, 0xFF, dtype=np.uint8)
    out = buf[_GUARD:_GUARD + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _output_buffer(shape, dtype, init_value) -> tuple[np.ndarray, np.ndarray]:
    """(output array, the guarded buffer around it)."""
    if dtype not in _TYPES:
        raise ValueError(f"[metal_kernel] The emulator does not support dtype {dtype}.")
    np_dtype = np.dtype(_TYPES[dtype][1])
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    buf = np.empty(nbytes + 2 * _GUARD, dtype=np.uint8)
    buf[:_GUARD] = _GUARD_BYTE
    buf[_GUARD + nbytes:] = _GUARD_BYTE
    out = buf[_GUARD:_GUARD + nbytes].view(np_dtype).reshape(shape)
    if init_value is not None:
        if dtype == mx.bfloat16:
            out.fill(np.asarray(mx.array(init_value, dtype=mx.bfloat16).view(mx.uint16)))
        else:
            out.fill(init_value)
    elif dtype == mx.bool_:
        out.fill(False)
    else:
        # Uninitialized on a GPU: poison (NaN for floats, all-ones for
        # integers) so that a kernel relying on it fails visibly.
        out.view(np.uint8).fill(0xFF)
    return out, buf


def _guard_damage(buf: np.ndarray, nbytes: int) -> str | None:
    before = np.flatnonzero(buf[:_GUARD] != _GUARD_BYTE)
    after = np.flatnonzero(buf[_GUARD + nbytes:] != _GUARD_BYTE)
    if before.size:
        return f"{_GUARD - before[0]} bytes before its start"
    if after.size:
        return f"{after[-1] + 1} bytes past its end"
    return None


def _to_mx(a: np.ndarray, dtype) -> mx.array:
    arr = mx.array(a)
    return arr.view(mx.bfloat16) if dtype == mx.bfloat16 else arr


# ---------------------------------------------------------------------------
# Public API


def metal_kernel(name, input_names, output_names, source, header="",
                 ensure_row_contiguous=True, atomic_outputs=False, compile_options=None):
    """Same constructor as ``mx.fast.metal_kernel``; the kernel runs on the CPU."""
    return MetalKernel(name, input_names, output_names, source, header,
                       ensure_row_contiguous, atomic_outputs, compile_options)


@contextlib.contextmanager
def emulate_metal():
    """Inside this context ``talkie_kernels.metal`` builds its kernels here."""
    from talkie_kernels import metal

    previous = metal._set_kernel_factory(metal_kernel)
    try:
        yield
    finally:
        metal._set_kernel_factory(previous)


__all__ = ["MetalKernel", "metal_kernel", "emulate_metal", "EmulatorError", "MetalCompileError"]
