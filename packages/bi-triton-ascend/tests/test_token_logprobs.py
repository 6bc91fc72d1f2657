"""token_logprobs: the bits of ``log_softmax(x, -1, fp32).gather(-1, ids)``, rows unwritten.

The trainer differentiates through this package's ``log_softmax`` and a gather while vLLM's
sampler calls ``token_logprobs``; every comparison here is bitwise (the fp32 words, so -0.0 and
NaN payloads count too) against ``log_softmax`` of the same tensor, never a tolerance.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from bi_testutils import DTYPES, probe_positions, rand, with_probe

import bi_triton_ascend as bta
import ir_dispatch as ird
from bi_triton_ascend import _platform

softmax_module = importlib.import_module("bi_triton_ascend.ops.softmax")
tlp_module = importlib.import_module("bi_triton_ascend.ops.token_logprobs")

DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
# Just past the one-pass limit (3 chunks, the last one 1 long) and Qwen3's vocabulary.
VOCABS = pytest.mark.parametrize("vocab", [8193, 151936], ids=["V8193", "V151936"])
# Chunk edges of softmax.CHUNK (4096) and the row's ends.
EDGE_IDS = (0, 4095, 4096, 4097, -1)
INVARIANCE_BATCHES_CPU = (1, 2, 3, 17, 64)


def rows_for_device() -> int:
    """Rows per case: a few in the interpreter (slow), more on a GPU."""
    return 3 if _platform.interpreting() else 64


def reference(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """What the trainer computes: this package's fp32 log_softmax rows, gathered."""
    return bta.log_softmax(x, -1, torch.float32).gather(-1, ids.long())


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype == torch.float32, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got, want)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), "bits differ"


def edge_ids(rows: int, vocab: int, n: int, device: torch.device) -> torch.Tensor:
    """``[rows, n]`` ids: the chunk edges and row ends, rotated per row, then random ones."""
    edges = [i % vocab for i in EDGE_IDS]
    gen = torch.Generator().manual_seed(rows * 7 + n)
    out = torch.randint(0, vocab, (rows, n), generator=gen)
    for r in range(rows):
        for j in range(n):
            if j < len(edges):
                out[r, j] = edges[(r + j) % len(edges)]
    return out.to(device)


