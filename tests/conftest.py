"""pytest fixtures shared by the op tests (the backends: impls.py)."""

import pytest
from impls import FUSED, Impl, get_impl


@pytest.fixture(params=FUSED)
def impl(request) -> Impl:
    """The backend a test runs on: the fused ones unless the test parametrizes
    ``impl`` itself (``indirect=True``)."""
    return get_impl(request.param)
