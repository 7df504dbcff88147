"""pytest fixtures shared by the op tests (the backends: impls.py)."""

import pytest
from impls import FUSED, Impl, get_impl

import talkie_kernels as tk


@pytest.fixture(params=FUSED)
def impl(request) -> Impl:
    """The backend a test runs on: the fused ones unless the test parametrizes
    ``impl`` itself (``indirect=True``)."""
    return get_impl(request.param)


@pytest.fixture(scope="module")
def native() -> Impl:
    return get_impl("native")


@pytest.fixture(params=tk.native.ops.available_isas() if tk.native_available() else ["unbuilt"])
def isa(request, native):
    """Runs a test with each instruction set's kernels this CPU supports, then restores the default."""
    N = tk.native.ops
    before = N.isa()
    N.use_isa(request.param)
    yield request.param
    N.use_isa(before)


@pytest.fixture
def restore_threads(native):
    n = tk.native.ops.num_threads()
    yield
    tk.native.ops.set_num_threads(n)
