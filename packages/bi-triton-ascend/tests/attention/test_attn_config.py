"""The attention's chain and tiles: the chunk grid, one chain per layout, one tile family."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import triton
import triton.language as tl
from _attn_cases import DEVICE, INTERP, TINY_GQA, make_seq, needs_kernels, packed

from bi_triton_ascend import _platform
from bi_triton_ascend.attention import _kernels, _launch
from bi_triton_ascend.attention._launch import _tile_flags, launch
from bi_triton_ascend.attention.config import (
    DECODE_STAGES,
    GPU_KV_CHUNK,
    GPU_LONG_CHUNK,
    GPU_LONG_FROM,
    INTERP_KV_CHUNK,
    INTERP_LONG_CHUNK,
    INTERP_LONG_FROM,
    PREFILL_BLOCK_M,
    ChunkGrid,
    attention_config,
    chunk_grid,
    has_tile_family,
    kv_chunk_size,
    launch_config,
    split_config,
)

GPU_GRID = ChunkGrid(GPU_KV_CHUNK, GPU_LONG_FROM, GPU_LONG_CHUNK)
INTERP_GRID = ChunkGrid(INTERP_KV_CHUNK, INTERP_LONG_FROM, INTERP_LONG_CHUNK)
GRIDS = [
    pytest.param(GPU_GRID, id="gpu"),
    pytest.param(INTERP_GRID, id="interpreter"),
    pytest.param(ChunkGrid.uniform(48), id="uniform48"),
    pytest.param(ChunkGrid(16, 0, 64), id="long-from-0"),
]


def test_the_grids_of_the_device_families() -> None:
    assert (GPU_GRID.short, GPU_GRID.long_from, GPU_GRID.long) == (256, 4096, 512)
    assert (INTERP_GRID.short, INTERP_GRID.long_from, INTERP_GRID.long) == (32, 128, 64)
    for head, dtype in [(128, torch.bfloat16), (256, torch.float16), (24, torch.float32)]:
        assert chunk_grid(head, dtype, interpreter=False) == GPU_GRID
        assert chunk_grid(head, dtype, interpreter=True) == INTERP_GRID
        assert kv_chunk_size(head, dtype, interpreter=False) == GPU_KV_CHUNK
        for group in (1, 4, 5):
            assert attention_config(head, dtype, group, False).grid == GPU_GRID
            assert attention_config(head, dtype, group, True).grid == INTERP_GRID
    assert GPU_GRID.describe() == "256-key chunks, 512 from key 4096"
    assert ChunkGrid.uniform(256).describe() == "256-key chunks"


def test_interpreter_grid_values() -> None:
    """Chunks [0, 32), [32, 64), [64, 96), [96, 128), then [128, 192), [192, 256), ..."""
    g = INTERP_GRID
    assert [g.chunk_start(c) for c in range(8)] == [0, 32, 64, 96, 128, 192, 256, 320]
    want = {0: 0, 31: 0, 32: 1, 127: 3, 128: 4, 129: 4, 191: 4, 192: 5, 193: 5, 255: 5, 256: 6}
    assert {p: g.chunk_of(p) for p in want} == want
    counts = {0: 0, 1: 1, 32: 1, 33: 2, 127: 4, 128: 4, 129: 5, 191: 5, 192: 5, 193: 6}
    assert {n: g.num_chunks(n) for n in counts} == counts
    # GPU: a 1k-key sequence keeps four chunks, 32k keys have 16 short and 56 long ones.
    assert [GPU_GRID.num_chunks(n) for n in (1024, 4096, 4097, 32768, 40960)] == [4, 16, 17, 72, 88]


@pytest.mark.parametrize("grid", GRIDS)
def test_chunk_of_and_chunk_start_round_trip(grid: ChunkGrid) -> None:
    last = grid.chunk_of(grid.long_from + 5 * grid.long)
    starts = [grid.chunk_start(c) for c in range(last + 2)]
    assert starts[0] == 0
    assert all(b > a for a, b in itertools.pairwise(starts)), "chunks must be ordered"
    for c in range(last + 1):
        assert grid.chunk_of(starts[c]) == c
        assert grid.chunk_of(starts[c + 1] - 1) == c
        assert starts[c + 1] - starts[c] == (
            grid.short if starts[c] < grid.long_from else grid.long
        )
        assert grid.num_chunks(starts[c + 1]) == c + 1
    for pos in range(starts[-1]):
        c = grid.chunk_of(pos)
        assert starts[c] <= pos < starts[c + 1]
        assert grid.num_chunks(pos + 1) == c + 1


def test_uniform_grid_is_plain_division() -> None:
    grid = ChunkGrid.uniform(512)
    for pos in (0, 1, 511, 512, 513, 4095, 4096, 32767):
        assert grid.chunk_of(pos) == pos // 512
        assert grid.chunk_start(grid.chunk_of(pos)) == pos // 512 * 512


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((32, 100, 64), "long_from"),
        ((32, -32, 64), "long_from"),
        ((0, 0, 64), "kv_chunk"),
        ((32, 128, 0), "long_chunk"),
    ],
)
def test_grid_validation_names_the_argument(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChunkGrid(*args)


def test_chunks_must_be_whole_key_tiles() -> None:
    with pytest.raises(ValueError, match="long_chunk must be a multiple of block_n"):
        ChunkGrid(32, 128, 40).check_tiles(16)
    with pytest.raises(ValueError, match="kv_chunk must be a multiple of block_n"):
        ChunkGrid(24, 48, 64).check_tiles(16)
    ChunkGrid(32, 96, 48).check_tiles(16)  # long_from needs to be a multiple of kv_chunk only
    cfg = attention_config(16, torch.bfloat16, 2, True)
    with pytest.raises(ValueError, match="long_chunk"):
        dataclasses.replace(cfg, long_chunk=cfg.block_n + 8)
    with pytest.raises(ValueError, match="long_from"):
        dataclasses.replace(cfg, long_from=cfg.kv_chunk + cfg.block_n)
    with pytest.raises(ValueError, match="kv_chunk"):
        dataclasses.replace(cfg, kv_chunk=cfg.block_n // 2, long_from=0)


@needs_kernels
def test_launch_kv_chunk_override_is_validated() -> None:
    (seq,) = [make_seq(20, TINY_GQA, torch.bfloat16, torch.Generator().manual_seed(0))]
    batch = packed([(seq, 20, 20)], DEVICE or "cpu")
    block_n = attention_config(16, torch.bfloat16, 2, INTERP).block_n
    for bad in (block_n + 8, block_n // 2):
        with pytest.raises(ValueError, match="kv_chunk must be a multiple of block_n"):
            launch(
                batch.q, batch.k, batch.v, None, batch.cu_seqlens_k.diff(), batch.cu_seqlens_q,
                batch.cu_seqlens_k, scale=0.25, sliding_window=None, causal=True,
                max_seq_len=None, mode="auto", kv_chunk=bad,
            )  # fmt: skip


@triton.jit
def _grid_probe(
    pos_ptr, chunk_ptr, start_ptr, scalar_ptr, n,
    KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The kernels' helpers on a vector (elementwise) and on scalars (a loop)."""
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    pos = tl.load(pos_ptr + offs, mask=ok, other=0)
    tl.store(chunk_ptr + offs, _kernels._chunk_of(pos, KV_CHUNK, LONG_FROM, LONG_CHUNK), mask=ok)
    tl.store(start_ptr + offs, _kernels._chunk_start(offs, KV_CHUNK, LONG_FROM, LONG_CHUNK))
    for c in range(0, BLOCK):
        tl.store(scalar_ptr + c, _kernels._chunk_start(c, KV_CHUNK, LONG_FROM, LONG_CHUNK))


