"""The Metal emulator: MSL source -> C++ translation unit -> shared library.

How a call runs:

1. The kernel signature is generated from the source exactly as MLX does
   (``mlx/fast.cpp``'s ``write_signature``): inputs ``const device T*`` (0-d
   inputs ``const constant T&``), ``<name>_shape/_strides/_ndim`` only when the
   source mentions them, outputs ``device T*`` (``device atomic<T>*`` with
   ``atomic_outputs``), and every thread-position attribute the source names.
2. The generated source is checked for what Metal refuses (``double``,
   ``std::``, ``new``/``delete``, exceptions, function pointers, ...),
   ``threadgroup`` variable declarations become per-worker statics, and the
   whole is compiled after ``include/tk_msl.h`` (MSL on C++17, no standard
   headers) with a small driver that calls the kernel for one thread.
3. ``simt_runtime.cpp`` (compiled once) runs the grid threadgroup by
   threadgroup, every thread a fiber that switches only at a simdgroup
   operation or a threadgroup barrier; kernels without either run as plain
   calls.

Libraries are cached by the hash of (translation unit, shim headers, compiler,
flags) in memory and on disk (``$TALKIE_KERNELS_EMULATOR_CACHE``, else
``$XDG_CACHE_HOME/talkie_kernels/metal_emulator``, else
``~/.cache/talkie_kernels/metal_emulator``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np

_HERE = Path(__file__).resolve().parent
_INCLUDE = _HERE / "include"
_RUNTIME_SOURCE = _HERE / "simt_runtime.cpp"

MAX_THREADS_PER_THREADGROUP = 1024


class EmulatorError(RuntimeError):
    """A kernel did something a GPU would hang on or that the emulator refuses."""


class MetalCompileError(ValueError):
    """The kernel source is not valid Metal (as far as the emulator can tell)."""


# mx dtype -> (MSL type name as MLX's get_type_string spells it, numpy
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

# Thread-position attributes, in MLX's order: name -> (MSL type, driver expression).
_ATTRIBUTES = {
    "dispatch_quadgroups_per_threadgroup": (
        "uint", "(ids->dispatch_threads_per_threadgroup[0] * ids->dispatch_threads_per_threadgroup[1]"
        " * ids->dispatch_threads_per_threadgroup[2] + 3) / 4"),
    "dispatch_simdgroups_per_threadgroup": (
        "uint", "(ids->dispatch_threads_per_threadgroup[0] * ids->dispatch_threads_per_threadgroup[1]"
        " * ids->dispatch_threads_per_threadgroup[2] + 31) / 32"),
    "dispatch_threads_per_threadgroup": ("uint3", "dispatch_threads_per_threadgroup"),
    "grid_origin": ("uint3", None),
    "grid_size": ("uint3", "threads_per_grid"),
    "quadgroup_index_in_threadgroup": ("uint", "ids->quadgroup_index_in_threadgroup"),
    "quadgroups_per_threadgroup": ("uint", "ids->quadgroups_per_threadgroup"),
    "simdgroup_index_in_threadgroup": ("uint", "ids->simdgroup_index_in_threadgroup"),
    "simdgroups_per_threadgroup": ("uint", "ids->simdgroups_per_threadgroup"),
    "thread_execution_width": ("uint", "32u"),
    "thread_index_in_quadgroup": ("uint", "ids->thread_index_in_quadgroup"),
    "thread_index_in_simdgroup": ("uint", "ids->thread_index_in_simdgroup"),
    "thread_index_in_threadgroup": ("uint", "ids->thread_index_in_threadgroup"),
    "thread_position_in_grid": ("uint3", "thread_position_in_grid"),
    "thread_position_in_threadgroup": ("uint3", "thread_position_in_threadgroup"),
    "threadgroup_position_in_grid": ("uint3", "threadgroup_position_in_grid"),
    "threadgroups_per_grid": ("uint3", "threadgroups_per_grid"),
    "threads_per_grid": ("uint3", "threads_per_grid"),
    "threads_per_simdgroup": ("uint", "32u"),
    "threads_per_threadgroup": ("uint3", "threads_per_threadgroup"),
}

# Inputs with fewer elements go to the constant address space (as in MLX;
# the same memory here).
_MAX_CONSTANT_ARRAY_SIZE = 8

# What Metal refuses, checked on the source without comments and strings.
_FORBIDDEN = [
    (re.compile(r"\bdouble\b"), "`double`: Metal has no 64-bit floating point type"),
    (re.compile(r"\bstd\s*::"), "`std::`: Metal has no C++ standard library"),
    (re.compile(r"\bnew\b"), "`new`: Metal has no dynamic allocation"),
    (re.compile(r"\bdelete\b(?!\s*;)"), "`delete`: Metal has no dynamic allocation"),
    (re.compile(r"\b(throw|try|catch)\b"), "exceptions: Metal has no exception handling"),
    (re.compile(r"\bvirtual\b"), "`virtual`: Metal has no virtual functions"),
    (re.compile(r"\b(typeid|dynamic_cast)\b"), "RTTI: Metal has no run-time type information"),
    (re.compile(r"\bthread_local\b"), "`thread_local`: not a Metal keyword"),
    (re.compile(r"\bgoto\b"), "`goto`: not supported by Metal"),
    (re.compile(r"\(\s*(?:\w+\s*::\s*)*\*\s*\w*\s*\)\s*\("),
     "a function pointer: Metal kernels cannot use function pointers"),
    (re.compile(r"#\s*include\s*[<\"](?!metal_)"), "#include of a non-Metal header"),
    (re.compile(r"\b(printf|malloc|free|calloc|memcpy|memset)\s*\("),
     "a C library call: Metal has no C library"),
    (re.compile(r"\bstatic\s+(?!constexpr\b|const\b|constant\b|inline\b|METAL_FUNC\b)"
                r"[\w:<>,\s]+?\b\w+\s*(?:=|;|\[)"),
     "a mutable static variable: Metal has no static storage outside the constant address space"),
]

# Metal's half literals (1.0h, 2h, 1e-3h) -> half(...f).
_HALF_LITERAL_RE = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[hH]\b")


def _rewrite_half_literals(text: str) -> str:
    code = _strip_comments_and_strings(text)
    pieces, last = [], 0
    for m in _HALF_LITERAL_RE.finditer(code):
        pieces.append(text[last:m.start()])
        number = m.group(1)
        if not re.search(r"[.eE]", number):
            number += ".0"
        pieces.append(f"half({number}f)")
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)

# A kernel library that imports neither of these has no sync point: its
# threads run as plain calls, without fibers.
_SYNC_SYMBOLS = (b"tk_rt_simd", b"tk_rt_barrier")

# A `threadgroup` variable declaration: a statement with no pointer,
# reference, call or block before its `;` (array bounds may hold anything).
_TG_DECL_RE = re.compile(r"\bthreadgroup\s+((?:[^;(){}*&\[\]]|\[[^\]]*\])*);")


# `threadgroup` left after the rewrite must qualify a pointer or reference.
_UNPARSED_TG_RE = re.compile(r"\bthreadgroup\s+[^;,)*&]*[;,)]")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _rewrite_threadgroup(text: str) -> str:
    """`threadgroup T a[N], b;` -> references into the worker's threadgroup arena.

    The runtime hands out one block per declaration and threadgroup, poisoned
    (all-ones bytes: NaN, -1) when the threadgroup starts, and refuses more
    than Metal's 32 KiB. Line count is kept.
    """
    counter = [0]

    def replace(m: re.Match) -> str:
        decl = m.group(1)
        names, parts = [], []
        for k, part in enumerate(_split_top_level(decl)):
            head = part.split("[", 1)[0].split("=", 1)[0]
            ids = list(re.finditer(r"[A-Za-z_]\w*", head))
            if not ids:
                return m.group(0)
            ident = ids[-1] if k == 0 else ids[0]
            names.append(ident.group(0))
            parts.append(part[: ident.start()] + f"tk_tg_t_{ident.group(0)}" + part[ident.end():])
        out = [f"typedef {','.join(parts)};"]
        for n in names:
            site = counter[0]
            counter[0] += 1
            out.append(
                f"tk_tg_t_{n}& {n} = *reinterpret_cast<tk_tg_t_{n}*>(tk_rt_threadgroup_alloc("
                f"{site}, sizeof(tk_tg_t_{n}), alignof(tk_tg_t_{n})));"
            )
        return " ".join(out)

    # Match on the text without comments and strings (same offsets), so that
    # prose like "one threadgroup of n threads." never starts a declaration.
    code = _strip_comments_and_strings(text)
    pieces, last = [], 0
    for m in _TG_DECL_RE.finditer(code):
        pieces.append(text[last:m.start()])
        pieces.append(replace(m))
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)

_CXX_FLAGS = [
    "-std=c++17", "-O2", "-shared", "-fPIC", "-nostdinc", "-nostdinc++",
    "-fno-exceptions", "-fno-rtti", "-fsingle-precision-constant",
    "-fno-strict-aliasing", "-Wno-attributes", "-Werror=return-type", "-Werror=vla",
]
_RUNTIME_FLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-pthread"]
if os.environ.get("TALKIE_KERNELS_EMULATOR_UCONTEXT"):
    # Test hook: the portable ucontext fibers instead of the x86-64 switch.
    _RUNTIME_FLAGS.append("-DTK_FORCE_UCONTEXT")


def _strip_comments_and_strings(text: str) -> str:
    """Blank out comments and string literals, keeping every newline."""

    def blank(m: re.Match) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    return re.sub(
        r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
        blank,
        text,
        flags=re.S,
    )


def _numbered(text: str) -> str:
    lines = text.split("\n")
    width = len(str(len(lines)))
    return "\n".join(f"{i + 1:>{width}} | {line}" for i, line in enumerate(lines))


def _cache_dir() -> Path:
    env = os.environ.get("TALKIE_KERNELS_EMULATOR_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "talkie_kernels" / "metal_emulator"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _compiler() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


_lock = threading.RLock()
_compiler_ids: dict[str, str] = {}
_libraries: dict[str, tuple[ctypes.CDLL, int]] = {}
_runtime: ctypes.CDLL | None = None

#: Counters for tests and curiosity: compilations, disk-cache and memory-cache hits.
stats = {"compiles": 0, "disk_hits": 0, "memory_hits": 0}


def _compiler_id(cxx: str) -> str:
    if cxx not in _compiler_ids:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
        _compiler_ids[cxx] = out.stdout.split("\n", 1)[0]
    return _compiler_ids[cxx]


_shim_cache: list[str] = []


def _shim_text() -> str:
    if not _shim_cache:
        _shim_cache.append(
            "".join(p.read_text() for p in sorted(_INCLUDE.iterdir()) if p.is_file())
        )
    return _shim_cache[0]


def _build(source: str, flags: list[str], suffix: str, what: str, on_error,
           analyze=None) -> Path:
    """Compile `source` to a cached shared library; returns its path.

    `analyze(callgraph_text)`, when given, runs on the call graph of an -O0
    compile made alongside (GCC's -fcallgraph-info) and may raise.
    """
    cxx = _compiler()
    key = hashlib.sha256(
        "\0".join([source, _shim_text(), cxx, _compiler_id(cxx), *flags]).encode()
    ).hexdigest()[:32]
    cache = _cache_dir()
    target = cache / f"{suffix}-{key}.so"
    if target.exists():
        stats["disk_hits"] += 1
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / f"{suffix}.cpp"
        src.write_text(source)
        out = Path(tmp) / f"{suffix}.so"
        cmd = [cxx, *flags, f"-I{_INCLUDE}", "-o", str(out), str(src), "-lm"]
        checker = None
        if analyze is not None and _supports_callgraph(cxx):
            check_flags = [f for f in flags if f not in ("-O2", "-shared")]
            checker = subprocess.Popen(
                [cxx, *check_flags, "-O0", "-c", "-fcallgraph-info", f"-I{_INCLUDE}",
                 "-o", str(Path(tmp) / "check.o"), str(src)],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        if checker is not None:
            checker.wait()
        if proc.returncode != 0:
            on_error(proc.stderr.replace(str(src), what))
        if checker is not None and checker.returncode == 0:
            graphs = list(Path(tmp).glob("*.ci"))
            if graphs:
                analyze(graphs[0].read_text())
        os.replace(out, target)
    stats["compiles"] += 1
    return target


_callgraph_support: dict[str, bool] = {}


def _supports_callgraph(cxx: str) -> bool:
    if cxx not in _callgraph_support:
        # GCC >= 10 writes call graphs; clang has no -fcallgraph-info.
        out = subprocess.run([cxx, "-v"], capture_output=True, text=True, check=False).stderr
        m = re.search(r"^gcc version (\d+)", out, flags=re.M)
        _callgraph_support[cxx] = bool(m) and int(m.group(1)) >= 10
    return _callgraph_support[cxx]


_CI_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
_CI_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"(?: label: "([^"]*)")?')


def _callgraph_problems(text: str) -> list[str]:
    """Recursion cycles and indirect calls in a GCC -fcallgraph-info graph."""
    labels = {title: label.replace("\\n", " at ") for title, label in _CI_NODE.findall(text)}
    edges: dict[str, list[str]] = {}
    problems = []
    for src, dst, where in _CI_EDGE.findall(text):
        if dst == "__indirect_call":
            if where.startswith("generated:"):
                problems.append(
                    f"an indirect call (function pointer) at {where}: Metal kernels cannot "
                    "call through function pointers"
                )
            continue
        edges.setdefault(src, []).append(dst)
    # Iterative DFS for a cycle.
    state: dict[str, int] = {}
    for root in list(edges):
        if state.get(root):
            continue
        stack = [(root, iter(edges.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                problems.append(
                    "recursion: " + " -> ".join(labels.get(n, n) for n in cycle)
                    + " (Metal does not support recursive calls)"
                )
                state[nxt] = 2
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(edges.get(nxt, ()))))
                path.append(nxt)
    return problems


def _load_runtime() -> ctypes.CDLL:
    global _runtime
    with _lock:
        if _runtime is None:

            def fail(output):
                raise EmulatorError(f"cannot build the emulator runtime:\n{output}")

            path = _build(_RUNTIME_SOURCE.read_text(), _RUNTIME_FLAGS, "tk_simt_runtime",
                          "simt_runtime.cpp", fail)
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            lib.tk_run.argtypes = [ctypes.POINTER(_Launch)]
            lib.tk_run.restype = ctypes.c_int
            _runtime = lib
        return _runtime


def clear_memory_cache() -> None:
    """Forget loaded kernel libraries (the disk cache stays)."""
    with _lock:
        _libraries.clear()


class _Launch(ctypes.Structure):
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("threadgroup", ctypes.c_uint * 3),
        ("has_sync", ctypes.c_int),
        ("workers", ctypes.c_int),
        ("fn", ctypes.c_void_p),
        ("args", ctypes.POINTER(ctypes.c_void_p)),
        ("error", ctypes.c_char_p),
        ("error_size", ctypes.c_int),
        ("lines", ctypes.POINTER(ctypes.c_char_p)),
        ("n_lines", ctypes.c_int),
    ]


def _workers() -> int:
    env = os.environ.get("TALKIE_KERNELS_EMULATOR_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


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


def _pairs(value, names=None, what="argument"):
    """MLX accepts lists or (older API) name -> value dicts."""
    if value is None:
        return []
    if isinstance(value, dict):
        if names is None:
            return list(value.items())
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"[metal_kernel] Missing {what} {missing}.")
        return [value[n] for n in names]
    return list(value)


class _CompiledKernel:
    __slots__ = ("lib", "fn", "has_sync", "lines", "line_array", "source")

    def __init__(self, lib, fn, has_sync, source):
        self.lib = lib
        self.fn = fn
        self.has_sync = has_sync
        self.source = source
        self.lines = [line.encode() for line in source.split("\n")]
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
        self.compile_options = compile_options
        self._shape_infos = [
            (f"{n}_shape" in source, f"{n}_strides" in source, f"{n}_ndim" in source)
            for n in self.input_names
        ]
        self._attributes = [a for a in _ATTRIBUTES if a in source]
        self._compiled: dict[tuple, _CompiledKernel] = {}

    # -- source generation ---------------------------------------------------

    def _signature_source(self, kernel_name, inputs, output_dtypes, template):
        """The kernel source as MLX generates it (header + signature + body)."""
        parts = [self.header]
        if template:
            kinds = []
            for tname, value in template:
                kind = ("bool" if isinstance(value, bool) else "int" if isinstance(value, int)
                        else "typename")
                kinds.append(f"{kind} {tname}")
            parts.append("template <" + ", ".join(kinds) + ">\n")
        parts.append(f"[[kernel]] void {kernel_name}(\n")
        params = []
        index = 0
        for name, (dtype, ndim, size), (has_shape, has_strides, has_ndim) in zip(
            self.input_names, inputs, self._shape_infos
        ):
            location = "constant" if size < _MAX_CONSTANT_ARRAY_SIZE else "device"
            ref = "&" if ndim == 0 else "*"
            params.append(f"  const {location} {_type_name(dtype)}{ref} {name} [[buffer({index})]]")
            index += 1
            if ndim > 0:
                if has_shape:
                    params.append(f"  const constant int* {name}_shape [[buffer({index})]]")
                    index += 1
                if has_strides:
                    params.append(f"  const constant int64_t* {name}_strides [[buffer({index})]]")
                    index += 1
                if has_ndim:
                    params.append(f"  const constant int& {name}_ndim [[buffer({index})]]")
                    index += 1
        for name, dtype in zip(self.output_names, output_dtypes):
            t = _type_name(dtype)
            if self.atomic_outputs:
                t = f"atomic<{t}>"
            params.append(f"  device {t}* {name} [[buffer({index})]]")
            index += 1
        for attr in self._attributes:
            params.append(f"  {_ATTRIBUTES[attr][0]} {attr} [[{attr}]]")
        parts.append(",\n".join(params) + ") {\n")
        parts.append(self.source)
        parts.append("\n}\n")
        return "".join(parts)

    def _driver(self, kernel_name, inputs, output_dtypes, template):
        targs = ""
        if template:
            targs = "<" + ", ".join(_template_value(v) for _, v in template) + ">"
        args = []
        i = 0
        for (dtype, ndim, _), (has_shape, has_strides, has_ndim) in zip(inputs, self._shape_infos):
            t = _type_name(dtype)
            args.append(f"*(const {t}*)a[{i}]" if ndim == 0 else f"(const {t}*)a[{i}]")
            i += 1
            if ndim > 0:
                if has_shape:
                    args.append(f"(const int*)a[{i}]")
                    i += 1
                if has_strides:
                    args.append(f"(const int64_t*)a[{i}]")
                    i += 1
                if has_ndim:
                    args.append(f"*(const int*)a[{i}]")
                    i += 1
        for dtype in output_dtypes:
            t = _type_name(dtype)
            if self.atomic_outputs:
                t = f"metal::atomic<{t}>"
            args.append(f"({t}*)a[{i}]")
            i += 1
        for attr in self._attributes:
            mtype, expr = _ATTRIBUTES[attr]
            if mtype == "uint3":
                if expr is None:
                    args.append("uint3(0u, 0u, 0u)")
                else:
                    args.append(f"uint3(ids->{expr}[0], ids->{expr}[1], ids->{expr}[2])")
            else:
                args.append(f"(uint)({expr})")
        call = f"{kernel_name}{targs}(\n      " + ",\n      ".join(args) + ")"
        return (
            '#undef double\n'
            'extern "C" __attribute__((visibility("default")))\n'
            "void tk_thread(void* const* a, const tk_ids* ids) {\n"
            "  (void)ids;\n"
            f"  {call};\n"
            "}\n"
        )

    def _kernel_name(self, inputs, output_dtypes, template):
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

    def _check(self, text: str, generated: str):
        code = _strip_comments_and_strings(text)
        offset = generated.find(text) if text else -1
        base = generated[:offset].count("\n") if offset >= 0 else 0
        for pattern, reason in _FORBIDDEN:
            m = pattern.search(code)
            if m:
                line = base + code[: m.start()].count("\n") + 1
                raise MetalCompileError(
                    f"[metal_kernel] `{self.name}` is not valid Metal: {reason} "
                    f"(generated source line {line}).\n\nGenerated source:\n{_numbered(generated)}"
                )

    def _compile(self, inputs, output_dtypes, template, verbose):
        key = (tuple(inputs), tuple(output_dtypes), tuple((n, repr(v)) for n, v in template))
        compiled = self._compiled.get(key)
        if compiled is not None and not verbose:
            stats["memory_hits"] += 1
            return compiled
        kernel_name = self._kernel_name(inputs, output_dtypes, template)
        generated = self._signature_source(kernel_name, inputs, output_dtypes, template)
        if template:
            tdef = kernel_name + "<" + ", ".join(_template_value(v) for _, v in template) + ">"
            shown = (generated + f'\ntemplate [[host_name("{kernel_name}")]] [[kernel]] '
                     f"decltype({tdef}) {tdef};\n")
        else:
            shown = generated
        if verbose:
            print(f"Generated source code for `{self.name}`:\n```\n{shown}\n```")
        if compiled is not None:
            stats["memory_hits"] += 1
            return compiled
        self._check(self.header, generated)
        self._check(self.source, generated)
        body = _rewrite_threadgroup(_rewrite_half_literals(generated))
        leftover = _UNPARSED_TG_RE.search(_strip_comments_and_strings(body))
        if leftover:
            line = body[: leftover.start()].count("\n") + 1
            raise MetalCompileError(
                f"[metal_kernel] `{self.name}`: the emulator cannot parse the threadgroup "
                f"declaration on generated source line {line} (write it as "
                "`threadgroup T name[N];`).\n\nGenerated source:\n" + _numbered(generated)
            )
        tu = (
            '#include "tk_msl.h"\n'
            "#define double tk_error_metal_has_no_double\n"
            '#line 1 "generated"\n'
            f"{body}\n"
            '#line 1 "emulator_driver"\n'
            f"{self._driver(kernel_name, inputs, output_dtypes, template)}"
        )

        def fail(output):
            raise MetalCompileError(
                f"[metal_kernel] Unable to build `{self.name}` in the emulator "
                f"(compiler: {_compiler()}).\n{output}\nGenerated source:\n{_numbered(generated)}"
            )

        def analyze(callgraph):
            problems = _callgraph_problems(callgraph)
            if problems:
                raise MetalCompileError(
                    f"[metal_kernel] `{self.name}` is not valid Metal: " + "; ".join(problems)
                    + f"\n\nGenerated source:\n{_numbered(generated)}"
                )

        _load_runtime()
        with _lock:
            path = _build(tu, _CXX_FLAGS, "kernel", "kernel.cpp", fail, analyze)
            entry = _libraries.get(str(path))
            if entry is None:
                lib = ctypes.CDLL(str(path))
                image = path.read_bytes()
                has_sync = any(sym in image for sym in _SYNC_SYMBOLS)
                entry = (lib, ctypes.cast(lib.tk_thread, ctypes.c_void_p).value, has_sync)
                _libraries[str(path)] = entry
            else:
                stats["memory_hits"] += 1
        compiled = _CompiledKernel(entry[0], entry[1], entry[2], generated)
        self._compiled[key] = compiled
        return compiled

    # -- call ----------------------------------------------------------------

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup,
                 template=None, init_value=None, verbose=False, stream=None):
        inputs = _pairs(inputs, self.input_names, "inputs")
        output_shapes = _pairs(output_shapes, self.output_names, "output_shapes")
        output_dtypes = _pairs(output_dtypes, self.output_names, "output_dtypes")
        template = [tuple(p) for p in _pairs(template)]
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"[metal_kernel] Expected `inputs` to have size {len(self.input_names)} "
                f"but got size {len(inputs)}."
            )
        if len(output_shapes) != len(self.output_names):
            raise ValueError(
                f"[metal_kernel] Expected `output_shapes` to have size {len(self.output_names)} "
                f"but got size {len(output_shapes)}."
            )
        if len(output_dtypes) != len(self.output_names):
            raise ValueError(
                f"[metal_kernel] Expected `output_dtypes` to have size {len(self.output_names)} "
                f"but got size {len(output_dtypes)}."
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

        keep = []  # numpy buffers that must outlive the launch
        args = []
        for x, (has_shape, has_strides, has_ndim) in zip(arrays, self._shape_infos):
            a = _to_numpy(x, self.ensure_row_contiguous)
            keep.append(a)
            args.append(a.ctypes.data)
            if x.ndim > 0:
                if has_shape:
                    s = np.array(a.shape, dtype=np.int32)
                    keep.append(s)
                    args.append(s.ctypes.data)
                if has_strides:
                    st = np.array([b // a.itemsize for b in a.strides], dtype=np.int64)
                    keep.append(st)
                    args.append(st.ctypes.data)
                if has_ndim:
                    nd = np.array([a.ndim], dtype=np.int32)
                    keep.append(nd)
                    args.append(nd.ctypes.data)
        outputs = []
        buffers = []
        for shape, dtype in zip(output_shapes, output_dtypes):
            out, buf = _new_output(tuple(int(s) for s in shape), dtype, init_value)
            outputs.append(out)
            buffers.append(buf)
            args.append(out.ctypes.data)

        if all(g > 0 for g in grid):
            arg_array = (ctypes.c_void_p * max(1, len(args)))(*args)
            err = ctypes.create_string_buffer(8192)
            launch = _Launch()
            launch.grid[:] = grid
            launch.threadgroup[:] = [min(t, g) for t, g in zip(threadgroup, grid)]
            launch.has_sync = int(compiled.has_sync)
            launch.workers = _workers()
            launch.fn = compiled.fn
            launch.args = arg_array
            launch.error = ctypes.cast(err, ctypes.c_char_p)
            launch.error_size = len(err)
            launch.lines = compiled.line_array
            launch.n_lines = len(compiled.lines)
            if _load_runtime().tk_run(ctypes.byref(launch)) != 0:
                raise EmulatorError(
                    f"[metal_kernel] `{self.name}`: {err.value.decode(errors='replace')}"
                )
            for name, out, buf in zip(self.output_names, outputs, buffers):
                damage = _guard_damage(buf, out.nbytes)
                if damage:
                    raise EmulatorError(
                        f"[metal_kernel] `{self.name}` wrote out of bounds of output "
                        f"`{name}` (shape {out.shape}): {damage}."
                    )
        del keep
        return [_from_numpy(o, d) for o, d in zip(outputs, output_dtypes)]


# Bytes of guard zone around every output buffer (and copied input buffer).
_GUARD = 4096
_GUARD_BYTE = 0xA5


def _guarded(nbytes: int) -> np.ndarray:
    """A uint8 buffer with guard zones before and after `nbytes` of payload."""
    buf = np.empty(nbytes + 2 * _GUARD, dtype=np.uint8)
    buf[:_GUARD] = _GUARD_BYTE
    buf[_GUARD + nbytes:] = _GUARD_BYTE
    return buf


def _guard_damage(buf: np.ndarray, nbytes: int) -> str | None:
    before = np.flatnonzero(buf[:_GUARD] != _GUARD_BYTE)
    after = np.flatnonzero(buf[_GUARD + nbytes:] != _GUARD_BYTE)
    if before.size:
        return f"{_GUARD - before[0]} bytes before its start"
    if after.size:
        return f"{after[-1] + 1} bytes past its end"
    return None


def _to_numpy(x: mx.array, contiguous: bool) -> np.ndarray:
    if x.dtype not in _TYPES:
        raise ValueError(f"[metal_kernel] The emulator does not support dtype {x.dtype}.")
    if x.dtype == mx.bfloat16:
        x = x.view(mx.uint16)
    a = np.asarray(x)
    if contiguous:
        # Copy between guard zones of all-ones bytes (NaN for floating point),
        # so that reads past either end show up in the results.
        buf = np.empty(a.nbytes + 2 * _GUARD, dtype=np.uint8)
        buf[:_GUARD] = 0xFF
        buf[_GUARD + a.nbytes:] = 0xFF
        out = buf[_GUARD:_GUARD + a.nbytes].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    return a


def _new_output(shape, dtype, init_value) -> tuple[np.ndarray, np.ndarray]:
    """(output array, its guarded buffer)."""
    if dtype not in _TYPES:
        raise ValueError(f"[metal_kernel] The emulator does not support dtype {dtype}.")
    np_dtype = np.dtype(_TYPES[dtype][1])
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    buf = _guarded(nbytes)
    out = buf[_GUARD:_GUARD + nbytes].view(np_dtype).reshape(shape)
    if init_value is not None:
        if dtype == mx.bfloat16:
            out.fill(np.asarray(mx.array(init_value, dtype=mx.bfloat16).view(mx.uint16)))
        else:
            out.fill(init_value)
    elif dtype == mx.bool_:
        out.fill(False)
    else:
        # Uninitialized on a GPU: poison (NaN for floats, all-ones for integers)
        # so that a kernel relying on it fails visibly.
        out.view(np.uint8).fill(0xFF)
    return out, buf


def _from_numpy(a: np.ndarray, dtype) -> mx.array:
    arr = mx.array(a)
    if dtype == mx.bfloat16:
        arr = arr.view(mx.bfloat16)
    return arr


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


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("the Metal emulator needs a POSIX system with a C++ compiler")
