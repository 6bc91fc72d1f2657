"""Test data for the attention tests: whole sequences, laid out paged or packed on demand.

A :class:`Seq` holds one sequence's queries, keys and values for *every* position, so a test can
ask for any slice of its queries (decode of position ``p``, a prefill chunk, a cached-prefix
tail) and compare rows bitwise across layouts. :func:`paged` scatters several (sequence, query
range) requests into one shuffled paged cache whose unused slots hold NaN: a kernel that reads
outside a sequence poisons its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bi_triton_ascend import _platform
from bi_triton_ascend.attention import ChunkGrid, attention_config, chunk_grid, kv_chunk_size

INTERP = _platform.interpreting()
DEVICE: str | None = "cpu" if INTERP else ("cuda" if torch.cuda.is_available() else None)
needs_kernels = pytest.mark.skipif(
    DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU interpreter) or an NVIDIA GPU"
)
cuda_only = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or INTERP,
        reason="needs an NVIDIA GPU without TRITON_INTERPRET",
    ),
]


@dataclass(frozen=True)
class Heads:
    """Head layout of a test model."""

    num_heads: int
    num_kv_heads: int
    head_size: int


TINY_GQA = Heads(4, 2, 16)  # small enough for the interpreter; 2 query heads per KV head
QWEN3_8B = Heads(32, 8, 128)  # Qwen3-8B attention


def chunk_of(heads: Heads, dtype: torch.dtype) -> int:
    """The short chunk length (chunks before the grid's switch to long chunks)."""
    return kv_chunk_size(heads.head_size, dtype, INTERP)


def grid_of(heads: Heads, dtype: torch.dtype) -> ChunkGrid:
    """The whole chunk grid."""
    return chunk_grid(heads.head_size, dtype, INTERP)


def around_switch(grid: ChunkGrid) -> list[int]:
    """Sequence lengths (or positions) around the switch and the first long chunk's end.

    ``long_from - 1, long_from, long_from + 1`` and ``long_from + long - 1, + long, + long + 1``
    (127, 128, 129, 191, 192, 193 in the interpreter).
    """
    first_long_end = grid.long_from + grid.long
    return [grid.long_from + d for d in (-1, 0, 1)] + [first_long_end + d for d in (-1, 0, 1)]


def tile_of(heads: Heads, dtype: torch.dtype) -> int:
    group = heads.num_heads // heads.num_kv_heads
    return attention_config(heads.head_size, dtype, group, INTERP).block_n


@dataclass
class Seq:
    """One sequence: queries, keys and values at every position ``[0, length)``."""

    q: torch.Tensor  # [L, H, D]
    k: torch.Tensor  # [L, Hkv, D]
    v: torch.Tensor  # [L, Hkv, D]

    @property
    def length(self) -> int:
        return self.k.shape[0]


def make_seq(
    length: int, heads: Heads, dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"
) -> Seq:
    """Random sequence drawn on ``gen``'s device; queries scaled up so some rows are peaked."""

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen, device=gen.device) * scale
        return x.to(dtype).to(device)

    return Seq(
        q=rnd(length, heads.num_heads, heads.head_size, scale=2.0),
        k=rnd(length, heads.num_kv_heads, heads.head_size),
        v=rnd(length, heads.num_kv_heads, heads.head_size),
    )


@dataclass
class Paged:
    """One paged call's arguments, plus where each request's rows land in the output."""

    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    rows: list[slice]

    def args(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.query,
            self.key_cache,
            self.value_cache,
            self.block_table,
            self.seq_lens,
            self.query_start_loc,
        )