@needs_kernels
@pytest.mark.parametrize("grid", GRIDS)
def test_kernel_helpers_match_the_python_grid(grid: ChunkGrid) -> None:
    """``_chunk_of`` on a vector of positions (each chunk's edges, the switch among them) and
    ``_chunk_start`` on a vector and on loop scalars give the Python grid's values."""
    block, chunks = 128, 24
    edges = (grid.chunk_start(c) + d for c in range(chunks) for d in (-1, 0, 1))
    pos = sorted({p for p in edges if p >= 0})
    assert len(pos) <= block
    device = DEVICE or "cpu"
    pos_t = torch.tensor(pos, dtype=torch.int32, device=device)
    got_chunk = torch.full((block,), -7, dtype=torch.int32, device=device)
    got_start = torch.empty(block, dtype=torch.int32, device=device)
    got_scalar = torch.empty(block, dtype=torch.int32, device=device)
    _grid_probe[(1,)](
        pos_t, got_chunk, got_start, got_scalar, len(pos), grid.short, grid.long_from, grid.long,
        block,
    )  # fmt: skip
    assert got_chunk[: len(pos)].tolist() == [grid.chunk_of(p) for p in pos]
    assert got_start.tolist() == [grid.chunk_start(c) for c in range(block)]
    assert got_scalar.tolist() == got_start.tolist()


