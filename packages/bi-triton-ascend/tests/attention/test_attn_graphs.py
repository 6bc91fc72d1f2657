"""What a FULL CUDA graph freezes: the split grid from a static bound, and padded requests.

A captured launch keeps the host's choices (split or fused, the chunk grid, the partial
buffers) and replays them on new tensor contents: longer sequences than at capture, and decode
batches padded with requests that have no keys. These tests run the launches such a graph
replays (interpreter sizes; the GPU replays a real graph in ``test_attn_cuda.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _attn_cases import (
    DEVICE,
    TINY_GQA,
    Paged,
    Seq,
    around_switch,
    chunk_of,
    grid_of,
    make_seq,
    needs_kernels,
    pad_requests,
    paged,
)

from bi_triton_ascend import _platform
from bi_triton_ascend.attention import _launch, paged_attention

pytestmark = [
    needs_kernels,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
]
DT = torch.bfloat16
OUT = torch.float32  # compare before the final rounding
SCALE = TINY_GQA.head_size**-0.5
BLOCK = 16
CHUNK = chunk_of(TINY_GQA, DT)
GRID = grid_of(TINY_GQA, DT)


def _seqs(lengths: list[int], seed: int) -> list[Seq]:
    gen = torch.Generator().manual_seed(seed)
    return [make_seq(n, TINY_GQA, DT, gen, DEVICE or "cpu") for n in lengths]


def _batch(requests: list[tuple[Seq, int, int]], seed: int = 0) -> Paged:
    return paged(requests, BLOCK, torch.Generator().manual_seed(seed), DEVICE or "cpu")


def _call(batch: Paged, **kw: Any) -> torch.Tensor:
    return paged_attention(*batch.args(), SCALE, out_dtype=OUT, **kw)


def _equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.equal(a, b):
        diff = (a.float() - b.float()).abs().max().item()
        raise AssertionError(f"{what}: not bitwise equal (max |diff| {diff:.3g})")


def _mixed() -> list[tuple[Seq, int, int]]:
    """Decodes around chunk edges, a chunked prefill and a short prefill."""
    a, b, c, d = _seqs([4 * CHUNK + 3, CHUNK, 2 * CHUNK + 7, 9], seed=21)
    return [(a, a.length, 1), (b, b.length, 1), (c, c.length, CHUNK + 2), (d, d.length, 9)]


@pytest.mark.parametrize("window", [None, CHUNK + 3], ids=["full", "window"])
def test_a_much_larger_bound_gives_the_same_bits(window: int | None) -> None:
    """A split grid sized for the model's max length (as captured) equals the exact one."""
    batch = _batch(_mixed())
    exact = _call(batch, mode="split", sliding_window=window)
    fused = _call(batch, mode="fused", sliding_window=window)
    bound = GRID.chunk_start(50)  # 50 chunks: more than SPLIT_MIN_CHUNK_PROGRAMS: programs stride
    assert GRID.num_chunks(bound) == 50
    assert _launch._chunk_programs(50, 1, torch.device("cpu")) < 50
    big = _call(batch, mode="split", sliding_window=window, max_seq_len=bound)
    _equal(big, exact, "bound 50 chunks vs exact")
    _equal(big, fused, "bound 50 chunks vs fused")


@pytest.mark.parametrize("window", [None, 5, CHUNK + 3], ids=["full", "window5", "window-big"])
def test_programs_walking_several_chunks_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, window: int | None
) -> None:
    """One to three chunk programs per tile, each storing several chunks' partials."""
    batch = _batch(_mixed(), seed=1)
    want = _call(batch, mode="fused", sliding_window=window)
    for programs in (1, 2, 3):
        monkeypatch.setattr(_launch, "SPLIT_MIN_CHUNK_PROGRAMS", programs)
        monkeypatch.setattr(_launch, "SPLIT_PROGRAMS_PER_UNIT", 0)
        got = _call(batch, mode="split", sliding_window=window, max_seq_len=8 * CHUNK)
        _equal(got, want, f"{programs} chunk programs per tile")


def _straddling() -> list[tuple[Seq, int, int]]:
    """Decodes and short prefill tails of sequences ending around the grid's switch."""
    seqs = _seqs([*around_switch(GRID), GRID.long_from + 2 * GRID.long + 5], seed=22)
    q_lens = [1, 3, 1, 1, 9, 2, 1]
    return [(s, s.length, q) for s, q in zip(seqs, q_lens, strict=True)]


@pytest.mark.parametrize("window", [None, 40], ids=["full", "window40"])
def test_a_static_bound_and_striding_programs_across_the_switch(
    monkeypatch: pytest.MonkeyPatch, window: int | None
) -> None:
    """A graph-sized bound (50 chunks, mostly long ones), with one or three programs walking
    chunks c, c + P, ... over short and long chunks, gives the fused bits."""
    batch = _batch(_straddling(), seed=3)
    want = _call(batch, mode="fused", sliding_window=window)
    bound = GRID.chunk_start(50)
    _equal(_call(batch, mode="split", sliding_window=window, max_seq_len=bound), want, "bound")
    for programs in (1, 3):
        monkeypatch.setattr(_launch, "SPLIT_MIN_CHUNK_PROGRAMS", programs)
        monkeypatch.setattr(_launch, "SPLIT_PROGRAMS_PER_UNIT", 0)
        got = _call(batch, mode="split", sliding_window=window, max_seq_len=bound)
        _equal(got, want, f"{programs} chunk programs per tile")


