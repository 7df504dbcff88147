"""Compiling and caching: the SIMT runtime and the kernel libraries.

Libraries are cached by the hash of (source, shim headers, compiler, flags)
on disk (``$TALKIE_KERNELS_EMULATOR_CACHE``, else
``$XDG_CACHE_HOME/talkie_kernels/metal_emulator``, else
``~/.cache/talkie_kernels/metal_emulator``) and, once loaded, in memory.
Compiles go to a temporary file renamed into place, so concurrent test
processes can share the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ._source import MetalCompileError, callgraph_problems, numbered

_HERE = Path(__file__).resolve().parent
INCLUDE = _HERE / "include"
_RUNTIME_SOURCE = _HERE / "simt_runtime.cpp"

KERNEL_FLAGS = [
    "-std=c++17", "-O2", "-shared", "-fPIC",
    # MSL has no C or C++ library: the shim uses compiler builtins only.
    "-nostdinc", "-nostdinc++",
    "-fno-exceptions", "-fno-rtti",
    # Metal's unsuffixed floating literals are float.
    "-fsingle-precision-constant",
    "-fno-strict-aliasing", "-Wno-attributes", "-Werror=return-type", "-Werror=vla",
    # Frame sizes (kernel.su) size the fiber stacks.
    "-fstack-usage",
]
RUNTIME_FLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-pthread"]
if os.environ.get("TALKIE_KERNELS_EMULATOR_UCONTEXT"):
    # Test hook: the portable ucontext fibers instead of the x86-64 switch.
    RUNTIME_FLAGS.append("-DTK_FORCE_UCONTEXT")

#: Counters for tests and curiosity.
stats = {"compiles": 0, "disk_hits": 0, "memory_hits": 0}

_lock = threading.RLock()
_compiler_ids: dict[str, str] = {}
_callgraph_support: dict[str, bool] = {}
_shim: list[str] = []
_libraries: dict[str, tuple[ctypes.CDLL, int, bool, int]] = {}
_runtime: list[ctypes.CDLL] = []


class EmulatorError(RuntimeError):
    """A kernel did something a GPU would hang on or that the emulator refuses."""


class Launch(ctypes.Structure):
    """Mirror of `tk_launch` in include/tk_simt.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("grid", ctypes.c_uint * 3),
        ("threadgroup", ctypes.c_uint * 3),
        ("has_sync", ctypes.c_int),
        ("workers", ctypes.c_int),
        ("stack_bytes", ctypes.c_ulong),
        ("fn", ctypes.c_void_p),
        ("args", ctypes.POINTER(ctypes.c_void_p)),
        ("error", ctypes.c_char_p),
        ("error_size", ctypes.c_int),
        ("lines", ctypes.POINTER(ctypes.c_char_p)),
        ("n_lines", ctypes.c_int),
    ]


def cache_dir() -> Path:
    env = os.environ.get("TALKIE_KERNELS_EMULATOR_CACHE")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "talkie_kernels" / "metal_emulator"
    root.mkdir(parents=True, exist_ok=True)
    return root


def compiler() -> str:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def _compiler_id(cxx: str) -> str:
    if cxx not in _compiler_ids:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
        _compiler_ids[cxx] = out.stdout.split("\n", 1)[0]
    return _compiler_ids[cxx]


def _supports_callgraph(cxx: str) -> bool:
    if cxx not in _callgraph_support:
        # GCC >= 10 writes call graphs; clang has no -fcallgraph-info.
        out = subprocess.run([cxx, "-v"], capture_output=True, text=True, check=False).stderr
        m = re.search(r"^gcc version (\d+)", out, flags=re.M)
        _callgraph_support[cxx] = bool(m) and int(m.group(1)) >= 10
    return _callgraph_support[cxx]


def _shim_text() -> str:
    if not _shim:
        _shim.append("".join(p.read_text() for p in sorted(INCLUDE.iterdir()) if p.is_file()))
    return _shim[0]


