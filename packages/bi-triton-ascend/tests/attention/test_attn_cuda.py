"""GPU proof at model sizes: Qwen3-8B heads, batches up to 64, neighbours up to 32k tokens.

Every test here is ``cuda``-marked and skips elsewhere with the reason. The CPU-sized tests of
this directory also run on the GPU (with the GPU's chunk grid: 256-key chunks up to key 4096,
512-key chunks after).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from _attn_cases import (
    QWEN3_8B,
    TOLERANCES,
    Heads,
    Seq,
    around_switch,
    chunk_of,
    cuda_only,
    grid_of,
    make_seq,
    packed,
    pad_requests,
    paged,
    tile_of,
)

from bi_triton_ascend.attention import (
    attention_config,
    paged_attention,
    paged_decode,
    reference_attention,
    varlen_attention,
)
from bi_triton_ascend.attention._launch import launch

pytestmark = cuda_only
DT = torch.bfloat16
OUT = torch.float32
SCALE = QWEN3_8B.head_size**-0.5
BLOCK = 16
CHUNK = chunk_of(QWEN3_8B, DT)
GRID = grid_of(QWEN3_8B, DT)
TILE = tile_of(QWEN3_8B, DT)
NEIGHBOUR_LENGTHS = [1, 17, CHUNK - 1, CHUNK, CHUNK + 1, 1000, 4097, 32768]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _seqs(
    lengths: list[int], seed: int, heads: Heads = QWEN3_8B, dtype: torch.dtype = DT
) -> list[Seq]:
    gen = _gen(seed)
    return [make_seq(n, heads, dtype, gen, "cuda") for n in lengths]


def _run(
    requests: list[tuple[Seq, int, int]], mode: str = "auto", seed: int = 0, **kw: Any
) -> list[torch.Tensor]:
    batch = paged(requests, BLOCK, _gen(seed), "cuda")
    out = paged_attention(*batch.args(), kw.pop("scale", SCALE), mode=mode, out_dtype=OUT, **kw)
    return [out[r] for r in batch.rows]


def _equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.equal(a, b):
        diff = (a.float() - b.float()).abs().max().item()
        raise AssertionError(f"{what}: not bitwise equal (max |diff| {diff:.3g})")


@pytest.fixture(scope="module")
def neighbours() -> list[Seq]:
    return _seqs(NEIGHBOUR_LENGTHS, seed=11)


@pytest.mark.parametrize("batch", [2, 3, 15, 16, 17, 63, 64])
@pytest.mark.parametrize("where", ["front", "middle", "back"])
def test_decode_probe_alone_equals_probe_in_batch(
    batch: int, where: str, neighbours: list[Seq]
) -> None:
    (probe,) = _seqs([3 * CHUNK + 77], seed=batch)
    alone = _run([(probe, probe.length, 1)], mode="fused")[0]
    others = [(s, s.length, 1) for s in (neighbours[i % 8] for i in range(batch - 1))]
    at = {"front": 0, "middle": len(others) // 2, "back": len(others)}[where]
    requests = [*others[:at], (probe, probe.length, 1), *others[at:]]
    for mode in ("auto", "split"):
        _equal(_run(requests, mode, seed=batch)[at], alone, f"{where} of {batch}, {mode}")


@pytest.mark.parametrize("length", [CHUNK * 4 + 3, 8191, 32768])
def test_decode_equals_prefill_long(length: int) -> None:
    (seq,) = _seqs([length], seed=length)
    full = _run([(seq, length, length)])[0]
    positions = [0, TILE - 1, TILE, CHUNK - 1, CHUNK, CHUNK + 1, length // 2, length - 1]
    for mode in ("split", "fused"):
        rows = _run([(seq, p + 1, 1) for p in positions], mode)
        for p, row in zip(positions, rows, strict=True):
            _equal(row[0], full[p], f"decode vs prefill at {p} of {length} ({mode})")


@pytest.mark.parametrize(
    "chunking",
    [[1000, 1000, 1000], [CHUNK, 3000 - CHUNK], [1, 2999], [777, 1, 1, 2221], [TILE + 1] * 30],
    ids=["thirds", "one-chunk", "one-token", "with-decodes", "tile+1"],
)
def test_chunked_prefill_equals_one_call(chunking: list[int]) -> None:
    total = sum(chunking)
    (seq,) = _seqs([total], seed=total)
    full = _run([(seq, total, total)])[0]
    done = 0
    for i, n in enumerate(chunking):
        done += n
        _equal(_run([(seq, done, n)], seed=i)[0], full[done - n : done], f"chunk {i} at {done}")


@pytest.mark.parametrize("window", [None, 700], ids=["full", "window700"])
def test_switch_to_long_chunks(window: int | None, neighbours: list[Seq]) -> None:
    """Around the grid's switch (4095-4097, 4607-4609): decode (split and fused, alone and in a
    batch) equals the one-call prefill, a prompt cut at the switch and inside a long chunk equals
    it too, and the rows are accurate against float64."""
    length = GRID.long_from + 2 * GRID.long + 77
    (seq,) = _seqs([length], seed=41)
    full = _run([(seq, length, length)], sliding_window=window)[0]
    positions = [*around_switch(GRID), GRID.long_from + GRID.long // 2, length - 1]
    others = [(s, s.length, 1) for s in neighbours]
    for mode in ("split", "fused"):
        rows = _run([(seq, p + 1, 1) for p in positions], mode, sliding_window=window)
        in_batch = _run([*others, *((seq, p + 1, 1) for p in positions)], mode, seed=1,
                        sliding_window=window)[len(others):]  # fmt: skip
        for p, row, row_b in zip(positions, rows, in_batch, strict=True):
            _equal(row[0], full[p], f"decode vs prefill at {p} ({mode})")
            _equal(row_b[0], full[p], f"decode in a batch vs prefill at {p} ({mode})")
    for cuts in ([GRID.long_from, length], [GRID.long_from + 100, GRID.long_from + 612, length]):
        done = 0
        for i, end in enumerate(cuts):
            got = _run([(seq, end, end - done)], ("split", "fused")[i % 2], seed=i,
                       sliding_window=window)[0]  # fmt: skip
            _equal(got, full[done:end], f"prompt cut {cuts}: tokens {done}..{end}")
            done = end
    end, queries = GRID.long_from + GRID.long + 100, GRID.long + 200  # rows 3996..4707
    batch = paged([(seq, end, queries)], BLOCK, _gen(2), "cuda")
    want = reference_attention(
        *batch.args(), SCALE, window, compute_dtype=torch.float64, out_dtype=torch.float64
    )
    atol, rtol = TOLERANCES[DT]
    torch.testing.assert_close(full[end - queries : end].double(), want, atol=atol, rtol=rtol)


def test_prefix_cached_equals_cold_in_a_batch(neighbours: list[Seq]) -> None:
    (seq,) = _seqs([2 * CHUNK + 500], seed=5)
    cold = _run([(seq, seq.length, seq.length)])[0]
    cached = [1, TILE - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]
    requests = [(seq, seq.length, seq.length - c) for c in cached]
    requests.append((neighbours[-1], neighbours[-1].length, 1))
    for c, rows in zip(cached, _run(requests), strict=False):
        _equal(rows, cold[c:], f"{c} cached tokens")


def test_varlen_equals_paged_and_decode() -> None:
    seqs = _seqs([1, 300, 2049, 8192], seed=6)
    requests = [(s, s.length, s.length) for s in seqs]
    want = _run(requests)
    batch = packed(requests, "cuda")
    out = varlen_attention(batch.q, batch.k, batch.v, batch.cu_seqlens_q, out_dtype=OUT)
    for i, (r, w) in enumerate(zip(batch.rows, want, strict=True)):
        _equal(out[r], w, f"varlen vs paged, sequence {i}")
    long = seqs[-1]
    decode = _run([(long, p + 1, 1) for p in (0, 4095, 8191)], "split")
    for p, row in zip((0, 4095, 8191), decode, strict=True):
        _equal(row[0], out[batch.rows[-1]][p], f"varlen vs decode at {p}")


@pytest.mark.parametrize(
    "heads",
    [Heads(64, 8, 128), Heads(16, 2, 64), Heads(8, 4, 256), Heads(40, 8, 128)],
    ids=["llama70b", "head64", "head256", "group5"],
)
@pytest.mark.parametrize("window", [None, 1000], ids=["full", "window1000"])
def test_other_layouts_decode_equals_prefill(heads: Heads, window: int | None) -> None:
    chunk = chunk_of(heads, DT)
    (seq,) = _seqs([5 * chunk + 33], seed=heads.num_heads, heads=heads)
    kw: dict[str, Any] = {"scale": heads.head_size**-0.5, "sliding_window": window}
    full = _run([(seq, seq.length, seq.length)], **kw)[0]
    positions = [0, chunk, chunk + 1, 3 * chunk - 1, seq.length - 1]
    rows = _run([(seq, p + 1, 1) for p in positions], "split", **kw)
    for p, row in zip(positions, rows, strict=True):
        _equal(row[0], full[p], f"{heads} window={window}: decode vs prefill at {p}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("window", [None, 300], ids=["full", "window300"])
def test_accuracy_vs_float64(dtype: torch.dtype, window: int | None) -> None:
    lengths = [1, CHUNK - 1, CHUNK, CHUNK + 1, 2049]
    seqs = _seqs(lengths, seed=7, dtype=dtype)
    requests = [(s, s.length, q) for s, q in zip(seqs, [1, 1, CHUNK, 5, 2049], strict=True)]
    batch = paged(requests, BLOCK, _gen(0), "cuda")
    got = paged_attention(*batch.args(), SCALE, window)
    want = reference_attention(
        *batch.args(), SCALE, window, compute_dtype=torch.float64, out_dtype=torch.float64
    )
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)


def test_split_equals_fused_at_32k(neighbours: list[Seq]) -> None:
    requests = [(s, s.length, 1) for s in neighbours]
    for got, want in zip(_run(requests, "split"), _run(requests, "fused"), strict=True):
        _equal(got, want, "split vs fused")


def test_cuda_graph_capture_of_split_decode(neighbours: list[Seq]) -> None:
    requests = [(s, s.length, 1) for s in neighbours]
    batch = paged(requests, BLOCK, _gen(0), "cuda")
    args = (batch.query, batch.key_cache, batch.value_cache, batch.block_table, batch.seq_lens)
    eager = paged_decode(*args, SCALE, max_seq_len=32768, mode="split")
    paged_decode(*args, SCALE, max_seq_len=32768, mode="split")  # warm up (compile) first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = paged_decode(*args, SCALE, max_seq_len=32768, mode="auto")
    graph.replay()
    torch.cuda.synchronize()
    _equal(captured, eager, "graph replay vs eager")


@pytest.mark.parametrize("padding", ["none", "vllm", "with-query"])
def test_cuda_graph_captured_short_replays_long(padding: str, neighbours: list[Seq]) -> None:
    """A FULL-graph decode as vLLM captures it: dummy sequences of one key, the split grid sized
    from a static bound (the model's max length); replayed on the real batch (up to 32k keys,
    padded as vLLM pads) it equals the eager launch bitwise."""
    bound = 40960  # Qwen3's max_model_len: 88 chunks, more than the capped chunk programs
    real = paged([(s, s.length, 1) for s in neighbours], BLOCK, _gen(0), "cuda")
    if padding != "none":
        real = pad_requests(real, 3 if padding == "with-query" else 0, 5, 0)
    eager = paged_attention(*real.args(), SCALE, max_seq_len=bound, mode="auto", out_dtype=OUT)
    static = [t.clone() for t in real.args()]
    _, _, _, table, lens, _ = static
    n = len(neighbours)
    lens[:n] = 1  # vLLM's capture: every dummy request has one key
    table.zero_()
    paged_attention(*static, SCALE, max_seq_len=bound, mode="auto", out_dtype=OUT)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = paged_attention(*static, SCALE, max_seq_len=bound, mode="auto", out_dtype=OUT)
    for dst, src in zip(static, real.args(), strict=True):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    rows = slice(0, int(real.query_start_loc[-1]))
    _equal(captured[rows], eager[rows], f"graph (captured short) vs eager, padding {padding}")
    fused = paged_attention(*real.args(), SCALE, mode="fused", out_dtype=OUT)
    _equal(captured[rows], fused[rows], f"graph vs fused, padding {padding}")
    assert not captured[rows].isnan().any()


def _launch_with(
    batch: Any, cfg: Any, *, scale: float, window: int | None, mode: str
) -> torch.Tensor:
    return launch(
        *batch.args(), None, scale=scale, sliding_window=window, causal=True, max_seq_len=4097,
        mode=mode, out_dtype=OUT, config=cfg,
    )  # fmt: skip


# (rows, warps, stages) of the tile family: the launcher's decode and prefill tiles and others.
TILE_FAMILY = [(64, 4, 2), (64, 8, 2), (128, 8, 2), (128, 8, 3), (128, 4, 2)]


@pytest.mark.parametrize(
    ("heads", "dtype", "window"),
    [
        (QWEN3_8B, torch.bfloat16, None),
        (QWEN3_8B, torch.float16, None),
        (QWEN3_8B, torch.bfloat16, 700),
        (Heads(16, 16, 128), torch.bfloat16, None),
        (Heads(16, 2, 64), torch.bfloat16, None),
        (Heads(40, 8, 128), torch.float16, None),
        (Heads(32, 4, 80), torch.bfloat16, 700),
    ],
    ids=["qwen3-8b", "fp16", "window700", "mha", "head64", "group5", "head80-window"],
)
def test_tile_family_gives_the_same_bits(
    heads: Heads, dtype: torch.dtype, window: int | None
) -> None:
    """Every tile shape of the family gives the launcher's bits on decode, chunk and prefill.

    The launcher picks 64-row tiles for decode-like launches and 128-row tiles for prefill-like
    ones (``config.launch_config``); that is batch-invariant only because the whole family
    builds every row identically. Fails if any member differs on any row.
    """
    chunk = chunk_of(heads, dtype)
    seqs = _seqs([1, chunk + 1, 3 * chunk + 77, 4097], seed=21, heads=heads, dtype=dtype)
    group = heads.num_heads // heads.num_kv_heads
    base = attention_config(heads.head_size, dtype, group, False)
    scale = heads.head_size**-0.5
    cases = {
        "prefill": [(s, s.length, s.length) for s in seqs],
        "decode": [(s, s.length, 1) for s in seqs],
        "chunk": [(s, s.length, min(s.length, 300)) for s in seqs],
    }
    for name, requests in cases.items():
        batch = paged(requests, BLOCK, _gen(3), "cuda")
        for mode in ("split", "fused"):
            kw: dict[str, Any] = {"scale": scale, "window": window, "mode": mode}
            want = _launch_with(batch, None, **kw)
            for rows, warps, stages in TILE_FAMILY:
                cfg = dataclasses.replace(
                    base, block_m=max(rows, base.group_pad), num_warps=warps, num_stages=stages
                )
                got = _launch_with(batch, cfg, **kw)
                for i, r in enumerate(batch.rows):
                    _equal(got[r], want[r], f"{name} {mode} m{rows}w{warps}s{stages} seq {i}")
