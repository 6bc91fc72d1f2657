"""softmax / log_softmax: any dim, dtype argument, long (vocabulary) rows, invariance."""

from __future__ import annotations

import importlib

import pytest
import torch
from bi_testutils import DTYPES, assert_accurate, batches, probe_positions, rand, with_probe

import bi_triton_ascend as bta

softmax_module = importlib.import_module("bi_triton_ascend.ops.softmax")

DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
OPS = [
    pytest.param(bta.softmax, torch.softmax, id="softmax"),
    pytest.param(bta.log_softmax, torch.log_softmax, id="log_softmax"),
]


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the chunked (two-kernel) path on small rows: 16-element chunks."""
    monkeypatch.setattr(softmax_module, "ONE_PASS_MAX", 16)
    monkeypatch.setattr(softmax_module, "CHUNK", 16)


@dtypes
@pytest.mark.parametrize("ours,theirs", OPS)
@pytest.mark.parametrize("dim", [0, 1, -1], ids=["dim0", "dim1", "dim-1"])
def test_matches_float64(ours, theirs, dim: int, dtype: torch.dtype, device: torch.device) -> None:
    x = rand(3, 5, 37, dtype=dtype, device=device, scale=4.0)
    out = ours(x, dim)
    assert out.dtype == dtype
    assert_accurate(out, theirs(x.double(), dim), dtype)


@pytest.mark.parametrize("ours,theirs", OPS)
@pytest.mark.parametrize(
    "x_dtype,out_dtype",
    [
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
    ids=["bf16-to-fp32", "fp32-to-bf16", "fp16-to-fp16"],
)
def test_dtype_argument_like_torch(ours, theirs, x_dtype, out_dtype, device: torch.device) -> None:
    x = rand(4, 37, dtype=x_dtype, device=device, scale=4.0)
    out = ours(x, -1, out_dtype)
    assert out.dtype == out_dtype
    # torch casts the input to `dtype` first; the reference does the same in float64.
    assert_accurate(out, theirs(x.to(out_dtype).double(), -1), out_dtype)


@pytest.mark.parametrize("ours,theirs", OPS)
def test_long_rows_chunked(ours, theirs, chunked: None, device: torch.device) -> None:
    x = rand(3, 5, 101, dtype=torch.float32, device=device, scale=4.0)
    x[0, 0, 40:] = -float("inf")  # whole chunks at -inf must not poison the sum
    for dim in (-1, 1):
        assert_accurate(ours(x, dim), theirs(x.double(), dim), torch.float32)


@pytest.mark.parametrize("long_rows", [False, True], ids=["one-pass", "chunked"])
@pytest.mark.parametrize("ours", [bta.softmax, bta.log_softmax], ids=["softmax", "log_softmax"])
def test_rows_alone_equal_rows_in_any_batch(
    ours, long_rows: bool, monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    if long_rows:
        monkeypatch.setattr(softmax_module, "ONE_PASS_MAX", 64)
        monkeypatch.setattr(softmax_module, "CHUNK", 64)
    probe = rand(1, 301, dtype=torch.bfloat16, device=device, scale=4.0)
    alone = ours(probe, -1, torch.float32)
    for m in batches():
        out = ours(with_probe(probe, m), -1, torch.float32)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"


def test_empty_and_bad_inputs(device: torch.device) -> None:
    assert bta.softmax(torch.empty(0, 8, device=device), -1).shape == (0, 8)
    assert bta.log_softmax(torch.empty(4, 0, device=device), -1).shape == (4, 0)
    with pytest.raises(ValueError, match="dim must be in"):
        bta.softmax(torch.randn(2, 3, device=device), 2)
    with pytest.raises(TypeError, match="dtype must be None or one of"):
        bta.softmax(torch.randn(2, 3, device=device), -1, torch.float64)


@pytest.mark.parametrize("length", [4000, 151936], ids=["one-pass", "vocabulary"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("ours", [bta.softmax, bta.log_softmax], ids=["softmax", "log_softmax"])
def test_input_dtype_does_not_change_the_bits(
    ours, half: torch.dtype, length: int, device: torch.device
) -> None:
    """A 16-bit row with ``dtype=fp32`` gives the bits of the same row upcast first.

    vLLM's token logprobs pass bf16 logits (no fp32 copy) while a trainer may upcast them; both
    must land on the same bits. On GPUs this holds because the load layout is pinned
    (``softmax.VEC``): without the pin a bf16 row is read 8 elements per thread and an fp32 row
    4, and the row sums run in different trees.
    """
    x = rand(3, length, dtype=half, device=device, scale=4.0)
    assert torch.equal(ours(x, -1, torch.float32), ours(x.float(), -1, torch.float32))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize(
    "shape,dim,transpose",
    [((2, 3, 1, 40), -1, False), ((40, 6), 0, False), ((5, 40), 1, True), ((), 0, False)],
    ids=["attention-rows", "dim0", "transposed", "0-D"],
)
def test_plans_replay_with_new_data(
    log: bool, shape: tuple[int, ...], dim: int, transpose: bool, device: torch.device
) -> None:
    """A stored one-pass launch serves later calls of the same layout with the full path's
    bits (strided and 0-D inputs included)."""
    plans = importlib.import_module("bi_triton_ascend.ops.softmax")._plans
    op = bta.log_softmax if log else bta.softmax
    plans.clear()
    g = torch.Generator().manual_seed(0)

    def make() -> torch.Tensor:
        x = torch.randn(shape[::-1] if transpose else shape, generator=g).to(device)
        return x.t() if transpose else x

    op(make(), dim)
    assert len(plans) == 1
    for _ in range(2):
        x = make()
        got = op(x, dim)
        stored = dict(plans)
        plans.clear()
        want = op(x, dim)
        plans.update(stored)
        assert got.shape == want.shape and torch.equal(got, want)