@triton.jit
def _find_seq_probe(starts_ptr, out_ptr, num_seqs, BLOCK_Q: tl.constexpr):
    """Each program writes the sequence ``_find_seq`` gives its slot (the launcher's grid)."""
    slot = tl.program_id(0)
    tl.store(out_ptr + slot, _kernels._find_seq(starts_ptr, slot, num_seqs, BLOCK_Q, True))


def _first_slots(starts: list[int], block_q: int) -> list[int]:
    return [start // block_q + i for i, start in enumerate(starts[:-1])]


@needs_kernels
@pytest.mark.parametrize(
    ("q_lens", "block_q", "padding"),
    [
        ([1] * 40, 16, 0),  # decode: the bounded search covers 40 // 16 + 1 sequences
        ([1] * 40, 16, 7),  # decode with padded rows past the last sequence (CUDA graphs)
        ([37, 0, 1, 0, 0, 64, 3, 1, 1, 90], 16, 0),  # empty and long sequences mixed
        ([5, 200, 1], 4, 11),
    ],
)
def test_bounded_sequence_search_finds_every_slots_sequence(
    q_lens: list[int], block_q: int, padding: int
) -> None:
    """``_find_seq`` searches ``[slot - total_q // BLOCK_Q, slot]`` only: for every slot of the
    launcher's grid (``total_q // BLOCK_Q + num_seqs``) it gives the last sequence whose first
    slot is at most the slot, as a search over all sequences does."""
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    total_q = starts[-1] + padding  # rows past starts[-1] exist but belong to no sequence
    slots = total_q // block_q + len(q_lens)
    firsts = _first_slots(starts, block_q)
    want = [max(i for i, first in enumerate(firsts) if first <= slot) for slot in range(slots)]
    device = DEVICE or "cpu"
    got = torch.full((slots,), -1, dtype=torch.int32, device=device)
    starts_t = torch.tensor(starts, dtype=torch.int32, device=device)
    _find_seq_probe[(slots,)](starts_t, got, len(q_lens), block_q)
    assert got.tolist() == want


@pytest.mark.parametrize("paged", [True, False])
@pytest.mark.parametrize("group", [1, 4, 5])
def test_prefill_tiles_keep_the_chain_and_change_only_rows_and_warps(
    paged: bool, group: int
) -> None:
    decode = launch_config(128, torch.bfloat16, group, False, prefill=False, paged=paged)
    prefill = launch_config(128, torch.bfloat16, group, False, prefill=True, paged=paged)
    assert decode == attention_config(128, torch.bfloat16, group, False)
    assert (decode.block_m, decode.num_warps) == (64, 4)
    assert (prefill.block_m, prefill.num_warps) == (PREFILL_BLOCK_M, 8)
    assert (decode.num_stages, prefill.num_stages) == (DECODE_STAGES, 3)
    # Paged prefill loads the block table a tile ahead; decode and packed keys do not.
    assert (prefill.prefetch_table, decode.prefetch_table) == (paged, False)
    # The chain (chunk, key tile) and the row packing stay; only rows, warps and stages move.
    same = ("kv_chunk", "long_from", "long_chunk", "block_n", "group_pad", "head_pad")
    assert [getattr(prefill, f) for f in same] == [getattr(decode, f) for f in same]


def test_a_register_cap_reaches_the_compiler_only_when_set() -> None:
    """``max_registers`` becomes Triton's ``maxnreg`` option; unset, the compiler chooses."""
    cfg = attention_config(128, torch.bfloat16, 4, False)
    assert "maxnreg" not in _tile_flags(cfg, cfg.grid, torch.bfloat16)
    capped = dataclasses.replace(cfg, max_registers=168)
    assert _tile_flags(capped, capped.grid, torch.bfloat16)["maxnreg"] == 168


@pytest.mark.parametrize(("group", "cap"), [(4, 168), (3, 168), (1, None), (2, None), (8, None)])
def test_split_decode_tiles_take_the_register_cap_measured_for_their_group(
    group: int, cap: int | None
) -> None:
    """sm90 split decode launches: 168 registers for a padded group of 4 (timed faster on an
    H200), the compiler's choice for the groups not timed; nothing else about the tiles moves."""
    decode = launch_config(128, torch.bfloat16, group, False, prefill=False, paged=True)
    split = split_config(decode, "sm90")
    assert split.max_registers == cap
    assert dataclasses.replace(split, max_registers=None) == decode


def test_the_register_cap_stays_off_prefill_tiles_other_heads_and_other_devices() -> None:
    decode = launch_config(128, torch.bfloat16, 4, False, prefill=False, paged=True)
    for arch in ("cuda", "npu", "interp"):
        assert split_config(decode, arch) == decode
    for cfg in (
        launch_config(128, torch.bfloat16, 4, False, prefill=True, paged=True),
        attention_config(256, torch.bfloat16, 4, False),
        attention_config(128, torch.float32, 4, False),
        attention_config(128, torch.bfloat16, 4, True),
    ):
        assert split_config(cfg, "sm90") == cfg
    tuned = dataclasses.replace(decode, max_registers=200)  # a caller's own cap stays
    assert split_config(tuned, "sm90") == tuned


def test_the_launcher_caps_split_launches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """With sm90 decode tiles, the split launch compiles with ``maxnreg`` and the fused one
    without (the kernels are recorded, not run)."""
    flags: list[dict[str, object]] = []
    monkeypatch.setattr(_platform, "arch", lambda device: "sm90")
    monkeypatch.setattr(_platform, "num_programs", lambda device: 132)
    monkeypatch.setattr(
        _launch, "launch_config",
        lambda *args, **kwargs: launch_config(128, torch.bfloat16, 4, False, prefill=False,
                                              paged=True),
    )  # fmt: skip
    monkeypatch.setattr(
        _launch, "launch_kernel", lambda kernel, grid, *args, **kw: flags.append(kw)
    )
    seqs, blocks, block = 2, 8, 16
    q = torch.zeros(seqs, 32, 128, dtype=torch.bfloat16)
    cache = torch.zeros(seqs * blocks, block, 8, 128, dtype=torch.bfloat16)
    table = torch.arange(seqs * blocks, dtype=torch.int32).view(seqs, blocks)
    lens = torch.full((seqs,), blocks * block, dtype=torch.int32)
    starts = torch.arange(seqs + 1, dtype=torch.int32)
    for mode in ("split", "fused"):
        launch(q, cache, cache, table, lens, starts, None, scale=1.0, sliding_window=None,
               causal=True, max_seq_len=blocks * block, mode=mode)  # fmt: skip
    attn_split, _combine, attn_fused = flags
    assert attn_split["SPLIT"] and attn_split["maxnreg"] == 168
    assert not attn_fused["SPLIT"] and "maxnreg" not in attn_fused


@pytest.mark.parametrize(
    ("head", "dtype", "interp"),
    [(128, torch.bfloat16, True), (256, torch.bfloat16, False), (128, torch.float32, False)],
    ids=["interpreter", "head256", "fp32"],
)
def test_outside_the_family_every_launch_gets_the_same_tiles(
    head: int, dtype: torch.dtype, interp: bool
) -> None:
    assert not has_tile_family(head, dtype, interp)
    for paged in (True, False):
        prefill = launch_config(head, dtype, 4, interp, prefill=True, paged=paged)
        assert prefill == attention_config(head, dtype, 4, interp)
