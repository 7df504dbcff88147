"""Python started in the clone root imports ``talkie_kernels`` from the source
tree (``sys.path[0] == ''``), which has no compiled extension after a regular
``pip install .``: the package must load the installed one, and say what to do
when there is none (``talkie_kernels/native.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import talkie_kernels as tk
from talkie_kernels import native

ROOT = Path(__file__).resolve().parents[1]

_SNIPPET = """
import mlx.core as mx
mx.set_default_device(mx.cpu)
import talkie_kernels as tk
print(tk.__file__)
print(tk.backend())
print(tk.native.location)
x = mx.ones((2, 64))
print(mx.allclose(tk.rms_norm(x), x).item())
"""


def test_python_in_the_clone_root_uses_the_native_extension():
    # `python -c` puts '' (the working directory) first on sys.path, as the
    # README snippets and `python -m pytest` do.
    run = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", _SNIPPET],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    source, backend, location, ok = run.stdout.split("\n")[:4]
    assert Path(source).resolve() == ROOT / "talkie_kernels" / "__init__.py"  # the source tree
    assert backend == "native", run.stderr
    assert ok == "True"
    assert Path(location).is_file()


def test_no_installed_extension_says_to_install(monkeypatch):
    monkeypatch.setattr(native, "_installed_extensions", lambda: iter(()))
    module, path, reason = native._load_installed()
    assert module is None and path is None
    assert "source tree" in reason and "circular" not in reason
    assert f"run `pip install .` in {native._HERE.parent}" in reason
    assert f"no installed talkie-kernels {tk.__version__}" in reason


def test_an_installed_extension_of_another_version_is_not_loaded(monkeypatch, tmp_path):
    fake = tmp_path / "_native.so"
    fake.write_bytes(b"not an extension")
    monkeypatch.setattr(native, "_installed_extensions", lambda: iter([("0.0.1", fake)]))
    module, _, reason = native._load_installed()
    assert module is None
    assert "another version" in reason and "0.0.1" in reason and str(fake) in reason
    assert "run `pip install .`" in reason


def test_the_loader_reads_this_packages_version():
    # native.py runs inside talkie_kernels/__init__, before __version__ may be set.
    assert native._own_version() == tk.__version__
