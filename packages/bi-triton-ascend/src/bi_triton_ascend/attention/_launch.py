"""One launcher for every attention entry point: pick split or fused, allocate, launch.

Split (programs per query tile, KV head and chunk, then :func:`_combine_kernel`) and fused
(one program per query tile and KV head, folding its chunks in registers) give the same bits,
so the choice may follow the batch: split when the fused grid alone would leave the device
idle (decode at small batch and long context), fused otherwise (prefill, large batches).

CUDA graphs: everything this module computes on the host (split or fused, the split grid, the
partial buffers) is frozen into a captured graph, and only the tensors' contents change at
replay. So under capture a split launch needs ``max_seq_len`` to bound every sequence the graph
will ever replay (vLLM: the model's max length), not only the captured ones; the split grid
caps its chunk programs (:func:`_chunk_programs`) so that such a bound does not become a grid
of mostly idle programs. Without a bound, capture runs fused, which needs no grid size.
A kernel variant cannot be loaded while a graph is captured, so the warm-up launch before a
capture should get the same bound (it then picks the same variant; the kernels do not
specialize on the chunk count, the one argument that follows the bound: the partial buffers are
chunk-major, so their strides do not).
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from .. import _platform
from .._launch_cache import launch_kernel
from ._kernels import _attn_kernel, _combine_kernel
from .config import (
    PREFILL_QUERIES_PER_SEQ,
    AttnConfig,
    ChunkGrid,
    cdiv,
    launch_config,
    split_config,
)

logger = logging.getLogger("bi_triton_ascend.attention")

LOG2E = 1.0 / math.log(2.0)
# Split only while the fused grid has fewer programs than this many per compute unit.
SPLIT_FILL = 2
# Largest fp32 partial buffer (max, sum, accumulator per row and chunk) a split launch allocates.
PARTIAL_BUDGET_BYTES = 256 << 20
# Chunk programs per (query tile, KV head) of a split launch: every chunk up to this many...
SPLIT_MIN_CHUNK_PROGRAMS = 32
# ... or up to this many programs per compute unit in all, whichever allows more; a program
# walks chunks c, c + P, c + 2P, ... when a sequence has more chunks (same bits).
SPLIT_PROGRAMS_PER_UNIT = 8
# Head columns and warps per combine program on devices.
COMBINE_BLOCK_D = 32
COMBINE_WARPS = 1


def _want_split(
    mode: str,
    seq_lens: torch.Tensor,
    max_seq_len: int | None,
    fused_programs: int,
    partial_bytes_per_chunk: int,
    grid: ChunkGrid,
    device: torch.device,
) -> tuple[bool, int]:
    """``(split?, chunks)``; reads ``seq_lens.max()`` (a sync) only when a split is wanted."""
    if mode == "fused":
        return False, 0
    if mode == "auto" and fused_programs >= SPLIT_FILL * _platform.num_programs(device):
        return False, 0
    if max_seq_len is None:
        if _platform.capturing(device):
            if mode == "split":
                raise ValueError(
                    "paged_attention: mode='split' inside CUDA graph capture needs max_seq_len"
                )
            return False, 0  # fused gives the same bits; it only needs no grid size
        max_seq_len = int(seq_lens.max().item())
    chunks = grid.num_chunks(max_seq_len)
    if mode == "auto" and (chunks <= 1 or chunks * partial_bytes_per_chunk > PARTIAL_BUDGET_BYTES):
        return False, 0
    return True, max(chunks, 1)


def _chunk_programs(chunks: int, tiles: int, device: torch.device) -> int:
    """Programs per (query tile, KV head) of a split launch over ``chunks`` chunks.

    One per chunk up to :data:`SPLIT_MIN_CHUNK_PROGRAMS`, or up to a whole grid of
    :data:`SPLIT_PROGRAMS_PER_UNIT` programs per compute unit; beyond that programs take several
    chunks. Bounds the grid when ``chunks`` comes from a static bound (a CUDA graph sized for the
    model's max length replays mostly short sequences: idle programs still cost a launch slot).
    """
    fill = cdiv(SPLIT_PROGRAMS_PER_UNIT * _platform.num_programs(device), max(tiles, 1))
    return max(1, min(chunks, max(SPLIT_MIN_CHUNK_PROGRAMS, fill)))


def launch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_table: torch.Tensor | None,
    seq_lens: torch.Tensor,
    q_start: torch.Tensor,
    kv_start: torch.Tensor | None,
    *,
    scale: float,
    sliding_window: int | None,
    causal: bool,
    max_seq_len: int | None,
    mode: str,
    out_dtype: torch.dtype | None = None,
    kv_chunk: int | None = None,
    config: AttnConfig | None = None,
) -> torch.Tensor:
    """Run the attention over a paged cache (``block_table`` given) or packed KV (``kv_start``).

    Args:
        query: ``[total_q, num_heads, head_size]``.
        key: paged ``[num_blocks, block_size, num_kv_heads, head_size]`` or packed
            ``[total_k, num_kv_heads, head_size]``; ``value`` likewise.
        value: like ``key``.
        block_table: ``[num_seqs, max_blocks]`` for a paged cache, else ``None``.
        seq_lens: ``[num_seqs]`` KV length of each sequence (its queries are the last ones).
        q_start: ``[num_seqs + 1]`` offsets of each sequence's queries in ``query``.
        kv_start: ``[num_seqs + 1]`` offsets of each sequence's keys in packed ``key``.
        scale: softmax scale applied to ``q . k``.
        sliding_window: keys visible to a query, itself included (``None``: all).
        causal: queries see keys up to their own position only.
        max_seq_len: an upper bound of ``seq_lens`` (sizes the split grid without a sync);
            under CUDA graph capture, of every ``seq_lens`` the graph will replay.
        mode: ``"auto"``, ``"split"`` or ``"fused"`` (same bits; speed only).
        out_dtype: the output dtype (default ``query.dtype``).
        kv_chunk: override of the chunk grid by a uniform one of chunks this long, for
            benchmarks only (changes the bits).
        config: override of the tiles, for benchmarks only (may change the bits).

    Returns:
        ``[total_q, num_heads, head_size]`` in ``out_dtype``; rows past ``q_start[-1]`` are
        left unwritten.
    """
    paged = block_table is not None
    total_q, num_heads, head_size = query.shape
    num_kv_heads = key.shape[-2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    device = query.device
    interp = _platform.interpreting()
    prefill = total_q >= PREFILL_QUERIES_PER_SEQ * num_seqs
    cfg = config or launch_config(
        head_size, query.dtype, group, interp, prefill=prefill, paged=paged
    )
    if kv_chunk is None:
        kv_grid = cfg.grid  # checked against the tiles when cfg was built
    else:
        kv_grid = ChunkGrid.uniform(kv_chunk)
        kv_grid.check_tiles(cfg.block_n)
    out = torch.empty(query.shape, dtype=out_dtype or query.dtype, device=device)
    if total_q == 0 or num_seqs == 0:
        return out

    slots = total_q // cfg.block_q + num_seqs
    split, chunks = _want_split(
        mode, seq_lens, max_seq_len, slots * num_kv_heads,
        total_q * num_kv_heads * cfg.group_pad * (cfg.head_pad + 2) * 4, kv_grid, device,
    )  # fmt: skip
    if split and config is None:
        cfg = split_config(cfg, _platform.arch(device))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "attention: %s, %d seqs, %d queries, %s", "split" if split else "fused",
            num_seqs, total_q, kv_grid.describe(),
        )  # fmt: skip

    seq_lens = seq_lens.contiguous()
    q_start = q_start.contiguous()
    if block_table is not None:
        table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
        k_strides, v_strides = key.stride(), value.stride()
        block_size, stride_bt, kv_base = key.shape[1], table.stride(0), seq_lens
    else:
        table = seq_lens  # never read
        k_strides, v_strides = (0, *key.stride()), (0, *value.stride())
        block_size, stride_bt = 1, 0
        kv_base = (kv_start if kv_start is not None else q_start).contiguous()

    if split:
        # Chunk-major and contiguous (the kernels rely on it: see ._kernels' docstring).
        rows_shape = (chunks, num_kv_heads, total_q, cfg.group_pad)
        part_m = torch.empty(rows_shape, dtype=torch.float32, device=device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((*rows_shape, cfg.head_pad), dtype=torch.float32, device=device)
        pm_strides, pa_strides = part_m.stride()[:2], part_acc.stride()[:2]
    else:
        part_m = part_l = part_acc = out  # never read nor written by a fused launch
        pm_strides = pa_strides = (0, 0)

    window = sliding_window if sliding_window is not None else 0
    grid: tuple[int, ...] = (slots, num_kv_heads)
    if split:
        grid = (*grid, _chunk_programs(chunks, slots * num_kv_heads, device))
    launch_kernel(
        _attn_kernel, grid,
        query, key, value, out, table, seq_lens, q_start, kv_base,
        part_m, part_l, part_acc,
        num_seqs, chunks, group, head_size, block_size, window, scale * LOG2E,
        *query.stride(), *k_strides, *v_strides, *out.stride(),
        stride_bt, *pm_strides, *pa_strides,
        PAGED=paged, CAUSAL=causal, HAS_WINDOW=sliding_window is not None, SPLIT=split,
        **_tile_flags(cfg, kv_grid, query.dtype),
    )  # fmt: skip
    if split:
        combine_partials(
            out, part_m, part_l, part_acc, q_start, seq_lens, chunks, group, head_size,
            sliding_window, causal, cfg, kv_grid,
        )  # fmt: skip
    return out


def combine_partials(
    out: torch.Tensor,
    part_m: torch.Tensor,
    part_l: torch.Tensor,
    part_acc: torch.Tensor,
    q_start: torch.Tensor,
    seq_lens: torch.Tensor,
    chunks: int,
    group: int,
    head_size: int,
    sliding_window: int | None,
    causal: bool,
    cfg: AttnConfig,
    kv_grid: ChunkGrid,
) -> None:
    """Fold a split launch's chunk-major partials into ``out`` (:func:`._kernels._combine_kernel`).

    Public to the package's benchmarks, so that another split kernel writing the same partials
    (``bench/gluon_split_decode.py``) is folded exactly as :func:`launch` folds its own.
    """
    num_seqs = seq_lens.shape[0]
    total_q, num_kv_heads = part_m.shape[2], part_m.shape[1]
    # Devices: one token and 32 head columns per program (many short folds in parallel).
    # Interpreter: whole query tiles (few programs). Same bits: each element folds alone.
    interp = _platform.interpreting()
    combine_q, block_d = (cfg.block_q, cfg.head_pad) if interp else (1, COMBINE_BLOCK_D)
    block_d = min(block_d, cfg.head_pad)
    grid_c = (total_q // combine_q + num_seqs, num_kv_heads, cdiv(cfg.head_pad, block_d))
    launch_kernel(
        _combine_kernel, grid_c,
        out, part_m, part_l, part_acc, q_start, seq_lens,
        num_seqs, chunks, group, head_size, sliding_window or 0,
        *out.stride(), *part_m.stride()[:2], *part_acc.stride()[:2],
        CAUSAL=causal, HAS_WINDOW=sliding_window is not None, **_grid_flags(kv_grid),
        BLOCK_M=combine_q * cfg.group_pad, BLOCK_Q=combine_q,
        GROUP_PAD=cfg.group_pad, HEAD_PAD=cfg.head_pad, BLOCK_D=block_d,
        num_warps=COMBINE_WARPS, enable_fp_fusion=False,
    )  # fmt: skip


def _grid_flags(grid: ChunkGrid) -> dict[str, int]:
    """The chunk grid's constexprs (:func:`._kernels._chunk_of`, :func:`._kernels._chunk_start`)."""
    return {"KV_CHUNK": grid.short, "LONG_FROM": grid.long_from, "LONG_CHUNK": grid.long}


@functools.cache
def _tile_flags(cfg: AttnConfig, grid: ChunkGrid, dtype: torch.dtype) -> dict[str, object]:
    """The launch's constexprs and compile options (cached per tiles; callers unpack a copy)."""
    registers = {} if cfg.max_registers is None else {"maxnreg": cfg.max_registers}
    return {
        **registers,
        **_grid_flags(grid),
        "BLOCK_N": cfg.block_n,
        "BLOCK_M": cfg.block_m,
        "BLOCK_Q": cfg.block_q,
        "GROUP_PAD": cfg.group_pad,
        "HEAD_PAD": cfg.head_pad,
        "UPCAST": _platform.upcast_dot(),
        "PRECISION": _platform.dot_precision(dtype),
        "PREFETCH": cfg.prefetch_table,
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        # Same rounding in the fused fold and in the combine kernel: no FMA contraction.
        "enable_fp_fusion": False,
    }
