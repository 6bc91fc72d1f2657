"""The interpreter's matrix products must not depend on a row's position in the tile.

Triton's CPU interpreter computes ``tl.dot`` with ``numpy.matmul``, that is with OpenBLAS. Every
invariance test of the kernels assumes that a row of a product depends on that row alone (as
on GPUs, where a row's matrix instructions are the same wherever it sits in the tile). OpenBLAS
0.3.29's Haswell kernels, which its runtime dispatch also picks on AMD Zen CPUs, round rows 6-11
of a 16-row tile differently; then the invariance tests fail for a reason that is not the
kernels'. The nox sessions set ``OPENBLAS_CORETYPE=Sandybridge``; this test names the cause when
the suite runs elsewhere.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not INTERPRETING, reason="checks the CPU interpreter's BLAS only")
@pytest.mark.parametrize("rows", [16, 32, 64, 128])
def test_matmul_row_does_not_depend_on_its_position(rows: int) -> None:
    rng = np.random.default_rng(rows)
    moved = []
    for inner in (16, 32, 64, 128):
        for cols in (16, 32, 64, 128):
            a = rng.standard_normal((rows, inner)).astype(np.float32)
            b = rng.standard_normal((inner, cols)).astype(np.float32)
            whole = np.matmul(a, b, dtype=np.float32)
            for r in range(rows):
                alone = np.zeros_like(a)
                alone[0] = a[r]
                if not np.array_equal(np.matmul(alone, b, dtype=np.float32)[0], whole[r]):
                    moved.append((inner, cols, r))
    assert not moved, (
        f"numpy.matmul rounds a row differently at another position in a {rows}-row tile "
        f"(inner, cols, row) {moved[:5]}...: OpenBLAS picked row-variant kernels for this CPU; "
        f"run with OPENBLAS_CORETYPE=Sandybridge (the nox sessions set it)"
    )
