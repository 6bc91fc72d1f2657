"""Bitwise invariance of the fixed-chunk attention (CPU interpreter sizes; GPU runs them too).

A query row must get the same bits alone or in any batch, decoded or prefilled, with any prompt
chunking or cached prefix, split or fused, and from the trainer's packed varlen call.
"""

from __future__ import annotations

import pytest
import torch
from _attn_cases import (
    DEVICE,
    INTERP,
    TINY_GQA,
    Heads,
    Seq,
    around_switch,
    chunk_of,
    grid_of,
    make_seq,
    needs_kernels,
    packed,
    paged,
    tile_of,
)

from bi_triton_ascend.attention import (
    attention_config,
    paged_attention,
    paged_decode,
    varlen_attention,
)

pytestmark = [
    needs_kernels,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
]
DT = torch.bfloat16
# Rows are compared in fp32, before the final rounding to bf16 would hide a changed last bit.
OUT = torch.float32
SCALE = TINY_GQA.head_size**-0.5
BLOCK = 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seqs(
    lengths: list[int], seed: int, heads: Heads = TINY_GQA, dtype: torch.dtype = DT
) -> list[Seq]:
    gen = _gen(seed)
    return [make_seq(n, heads, dtype, gen, DEVICE or "cpu") for n in lengths]


def _run(
    requests: list[tuple[Seq, int, int]],
    mode: str = "auto",
    seed: int = 0,
    block: int = BLOCK,
    window: int | None = None,
    out_dtype: torch.dtype | None = OUT,
    max_seq_len: int | None = None,
) -> list[torch.Tensor]:
    """Run one paged call; the output rows of each request."""
    batch = paged(requests, block, _gen(seed), DEVICE or "cpu")
    out = paged_attention(
        *batch.args(), SCALE, window, max_seq_len=max_seq_len, mode=mode, out_dtype=out_dtype
    )
    return [out[r] for r in batch.rows]


def _equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.equal(a, b):
        diff = (a.float() - b.float()).abs().max().item()
        raise AssertionError(f"{what}: not bitwise equal (max |diff| {diff:.3g})")


CHUNK = chunk_of(TINY_GQA, DT)
TILE = tile_of(TINY_GQA, DT)
PROBE_LEN = 2 * CHUNK + 13
GRID = grid_of(TINY_GQA, DT)  # short chunks up to GRID.long_from, long ones after
SWITCH = around_switch(GRID)  # 127, 128, 129, 191, 192, 193 in the interpreter
LONG_FROM, LONG = GRID.long_from, GRID.long
LONG_LEN = LONG_FROM + 2 * LONG + 5  # two long chunks and a bit of a third (261)