def test_a_bound_that_ends_in_the_long_chunks_gives_nan_past_it() -> None:
    """A bound inside the long chunks: rows whose chunks reach past it are NaN, the others keep
    their bits."""
    short, long = _seqs([GRID.long_from + 3, GRID.long_from + GRID.long + 1], seed=23)
    batch = _batch([(short, short.length, 1), (long, long.length, 1)])
    want = _call(batch, mode="fused")
    bound = GRID.long_from + 1  # the short chunks and the first long one
    got = _call(batch, mode="split", max_seq_len=bound)
    short_rows, long_rows = batch.rows
    assert bool(got[long_rows].isnan().all()), "rows past the bound must be NaN"
    _equal(got[short_rows], want[short_rows], "rows within the bound")


def test_chunk_programs_cap_the_grid() -> None:
    cpu = torch.device("cpu")
    units = _platform.num_programs(cpu)
    assert _launch._chunk_programs(5, 1, cpu) == 5  # few chunks: one program each
    assert _launch._chunk_programs(0, 3, cpu) == 1
    cap = max(_launch.SPLIT_MIN_CHUNK_PROGRAMS, _launch.SPLIT_PROGRAMS_PER_UNIT * units)
    assert _launch._chunk_programs(10**6, 1, cpu) == cap
    many_tiles = 10**6
    assert _launch._chunk_programs(10**6, many_tiles, cpu) == _launch.SPLIT_MIN_CHUNK_PROGRAMS


@pytest.mark.parametrize("mode", ["split", "fused", "auto"])
@pytest.mark.parametrize("bound", [None, GRID.chunk_start(40)], ids=["exact", "bound40"])
def test_padded_requests_leave_real_rows_alone_and_write_zeros(
    mode: str, bound: int | None
) -> None:
    """FULL-graph decode padding: no keys (with or without a query), garbage block-table rows,
    NaN padding queries and trailing rows of no request. Real rows keep their bits, padded
    requests' rows are zeros, nothing reads the garbage."""
    real = _batch(_mixed(), seed=2)
    want = _call(real, mode="fused")
    padded = pad_requests(real, with_query=3, without_query=2, trailing=4)
    got = _call(padded, mode=mode, max_seq_len=bound)
    n_real = len(real.rows)
    for i, rows in enumerate(padded.rows[:n_real]):
        _equal(got[rows], want[real.rows[i]], f"real request {i} next to padding")
    for rows in padded.rows[n_real:]:
        _equal(got[rows], torch.zeros_like(got[rows]), "padded request with a query")


def test_decode_padding_only() -> None:
    """A captured batch of only padding (vLLM's dummy rows) runs and writes zeros."""
    (seq,) = _seqs([3], seed=3)
    empty = pad_requests(_batch([(seq, 3, 1)]), with_query=4, without_query=3, trailing=2)
    keep = slice(1, 5)  # the 4 padded requests with a query
    for mode in ("split", "fused"):
        out = _call(empty, mode=mode, max_seq_len=10 * CHUNK)
        _equal(out[keep], torch.zeros_like(out[keep]), f"padding-only batch ({mode})")


def test_a_broken_bound_gives_nan_rows_not_short_sums() -> None:
    """A sequence longer than ``max_seq_len`` (a wrong bound) gets NaN, never a silently
    truncated softmax, and the other rows keep their bits (no write past the buffer)."""
    long, short = _seqs([3 * CHUNK + 5, 9], seed=4)
    batch = _batch([(long, long.length, 2), (short, short.length, short.length)])
    want = _call(batch, mode="fused")
    got = _call(batch, mode="split", max_seq_len=CHUNK + 1)
    long_rows, short_rows = batch.rows
    assert bool(got[long_rows].isnan().all()), "rows past the bound must be NaN"
    _equal(got[short_rows], want[short_rows], "rows within the bound")


def test_capture_without_a_bound_runs_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under capture ``auto`` never reads ``seq_lens`` on the host; ``split`` needs a bound."""
    batch = _batch(_mixed(), seed=5)
    want = _call(batch, mode="fused")
    monkeypatch.setattr(_platform, "capturing", lambda device: True)
    monkeypatch.setattr(_platform, "num_programs", lambda device: 10**6)  # auto wants split
    _equal(_call(batch, mode="auto"), want, "auto under capture without a bound")
    _equal(_call(batch, mode="auto", max_seq_len=30 * CHUNK), want, "auto under capture")
    with pytest.raises(ValueError, match="max_seq_len"):
        _call(batch, mode="split")
