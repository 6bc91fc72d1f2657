"""mean over any dims (keepdim, dtype): accuracy, long rows, invariance, empty."""

from __future__ import annotations

import importlib

import pytest
import torch
from bi_testutils import DTYPES, assert_accurate, batches, probe_positions, rand, with_probe

import bi_triton_ascend as bta

mean_module = importlib.import_module("bi_triton_ascend.ops.mean")

DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize(
    "dim", [None, [], [0], [-1], [1, 2], [2, 0], [0, 1, 2]],
    ids=["none", "empty-list", "0", "-1", "1,2", "2,0", "all"],
)  # fmt: skip
@pytest.mark.parametrize("keepdim", [False, True], ids=["", "keepdim"])
def test_matches_float64(dim, keepdim: bool, dtype: torch.dtype, device: torch.device) -> None:
    x = rand(3, 5, 37, dtype=dtype, device=device)
    out = bta.mean(x, dim, keepdim)
    want_dims = tuple(range(3)) if not dim else tuple(dim)
    ref = x.double().mean(dim=want_dims, keepdim=keepdim)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_accurate(out, ref, dtype)


def test_dtype_argument_and_long_rows(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    monkeypatch.setattr(mean_module, "ONE_PASS_MAX", 32)
    monkeypatch.setattr(mean_module, "BLOCK", 16)
    monkeypatch.setattr(mean_module, "MAX_CHUNKS", 4)
    x = rand(4, 1000, dtype=torch.bfloat16, device=device)
    out = bta.mean(x, [-1], dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_accurate(out, x.double().mean(-1), torch.float32)
    assert_accurate(bta.mean(x), x.double().mean(), torch.bfloat16)  # one row of 4000


@pytest.mark.parametrize("op", ["mean", "mean_of_squares"])
@pytest.mark.parametrize("length", [128, 300, 4100])
def test_rows_alone_equal_rows_in_any_batch(op: str, length: int, device: torch.device) -> None:
    """Rows of 128 go 32 to a program and rows of 300 eight (``row_tile``): the probe's bits
    must not depend on which slot of a tile it lands in, nor on how many rows share it."""
    fn = getattr(bta, op)
    probe = rand(1, length, dtype=torch.bfloat16, device=device)
    alone = fn(probe, [-1])
    for m in batches():
        out = fn(with_probe(probe, m), [-1])
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"


def test_rows_in_every_tile_slot(device: torch.device) -> None:
    """A probe at each of the 32 slots of a 128-wide row tile gives the bits it has alone."""
    block, tile_rows = mean_module.row_tile(128)
    assert (block, tile_rows) == (128, 32)
    probe = rand(1, 128, dtype=torch.float32, device=device)
    alone = bta.mean(probe, [-1])
    batch = rand(2 * tile_rows + 3, 128, dtype=torch.float32, device=device)
    for slot in range(tile_rows + 1):
        trial = batch.clone()
        trial[slot] = probe[0]
        assert torch.equal(bta.mean(trial, [-1])[slot], alone[0]), slot


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("length", [1, 37, 128, 1024, 4100])
def test_mean_of_squares_is_mean_of_the_fp32_squares(
    dtype: torch.dtype, length: int, device: torch.device
) -> None:
    """The pattern's bits (``x.float().pow(2)``, then ``mean``), and float64's value."""
    x = rand(5, 3, length, dtype=dtype, device=device, scale=3.0)
    got = bta.mean_of_squares(x, [-1], True)
    assert got.dtype == torch.float32 and got.shape == (5, 3, 1)
    assert torch.equal(got, bta.mean(x.float().pow(2), [-1], True))
    assert_accurate(got, x.double().pow(2).mean(-1, keepdim=True), torch.float32)


def test_mean_of_squares_odd_layouts_and_long_rows(
    monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    """Transposed rows, several dims, and the chunked path all keep the pattern's bits."""
    x = rand(40, 3, dtype=torch.bfloat16, device=device).t()
    assert torch.equal(bta.mean_of_squares(x, [1]), bta.mean(x.float().pow(2), [1]))
    y = rand(3, 4, 7, dtype=torch.float16, device=device)
    assert torch.equal(bta.mean_of_squares(y, [0, 2]), bta.mean(y.float().pow(2), [0, 2]))
    assert torch.equal(bta.mean_of_squares(y), bta.mean(y.float().pow(2)))
    monkeypatch.setattr(mean_module, "ONE_PASS_MAX", 32)
    monkeypatch.setattr(mean_module, "BLOCK", 16)
    monkeypatch.setattr(mean_module, "MAX_CHUNKS", 4)
    z = rand(4, 1000, dtype=torch.bfloat16, device=device)
    got = bta.mean_of_squares(z, [-1])
    assert torch.equal(got, bta.mean(z.float().pow(2), [-1]))
    assert_accurate(got, z.double().pow(2).mean(-1), torch.float32)


def test_mean_of_squares_refuses_integers(device: torch.device) -> None:
    with pytest.raises(TypeError, match="x"):
        bta.mean_of_squares(torch.arange(6, device=device).reshape(2, 3), [-1])


def test_empty(device: torch.device) -> None:
    assert torch.isnan(bta.mean(torch.empty(3, 0, device=device), [1])).all()
    assert bta.mean(torch.empty(0, 3, device=device), [1]).shape == (0,)
    with pytest.raises(ValueError, match="must not repeat"):
        bta.mean(torch.randn(2, 3, device=device), [1, -1])


@pytest.mark.parametrize(
    "make,dim,keepdim,dtype,planned",
    [
        (lambda g: torch.randn(2, 3, 96, generator=g), [-1], True, None, True),  # RMSNorm's
        (lambda g: torch.randn(96, 5, generator=g).t(), 1, False, None, True),  # strided rows
        (lambda g: torch.randn(4, 96, generator=g), None, False, torch.float32, True),
        (lambda g: torch.randn(3, 4, 5, generator=g).permute(2, 0, 1), [0, 2], False, None, False),
    ],
    ids=["keepdim", "strided", "all-dims", "copied"],
)
def test_plans_replay_with_new_data(
    make, dim, keepdim: bool, dtype, planned: bool, device: torch.device
) -> None:
    """A stored launch serves later calls of the same layout with the full path's bits; inputs
    the kernel could only read as a copy are never planned."""
    plans = importlib.import_module("bi_triton_ascend.ops.mean")._plans
    plans.clear()
    g = torch.Generator().manual_seed(0)
    first = make(g).to(device=device, dtype=torch.bfloat16)
    bta.mean(first, dim, keepdim, dtype)
    assert len(plans) == int(planned)
    for _ in range(2):
        x = make(g).to(device=device, dtype=torch.bfloat16)
        got = bta.mean(x, dim, keepdim, dtype)  # replayed when planned
        stored = dict(plans)
        plans.clear()
        want = bta.mean(x, dim, keepdim, dtype)  # the full path
        plans.update(stored)
        assert got.shape == want.shape and torch.equal(got, want)
