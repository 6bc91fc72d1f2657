"""Fixtures: seeds, batch-invariant mode reset and the SM90 gate (helpers: fp8_testing.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fp8_testing import sm90_skip_reason

from ir_dispatch.testing import seeded_default_mode


@pytest.fixture(autouse=True)
def _seed_and_mode() -> Iterator[None]:
    """Every test starts seeded, in default mode; the mode is reset afterwards."""
    with seeded_default_mode():
        yield


@pytest.fixture(scope="session")
def cutlass_module() -> object:
    """The built extension on an SM90 GPU (a build failure there fails the tests)."""
    reason = sm90_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from bi_cutlass_fp8 import get_module

    return get_module()
