from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import IrOp, register_op

_counter = itertools.count()


@pytest.fixture
def row_sum_op() -> IrOp:
    """A fresh toy op with a reduction (row sums), declared under a unique name per test."""

    def row_sum(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1)

    row_sum.__name__ = f"toy_row_sum_{next(_counter)}"
    return register_op(
        has_reduction=True, native_variant_on={ird.PlatformKind.CPU: "toy: pretend ATen varies"}
    )(row_sum)


@pytest.fixture(autouse=True)
def _default_mode() -> Iterator[None]:
    """Every test starts and ends in default mode with no aten overrides installed."""
    ird.set_batch_invariant(False)
    yield
    ird.set_batch_invariant(False)
    ird.uninstall_aten_overrides()
