"""pytest fixtures shared by the op tests (definitions live in impls.py)."""

import pytest
from impls import IMPLS, Impl


@pytest.fixture(params=IMPLS)
def impl(request) -> Impl:
    return Impl(request.param)
