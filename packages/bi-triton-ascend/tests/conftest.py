"""Device fixture, seeds, interpreter switch and mode hygiene for bi-triton-ascend's tests.

Without a CUDA device the tests run the kernels in Triton's CPU interpreter: the switch
(``TRITON_INTERPRET=1``) must be set before Triton decorates the kernels, so it happens here,
before ``bi_triton_ascend`` is imported. With a CUDA device the same tests run on the GPU and
the ``cuda``-marked tests run too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# The interpreter's tl.dot is numpy's OpenBLAS, whose Haswell kernels (also picked on AMD Zen)
# round a row by its place in the tile; its Sandybridge ones do not (test_interpreter_blas.py).
# OpenBLAS reads this when numpy loads, so before torch (which loads numpy) is imported. It
# does not touch GPU runs, where numpy computes no kernel. The nox sessions set it too.
os.environ["OPENBLAS_CORETYPE"] = "Sandybridge"

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import bi_triton_ascend  # noqa: F401  (registers the provider)
import ir_dispatch as ird
from bi_triton_ascend import _platform
from ir_dispatch.testing import seeded_default_mode, skip_marked


def pytest_configure(config: pytest.Config) -> None:
    # Triton 3.6's interpreter converts 1-element arrays to scalars (numpy deprecation noise).
    config.addinivalue_line(
        "filterwarnings", "ignore:Conversion of an array with ndim > 0:DeprecationWarning"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``cuda``-marked tests skip, with the reason, where no CUDA device runs the kernels."""
    if torch.cuda.is_available() and not _platform.interpreting():
        return
    skip_marked(items, "cuda", "needs an NVIDIA GPU (CUDA) with Triton, not the interpreter")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels run: the GPU when there is one, else CPU tensors (interpreter)."""
    return torch.device("cpu" if _platform.interpreting() else "cuda")


@pytest.fixture
def prefer_triton() -> Iterator[None]:
    """Put provider ``triton`` first for every op it implements, then restore numeric order.

    On CPU tensors ir-dispatch's own ``cpu`` provider (pure torch, registered first at the
    same priority) would otherwise serve, and these tests are about the Triton kernels.
    """
    names = [op.name for op in ird.list_ops() if "triton" in [i.provider for i in op.impls]]
    for name in names:
        ird.get_op(name).set_priority(["triton"])
    yield
    for name in names:
        ird.get_op(name).set_priority(None)


@pytest.fixture(autouse=True)
def _seed_and_mode() -> Iterator[None]:
    """Fixed seed; default mode and no aten overrides before and after every test."""
    with seeded_default_mode(uninstall_overrides=True):
        yield