def paged(
    requests: list[tuple[Seq, int, int]],
    block_size: int,
    gen: torch.Generator,
    device: str,
    extra_blocks: int = 3,
) -> Paged:
    """A paged batch: request ``(seq, kv_len, q_len)`` attends queries ``[kv_len - q_len, kv_len)``.

    Blocks are shuffled over the cache; free slots and the tail of each last block are NaN; unused
    block-table entries point past the cache (a kernel must never dereference them).
    """
    first = requests[0][0]
    hkv, d = first.k.shape[1], first.k.shape[2]
    blocks_per = [-(-kv_len // block_size) for _, kv_len, _ in requests]
    num_blocks = sum(blocks_per) + extra_blocks
    max_blocks = max(blocks_per) + 2
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(gen.initial_seed()))
    key_cache = torch.full(
        (num_blocks * block_size, hkv, d), float("nan"), dtype=first.k.dtype, device=device
    )
    value_cache = torch.full_like(key_cache, float("nan"))
    table = torch.full((len(requests), max_blocks), num_blocks + 1000, dtype=torch.int32)
    queries, rows, used, start = [], [], 0, 0
    for i, (seq, kv_len, q_len) in enumerate(requests):
        if not 0 < q_len <= kv_len <= seq.length:
            raise ValueError(f"bad request kv_len={kv_len} q_len={q_len} for length {seq.length}")
        ids = perm[used : used + blocks_per[i]]
        used += blocks_per[i]
        table[i, : blocks_per[i]] = ids.to(torch.int32)
        pos = torch.arange(kv_len)
        slots = (ids[pos // block_size] * block_size + pos % block_size).to(device)
        key_cache[slots] = seq.k[:kv_len].to(device)
        value_cache[slots] = seq.v[:kv_len].to(device)
        queries.append(seq.q[kv_len - q_len : kv_len].to(device))
        rows.append(slice(start, start + q_len))
        start += q_len
    starts = torch.tensor([0] + [r.stop for r in rows], dtype=torch.int32)
    lens = torch.tensor([kv_len for _, kv_len, _ in requests], dtype=torch.int32)
    return Paged(
        query=torch.cat(queries),
        key_cache=key_cache.view(num_blocks, block_size, hkv, d),
        value_cache=value_cache.view(num_blocks, block_size, hkv, d),
        block_table=table.to(device),
        seq_lens=lens.to(device),
        query_start_loc=starts.to(device),
        rows=rows,
    )


GARBAGE_BLOCK = 1 << 30  # a block id no cache has: dereferencing it faults or reads garbage


def pad_requests(batch: Paged, with_query: int, without_query: int, trailing: int) -> Paged:
    """``batch`` padded as vLLM pads a FULL-CUDA-graph decode batch, plus harsher variants.

    Appends ``with_query`` requests with one query and no keys, then ``without_query`` requests
    with neither (vLLM's padding), then ``trailing`` query rows that belong to no request
    (vLLM's padded tokens). Padding rows of the query are NaN and padding block-table rows hold
    :data:`GARBAGE_BLOCK`: a kernel that reads them leaks NaN or faults.
    """
    pads = with_query + without_query
    query = batch.query
    extra = torch.full(
        (with_query + trailing, *query.shape[1:]), float("nan"), dtype=query.dtype,
        device=query.device,
    )  # fmt: skip
    starts = batch.query_start_loc.tolist()
    real = starts[-1]
    starts += [real + i + 1 for i in range(with_query)]
    starts += [starts[-1]] * without_query
    table = torch.full(
        (pads, batch.block_table.shape[1]), GARBAGE_BLOCK, dtype=batch.block_table.dtype,
        device=batch.block_table.device,
    )  # fmt: skip
    lens = torch.zeros(pads, dtype=batch.seq_lens.dtype, device=batch.seq_lens.device)
    return Paged(
        query=torch.cat([query, extra]),
        key_cache=batch.key_cache,
        value_cache=batch.value_cache,
        block_table=torch.cat([batch.block_table, table]),
        seq_lens=torch.cat([batch.seq_lens, lens]),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=query.device),
        rows=[*batch.rows, *(slice(real + i, real + i + 1) for i in range(with_query))],
    )


@dataclass
class Packed:
    """One varlen call's arguments (packed queries and keys)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    rows: list[slice]


def packed(requests: list[tuple[Seq, int, int]], device: str) -> Packed:
    """Packed varlen batch: keys ``[0, kv_len)`` and queries ``[kv_len - q_len, kv_len)``."""
    qs, ks, vs, rows, cq, ck = [], [], [], [], [0], [0]
    for seq, kv_len, q_len in requests:
        qs.append(seq.q[kv_len - q_len : kv_len])
        ks.append(seq.k[:kv_len])
        vs.append(seq.v[:kv_len])
        rows.append(slice(cq[-1], cq[-1] + q_len))
        cq.append(cq[-1] + q_len)
        ck.append(ck[-1] + kv_len)
    return Packed(
        q=torch.cat(qs).to(device),
        k=torch.cat(ks).to(device),
        v=torch.cat(vs).to(device),
        cu_seqlens_q=torch.tensor(cq, dtype=torch.int32, device=device),
        cu_seqlens_k=torch.tensor(ck, dtype=torch.int32, device=device),
        rows=rows,
    )


# Accuracy vs a float64 reference, per dtype. bf16/fp16: the probabilities are rounded to the
# cache dtype before the value product (as every flash kernel does) and the output is rounded
# once more. fp32: exp2/div approximations on GPUs (ex2.approx, div.full: ~2 ulp).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