def logits_with_inf(
    rows: int, vocab: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Random logits; row 1 has a whole chunk (4096..8191, if there) and its last one at -inf."""
    x = rand(rows, vocab, dtype=dtype, device=device, scale=4.0)
    if rows > 1:
        x[1, 4096:8192] = -float("inf")
        x[1, -1] = -float("inf")
    return x


# --------------------------------------------------------------------------------- the bits
@VOCABS
@pytest.mark.parametrize("n", [1, 5])
@dtypes
def test_equals_log_softmax_gather(
    dtype: torch.dtype, n: int, vocab: int, device: torch.device
) -> None:
    rows = rows_for_device()
    x = logits_with_inf(rows, vocab, dtype, device)
    ids = edge_ids(rows, vocab, n, device)
    got = bta.token_logprobs(x, ids)
    assert_same_bits(got, reference(x, ids))
    if n == 5:  # row 1's -inf chunk and last element are hit by edge ids
        assert torch.isinf(got[1]).any()


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_equals_the_trainers_upcast_rows(half: torch.dtype, device: torch.device) -> None:
    """16-bit logits give the bits of the trainer's ``log_softmax(logits.float())`` too."""
    x = rand(2, 151936, dtype=half, device=device, scale=4.0)
    ids = edge_ids(2, 151936, 5, device)
    assert_same_bits(bta.token_logprobs(x, ids), reference(x.float(), ids))


@pytest.mark.parametrize("layout", ["column-slice", "transposed", "row-gaps"], ids=lambda s: s)
def test_any_logits_strides(layout: str, device: torch.device) -> None:
    rows, vocab = 3, 8193
    if layout == "column-slice":  # a vocabulary padded to 8200, sliced
        x = rand(rows, vocab + 7, dtype=torch.bfloat16, device=device, scale=4.0)[:, 3 : 3 + vocab]
    elif layout == "transposed":  # column-major
        x = rand(vocab, rows, dtype=torch.bfloat16, device=device, scale=4.0).t()
    else:  # every other row of a taller tensor
        x = rand(2 * rows, vocab, dtype=torch.bfloat16, device=device, scale=4.0)[::2]
    assert not x.is_contiguous()
    ids = edge_ids(rows, vocab, 5, device)
    assert_same_bits(bta.token_logprobs(x, ids), reference(x, ids))


def test_int32_and_strided_token_ids(device: torch.device) -> None:
    x = logits_with_inf(3, 8193, torch.float16, device)
    ids = edge_ids(3, 8193, 5, device)
    want = reference(x, ids)
    assert_same_bits(bta.token_logprobs(x, ids.to(torch.int32)), want)
    wide = torch.zeros(3, 10, dtype=torch.int64, device=device)
    wide[:, ::2] = ids
    assert_same_bits(bta.token_logprobs(x, wide[:, ::2]), want)  # column stride 2
    col_major = ids.t().contiguous().t()
    assert not col_major.is_contiguous()
    assert_same_bits(bta.token_logprobs(x, col_major.to(torch.int32)), want)


def test_duplicate_ids_and_many_ids(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated ids, and more ids than one block of the per-row loop (``MAX_BLOCK_N``)."""
    monkeypatch.setattr(tlp_module, "MAX_BLOCK_N", 4)
    x = rand(2, 8193, dtype=torch.bfloat16, device=device, scale=4.0)
    ids = torch.tensor([[7] * 6 + [8192, 0, 4096, 4095, 1], [3, 4097] * 5 + [8192]], device=device)
    got = bta.token_logprobs(x, ids)
    assert_same_bits(got, reference(x, ids))
    assert torch.equal(got[0, :6], got[0, :1].expand(1, 6)[0])


@pytest.mark.parametrize("vocab", [1000, 8192], ids=["V1000", "V8192-one-pass-limit"])
@dtypes
def test_short_rows_use_the_one_pass_kernel(dtype: torch.dtype, vocab: int, device) -> None:
    x = logits_with_inf(3, vocab, dtype, device)
    ids = edge_ids(3, vocab, 5, device)
    assert_same_bits(bta.token_logprobs(x, ids), reference(x, ids))


def test_long_rows_write_no_rows(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    """Past ONE_PASS_MAX the fp32 rows are never written: ``_chunk_write_kernel`` never runs."""
    x = rand(2, 8193, dtype=torch.bfloat16, device=device, scale=4.0)
    ids = edge_ids(2, 8193, 3, device)
    want = reference(x, ids)

    class NoRows:
        def __getitem__(self, grid: object) -> None:
            raise AssertionError("token_logprobs wrote log_softmax rows")

    monkeypatch.setattr(softmax_module, "_chunk_write_kernel", NoRows())
    assert_same_bits(bta.token_logprobs(x, ids), want)


def test_small_chunks(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    """Many chunks per row (BLOCK_C of 64 and 128) through tests' small ONE_PASS_MAX/CHUNK."""
    monkeypatch.setattr(softmax_module, "ONE_PASS_MAX", 16)
    monkeypatch.setattr(softmax_module, "CHUNK", 16)
    for vocab in (17, 1000, 1100):
        x = logits_with_inf(3, vocab, torch.float32, device)
        x[0, 16:48] = -float("inf")  # two whole chunks
        ids = torch.randint(0, vocab, (3, 9), device=device)
        ids[0, :3] = torch.tensor([15, 16, 47], device=device) % vocab
        assert_same_bits(bta.token_logprobs(x, ids), reference(x, ids))


def test_whole_row_at_minus_inf_is_nan_like_log_softmax(device: torch.device) -> None:
    x = rand(2, 8193, dtype=torch.float32, device=device)
    x[0] = -float("inf")
    ids = edge_ids(2, 8193, 3, device)
    got, want = bta.token_logprobs(x, ids), reference(x, ids)
    assert torch.isnan(got[0]).all() and torch.isnan(want[0]).all()
    assert_same_bits(got[1:], want[1:])


# --------------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("n", [1, 5])
def test_probe_row_alone_equals_it_in_any_batch(n: int, device: torch.device) -> None:
    vocab = 8193 if _platform.interpreting() else 151936
    sizes = INVARIANCE_BATCHES_CPU if _platform.interpreting() else (*range(1, 258), 1000)
    probe = logits_with_inf(1, vocab, torch.bfloat16, device)
    probe_ids = edge_ids(1, vocab, n, device)
    alone = bta.token_logprobs(probe, probe_ids)
    assert_same_bits(alone, reference(probe, probe_ids))
    for m in sizes:
        batch = with_probe(probe, m)
        ids = torch.randint(0, vocab, (m, n), device=device)
        for p in probe_positions(m):
            ids[p] = probe_ids[0]
        out = bta.token_logprobs(batch, ids)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"
        if m in INVARIANCE_BATCHES_CPU:
            assert_same_bits(out, reference(batch, ids))


# --------------------------------------------------------------------------------- range, errors
@pytest.mark.parametrize("vocab", [1000, 8193], ids=["one-pass", "chunked"])
def test_out_of_range_ids_give_nan_only_there(vocab: int, device: torch.device) -> None:
    x = rand(3, vocab, dtype=torch.bfloat16, device=device, scale=4.0)
    ids = edge_ids(3, vocab, 5, device)
    want = reference(x, ids)
    bad = ids.clone()
    bad[0, 1], bad[1, 3], bad[2, 0] = -1, vocab, 2**40
    got = bta.token_logprobs(x, bad)
    is_bad = torch.zeros_like(bad, dtype=torch.bool)
    is_bad[0, 1] = is_bad[1, 3] = is_bad[2, 0] = True
    assert torch.isnan(got[is_bad]).all()
    assert_same_bits(got[~is_bad], want[~is_bad])
    int32 = bad.clone()
    int32[2, 0] = -(2**31)
    assert torch.isnan(bta.token_logprobs(x, int32.to(torch.int32))[is_bad]).all()


def test_empty_shapes(device: torch.device) -> None:
    x = rand(3, 8193, dtype=torch.bfloat16, device=device)
    assert bta.token_logprobs(x, torch.empty(3, 0, dtype=torch.long, device=device)).shape == (3, 0)
    empty = bta.token_logprobs(x[:0], torch.empty(0, 2, dtype=torch.long, device=device))
    assert empty.shape == (0, 2) and empty.dtype == torch.float32
    no_vocab = bta.token_logprobs(x[:, :0], torch.zeros(3, 2, dtype=torch.long, device=device))
    assert torch.isnan(no_vocab).all()


def test_bad_inputs_name_the_argument(device: torch.device) -> None:
    x = rand(3, 100, dtype=torch.float32, device=device)
    ids = torch.zeros(3, 2, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="token_logprobs: logits must be 2-D"):
        bta.token_logprobs(x[0], ids)
    with pytest.raises(ValueError, match="token_logprobs: token_ids must be 2-D"):
        bta.token_logprobs(x, ids[:, 0])
    with pytest.raises(TypeError, match="token_ids must have dtype int32, int64; got float32"):
        bta.token_logprobs(x, ids.float())
    with pytest.raises(TypeError, match="logits must have dtype bfloat16, float16, float32"):
        bta.token_logprobs(x.double(), ids)
    with pytest.raises(ValueError, match=r"token_ids must have one row per logits row \(3\)"):
        bta.token_logprobs(x, ids[:2])
    with pytest.raises(TypeError, match=r"token_ids must be a torch\.Tensor"):
        bta.token_logprobs(x, [[0, 1]] * 3)
    if device.type != "cpu":
        with pytest.raises(ValueError, match="token_ids must be on logits's device"):
            bta.token_logprobs(x, ids.cpu())


# --------------------------------------------------------------------------------- accuracy
@VOCABS
@dtypes
def test_accuracy_against_float64(dtype: torch.dtype, vocab: int, device: torch.device) -> None:
    x = logits_with_inf(2, vocab, dtype, device)
    ids = edge_ids(2, vocab, 5, device)
    got = bta.token_logprobs(x, ids).double()
    want = torch.log_softmax(x.double(), -1).gather(-1, ids)
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf])
    err = (got - want).abs()[~inf]
    assert (err <= 1e-5 * (1 + want.abs()[~inf])).all(), err.max()


# --------------------------------------------------------------------------------- dispatch
@pytest.mark.usefixtures("prefer_triton")
def test_ir_dispatch_serves_the_kernel_in_batch_invariant_mode(device: torch.device) -> None:
    x = rand(2, 8193, dtype=torch.bfloat16, device=device, scale=4.0)
    ids = edge_ids(2, 8193, 3, device)
    with ird.batch_invariant(), ird.recording() as rec:
        got = ird.ops.token_logprobs(x, ids)
        want = ird.ops.log_softmax(x, -1, torch.float32).gather(-1, ids)
    assert rec.providers() == {"token_logprobs": ["triton"], "log_softmax": ["triton"]}
    assert_same_bits(got, want)
    with ird.batch_invariant(), ird.recording() as rec:  # an id dtype the kernel declines
        ird.ops.token_logprobs(x, ids.to(torch.int16))
    assert rec.providers() == {"token_logprobs": ["composite"], "log_softmax": ["triton"]}