@pytest.mark.parametrize(
    ("batch", "where", "mode"),
    [
        pytest.param(2, "front", "split", id="bs2-front-split"),
        pytest.param(3, "middle", "fused", id="bs3-middle-fused"),
        pytest.param(3, "back", "split", id="bs3-back-split"),
        pytest.param(16, "middle", "split", id="bs16-middle-split"),
        pytest.param(16, "back", "auto", id="bs16-back-auto"),
    ],
)
def test_decode_row_alone_equals_row_in_batch(batch: int, where: str, mode: str) -> None:
    """Decode: the probe's row alone (fused) equals its row among short and long neighbours."""
    probe, *others = _seqs([PROBE_LEN, 1, 4 * CHUNK + 5, 3, CHUNK, CHUNK + 1, 7], seed=1)
    alone = _run([(probe, PROBE_LEN, 1)], mode="fused")[0]
    neighbours = [(s, s.length, 1) for s in (others[i % len(others)] for i in range(batch - 1))]
    at = {"front": 0, "middle": len(neighbours) // 2, "back": len(neighbours)}[where]
    requests = [*neighbours[:at], (probe, PROBE_LEN, 1), *neighbours[at:]]
    rows = _run(requests, mode=mode, seed=batch)
    _equal(rows[at], alone, f"decode probe at {where} of {batch} ({mode})")


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_prefill_rows_alone_equal_rows_in_mixed_batch(mode: str) -> None:
    """A chunked-prefill request gives the same rows next to decode and prefill neighbours."""
    probe, a, b, c = _seqs([PROBE_LEN, 3 * CHUNK + 2, 9, CHUNK + 3], seed=2)
    request = (probe, PROBE_LEN, TILE + 5)
    alone = _run([request], mode="fused")[0]
    rows = _run([(a, a.length, 1), (b, b.length, b.length), request, (c, c.length, 2)], mode)
    _equal(rows[2], alone, f"prefill probe in mixed batch ({mode})")


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_split_equals_fused(mode: str) -> None:
    """Same bits from one program per chunk (split + combine) and one per query tile (fused)."""
    seqs = _seqs([4 * CHUNK + 3, CHUNK - 1, 2 * CHUNK], seed=3)
    requests = [(seqs[0], seqs[0].length, CHUNK + 2), (seqs[1], seqs[1].length, 1),
                (seqs[2], seqs[2].length, seqs[2].length)]  # fmt: skip
    other = "fused" if mode == "split" else "split"
    for got, want in zip(_run(requests, mode), _run(requests, other), strict=True):
        _equal(got, want, f"{mode} vs {other}")


@pytest.mark.parametrize("window", [None, 5, CHUNK + 3], ids=["full", "window5", "window-chunk+3"])
def test_decode_equals_prefill(window: int | None) -> None:
    """Decoding position p gives the row of p from a one-call prefill of the whole sequence."""
    (seq,) = _seqs([3 * CHUNK + 5], seed=4)
    full = _run([(seq, seq.length, seq.length)], mode="fused", window=window)[0]
    positions = [0, 1, TILE - 1, TILE, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, seq.length - 1]
    decoded = _run([(seq, p + 1, 1) for p in positions], mode="split", window=window)
    for p, row in zip(positions, decoded, strict=True):
        _equal(row[0], full[p], f"decode vs prefill at position {p}")


@pytest.mark.parametrize(
    "chunking",
    [
        pytest.param([CHUNK, CHUNK, CHUNK + 5], id="chunk-aligned"),
        pytest.param([5, CHUNK + 1, 2 * CHUNK - 1], id="unaligned"),
        pytest.param([TILE + 3, 1, 1, 3 * CHUNK - TILE], id="with-decode-steps"),
    ],
)
def test_chunked_prefill_equals_one_call(chunking: list[int]) -> None:
    """Prefilling in chunks (each call sees the cached prefix) gives the one-call rows."""
    (seq,) = _seqs([3 * CHUNK + 5], seed=5)
    full = _run([(seq, seq.length, seq.length)], mode="split")[0]
    done = 0
    for i, n in enumerate(chunking):
        done += n
        rows = _run([(seq, done, n)], mode="fused" if i % 2 else "auto", seed=i)[0]
        _equal(rows, full[done - n : done], f"chunk {i} ({n} tokens ending at {done})")


def test_prefix_cached_equals_cold() -> None:
    """A prefix-cache hit of any length computes the same tail rows as a cold prefill."""
    (seq,) = _seqs([2 * CHUNK + 9], seed=6)
    cold = _run([(seq, seq.length, seq.length)], mode="fused")[0]
    # Cached prefixes around the tiles and the chunk, and query counts around the query tile.
    q_tile = attention_config(TINY_GQA.head_size, DT, 2, INTERP).block_q
    cached = [1, TILE + 1, CHUNK - 1, CHUNK, CHUNK + 1]
    cached += [seq.length - q for q in (q_tile - 1, q_tile, q_tile + 1)]
    tails = _run([(seq, seq.length, seq.length - c) for c in cached], mode="split")
    for c, rows in zip(cached, tails, strict=True):
        _equal(rows, cold[c:], f"{c} cached tokens")


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_varlen_equals_paged(mode: str) -> None:
    """The trainer's packed varlen call equals the paged cache call, row for row."""
    seqs = _seqs([2 * CHUNK + 1, 5, CHUNK], seed=7)
    requests = [(s, s.length, s.length) for s in seqs]
    want = _run(requests, mode="fused")
    batch = packed(requests, DEVICE or "cpu")
    out = varlen_attention(
        batch.q, batch.k, batch.v, batch.cu_seqlens_q, scale=SCALE, mode=mode, out_dtype=OUT
    )
    for i, (r, w) in enumerate(zip(batch.rows, want, strict=True)):
        _equal(out[r], w, f"varlen vs paged, sequence {i}")


def test_varlen_query_tail_equals_paged_chunk() -> None:
    """Varlen with fewer queries than keys (bottom-right causal) equals a paged chunk call."""
    seqs = _seqs([2 * CHUNK + 3, CHUNK + 7], seed=8)
    requests = [(seqs[0], seqs[0].length, TILE + 2), (seqs[1], CHUNK + 2, 3)]
    want = _run(requests, mode="split")
    batch = packed(requests, DEVICE or "cpu")
    out = varlen_attention(
        batch.q,
        batch.k,
        batch.v,
        batch.cu_seqlens_q,
        batch.cu_seqlens_k,
        scale=SCALE,
        out_dtype=OUT,
    )
    for i, (r, w) in enumerate(zip(batch.rows, want, strict=True)):
        _equal(out[r], w, f"varlen tail vs paged, sequence {i}")


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
def test_trainer_prefill_equals_rollout_decode(dtype: torch.dtype) -> None:
    """RL: the trainer's varlen row for position p equals the rollout's decode row for p."""
    heads = Heads(4, 1, 24)  # MQA, head size that is not a power of two
    chunk = chunk_of(heads, dtype)
    (seq,) = _seqs([2 * chunk + 6], seed=9, heads=heads, dtype=dtype)
    batch = packed([(seq, seq.length, seq.length)], DEVICE or "cpu")
    train = varlen_attention(batch.q, batch.k, batch.v, batch.cu_seqlens_q, scale=0.3)
    train32 = varlen_attention(
        batch.q, batch.k, batch.v, batch.cu_seqlens_q, scale=0.3, out_dtype=OUT
    )
    positions = [0, chunk - 1, chunk, chunk + 1, seq.length - 1]
    rollout = paged([(seq, p + 1, 1) for p in positions], 8, _gen(1), DEVICE or "cpu")
    query = rollout.query
    args = (query, rollout.key_cache, rollout.value_cache, rollout.block_table, rollout.seq_lens)
    out = paged_decode(*args, 0.3, mode="split")
    out32 = paged_decode(*args, 0.3, mode="split", out_dtype=OUT)
    if out.dtype != dtype or train.dtype != dtype:
        raise AssertionError(f"outputs must default to the query dtype {dtype}")
    for i, p in enumerate(positions):
        _equal(out32[i], train32[p], f"decode vs trainer at position {p} (fp32 out)")
        _equal(out[i], train[p], f"decode vs trainer at position {p}")


def test_noncontiguous_query_and_cache_give_same_bits() -> None:
    """Strided views (vLLM's fused qkv slice, a [2, blocks, ...] kv tensor) change no bit."""
    seqs = _seqs([CHUNK + 9, 6], seed=10)
    requests = [(s, s.length, s.length) for s in seqs]
    batch = paged(requests, BLOCK, _gen(0), DEVICE or "cpu")
    want = paged_attention(*batch.args(), SCALE, mode="split", out_dtype=OUT)
    qkv = torch.zeros(batch.query.shape[0], 3, *batch.query.shape[1:], dtype=DT)
    qkv = qkv.to(batch.query.device)
    qkv[:, 1] = batch.query
    kv = torch.stack([batch.key_cache, batch.value_cache]).transpose(2, 3).contiguous()
    kv = kv.transpose(2, 3)  # [2, blocks, block, heads, d] with block/head strides swapped
    got = paged_attention(
        qkv[:, 1], kv[0], kv[1], batch.block_table, batch.seq_lens, batch.query_start_loc, SCALE,
        mode="fused", out_dtype=OUT,
    )  # fmt: skip
    if qkv[:, 1].is_contiguous() or kv[0].is_contiguous():
        raise AssertionError("the test views should be non-contiguous")
    _equal(got, want, "strided vs contiguous inputs")


# The chunk grid's switch from short to long chunks: every test below places sequence ends,
# query tiles, prompt cuts and window starts around ``long_from`` and the first long chunk's end.


@pytest.mark.parametrize("window", [None, 40, LONG + 3], ids=["full", "window40", "window-long+3"])
def test_decode_equals_prefill_across_the_switch(window: int | None) -> None:
    """Decoding at each position around the switch (split and fused) equals the prefill row."""
    (seq,) = _seqs([LONG_LEN], seed=31)
    full = _run([(seq, seq.length, seq.length)], mode="fused", window=window)[0]
    positions = [*SWITCH, LONG_FROM + LONG // 2, LONG_FROM + 2 * LONG, seq.length - 1]
    for mode in ("split", "fused"):
        decoded = _run([(seq, p + 1, 1) for p in positions], mode=mode, window=window)
        for p, row in zip(positions, decoded, strict=True):
            _equal(row[0], full[p], f"decode vs prefill at position {p} ({mode})")


@pytest.mark.parametrize("mode", ["split", "fused", "auto"])
def test_rows_around_the_switch_alone_equal_rows_in_batch(mode: str) -> None:
    """Sequences ending around the switch, decoded or with a few queries that straddle it,
    give the same rows alone and next to short and long neighbours."""
    seqs = _seqs(SWITCH, seed=32)
    neighbours = _seqs([3, CHUNK + 1, LONG_LEN, 9], seed=33)
    q_lens = [1, 3, TILE + 3, 1, LONG + 1, 2]
    requests = [(s, s.length, q) for s, q in zip(seqs, q_lens, strict=True)]
    alone = [_run([r], mode="fused")[0] for r in requests]
    mixed = [(n, n.length, 1 if i % 2 else min(4, n.length)) for i, n in enumerate(neighbours)]
    batch = [mixed[0], requests[0], mixed[1], *requests[1:4], mixed[2], *requests[4:], mixed[3]]
    rows = _run(batch, mode=mode, seed=3)
    got = [rows[1], *rows[3:6], *rows[7:9]]
    for r, row, want in zip(requests, got, alone, strict=True):
        _equal(row, want, f"length {r[1]}, {r[2]} queries, in a batch ({mode})")


@pytest.mark.parametrize(
    ("bound", "window"), [(None, None), (40, 40)], ids=["exact", "bound40chunks-window40"]
)
def test_split_equals_fused_across_the_switch(bound: int | None, window: int | None) -> None:
    """Split (per-chunk partials, then the combine) equals fused on sequences ending around the
    switch; with a static bound far past them (a CUDA graph's: 40 chunks) too."""
    seqs = _seqs([*SWITCH, LONG_LEN], seed=34)
    q_lens = [1, 2, 9, LONG + 1, 3, 1, 5]
    requests = [(s, s.length, q) for s, q in zip(seqs, q_lens, strict=True)]
    max_seq_len = GRID.chunk_start(bound) if bound else None
    split = _run(requests, "split", window=window, max_seq_len=max_seq_len)
    fused = _run(requests, "fused", window=window)
    for r, got, want in zip(requests, split, fused, strict=True):
        _equal(got, want, f"split vs fused, length {r[1]}, {r[2]} queries")


CUT_LEN = LONG_FROM + LONG + 9  # 201


@pytest.mark.parametrize(
    ("chunking", "window"),
    [
        pytest.param([LONG_FROM, CUT_LEN - LONG_FROM], None, id="cut-at-switch"),
        pytest.param([LONG_FROM + 10, LONG - 20, 19], 40, id="cut-in-long-window40"),
        pytest.param([LONG_FROM - 1, 1, LONG, 9], None, id="cut-at-switch-1-and-long-end"),
        pytest.param([LONG_FROM - 2, 1, 1, 1, CUT_LEN - LONG_FROM - 1], LONG + 3,
                     id="decodes-over-the-switch-window"),
    ],
)  # fmt: skip
def test_chunked_prefill_across_the_switch(chunking: list[int], window: int | None) -> None:
    """A prompt cut at the switch or inside a long chunk gives the one-call rows."""
    (seq,) = _seqs([CUT_LEN], seed=35)
    assert sum(chunking) == seq.length
    full = _run([(seq, seq.length, seq.length)], mode="fused", window=window)[0]
    done = 0
    for i, n in enumerate(chunking):
        done += n
        rows = _run([(seq, done, n)], mode=("split", "fused")[i % 2], seed=i, window=window)[0]
        _equal(rows, full[done - n : done], f"cut {i} ({n} tokens ending at {done})")


def test_trainer_prefill_equals_rollout_decode_across_the_switch() -> None:
    """RL: the trainer's packed rows around the switch equal the rollout's decoded rows."""
    (seq,) = _seqs([LONG_FROM + LONG + 2], seed=36)
    batch = packed([(seq, seq.length, seq.length)], DEVICE or "cpu")
    train = varlen_attention(batch.q, batch.k, batch.v, batch.cu_seqlens_q, scale=SCALE,
                             mode="fused", out_dtype=OUT)  # fmt: skip
    rollout = _run([(seq, p + 1, 1) for p in SWITCH], mode="split")
    for p, row in zip(SWITCH, rollout, strict=True):
        _equal(row[0], train[p], f"decode vs trainer at position {p}")