def _build(source: str, flags: list[str], stem: str, on_error, analyze=None) -> Path:
    """Compile `source` into a cached shared library; returns its path.

    `on_error(compiler_output)` must raise. `analyze(callgraph)`, when given,
    runs on the call graph of an -O0 compile made alongside (GCC only).
    """
    cxx = compiler()
    key = hashlib.sha256(
        "\0".join([source, _shim_text(), cxx, _compiler_id(cxx), *flags]).encode()
    ).hexdigest()[:32]
    cache = cache_dir()
    target = cache / f"{stem}-{key}.so"
    if target.exists():
        stats["disk_hits"] += 1
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / f"{stem}.cpp"
        src.write_text(source)
        out = Path(tmp) / f"{stem}.so"
        checker = None
        if analyze is not None and _supports_callgraph(cxx):
            check_flags = [f for f in flags if f not in ("-O2", "-shared")]
            checker = subprocess.Popen(
                [cxx, *check_flags, "-O0", "-c", "-fcallgraph-info", f"-I{INCLUDE}",
                 "-o", str(Path(tmp) / "check.o"), str(src)],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        proc = subprocess.run(
            [cxx, *flags, f"-I{INCLUDE}", "-o", str(out), str(src), "-lm"],
            capture_output=True, text=True, check=False, cwd=tmp,
        )
        if checker is not None:
            checker.wait()
        if proc.returncode != 0:
            on_error(proc.stderr.replace(str(src), f"{stem}.cpp"))
        if checker is not None and checker.returncode == 0:
            for graph in Path(tmp).glob("*.ci"):
                analyze(graph.read_text())
        frames = sum(
            int(m.group(1))
            for su in Path(tmp).glob("*.su")
            for m in re.finditer(r"\t(\d+)\t", su.read_text())
        )
        # Written before the library: a library on disk always has its sidecar.
        target.with_suffix(".stack").write_text(str(frames))
        os.replace(out, target)
    stats["compiles"] += 1
    return target


def runtime() -> ctypes.CDLL:
    """The SIMT runtime, loaded RTLD_GLOBAL: kernel libraries link against it."""
    with _lock:
        if not _runtime:

            def fail(output):
                raise EmulatorError(f"cannot build the emulator runtime:\n{output}")

            path = _build(_RUNTIME_SOURCE.read_text(), RUNTIME_FLAGS, "tk_simt_runtime", fail)
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            lib.tk_run.argtypes = [ctypes.POINTER(Launch)]
            lib.tk_run.restype = ctypes.c_int
            _runtime.append(lib)
        return _runtime[0]


# A kernel library importing neither has no sync point: its threads run as
# plain calls, without fibers.
_SYNC_SYMBOLS = (b"tk_rt_simd", b"tk_rt_barrier")


def _stack_bytes(frames: int) -> int:
    """Fiber stack for a kernel whose frames sum to `frames` bytes.

    The sum of all frames bounds any call chain (recursion is refused); the
    margin covers the runtime and libm frames on the fiber.
    """
    env = os.environ.get("TALKIE_KERNELS_EMULATOR_STACK_KB")
    floor = int(env) * 1024 if env else 64 * 1024
    need = frames + 32 * 1024
    return max(floor, -(-need // 65536) * 65536)


def kernel_library(kernel: str, unit: str, generated: str) -> tuple[ctypes.CDLL, int, bool, int]:
    """Compile and load a kernel unit: (library, tk_thread address, has_sync, stack bytes)."""

    def fail(output):
        raise MetalCompileError(
            f"[metal_kernel] Unable to build `{kernel}` in the emulator (compiler: "
            f"{compiler()}).\n{output}\nGenerated source:\n{numbered(generated)}"
        )

    def analyze(callgraph):
        problems = callgraph_problems(callgraph)
        if problems:
            raise MetalCompileError(
                f"[metal_kernel] `{kernel}` is not valid Metal: " + "; ".join(problems)
                + f"\n\nGenerated source:\n{numbered(generated)}"
            )

    runtime()
    with _lock:
        path = _build(unit, KERNEL_FLAGS, "kernel", fail, analyze)
        entry = _libraries.get(str(path))
        if entry is None:
            lib = ctypes.CDLL(str(path))
            image = path.read_bytes()
            has_sync = any(symbol in image for symbol in _SYNC_SYMBOLS)
            sidecar = path.with_suffix(".stack")
            frames = int(sidecar.read_text()) if sidecar.exists() else 0
            entry = (lib, ctypes.cast(lib.tk_thread, ctypes.c_void_p).value, has_sync,
                     _stack_bytes(frames))
            _libraries[str(path)] = entry
        else:
            stats["memory_hits"] += 1
        return entry


def clear_memory_cache() -> None:
    """Forget loaded kernel libraries (the disk cache stays)."""
    with _lock:
        _libraries.clear()
