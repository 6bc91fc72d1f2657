"""The GEMM's accumulation chain (fixed per shape) and its tiles (free per batch size).

Batch invariance of a GEMM is a property of the *chain*: the sequence of fp32 operations that
builds one output element. Here the chain is fixed by ``(N, K, dtype)`` alone:

* ``BLOCK_K`` depends on the dtype only; every ``tl.dot`` consumes one ``BLOCK_K`` slice of K,
  zero-padded at the end, in increasing K order.
* K is cut into ``num_segs`` equal segments of ``seg_blocks`` K-blocks each.
  Each segment is accumulated from zero; the segment results are then added in segment order,
  starting from zero (``((0 + s0) + s1) + ...``). With one segment the accumulator is the result.

That chain gives the same bits whether one program walks every segment (the persistent kernel,
used for large M) or one program per segment writes fp32 partials that the last program to
finish adds in segment order (the split-K kernel, used for small M where the N tiles alone do
not fill the device). So the kernel and the M/N tile sizes may follow the batch size, while
``BLOCK_K``, the segments and the dot instruction's operand types stay put.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

BLOCK_K: dict[torch.dtype, int] = {torch.bfloat16: 64, torch.float16: 64, torch.float32: 32}
SUPPORTED_DTYPES = tuple(BLOCK_K)

# Split-K is sized so that about this many (N tile x segment) programs exist at decode sizes,
# counting N tiles of _REF_BLOCK_N columns. Fixed constants, not the device's SM count, so the
# chain (and the bits) are the same on every device. Segments cost large-M speed (a second
# register accumulator caps tiles at 128x128; measured 0.62x vs 0.92x cuBLAS at N=1024,
# M=8192 on H100), so only narrow outputs (N < 1024) get them.
_TARGET_PROGRAMS = 32
_REF_BLOCK_N = 32
_MAX_SEGS = 8
_MIN_SEG_BLOCKS = 2


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Chain:
    """How K is walked for one output element.

    Attributes:
        block_k: K elements per ``tl.dot``.
        seg_blocks: K-blocks per segment (``seg_blocks * num_segs`` covers K exactly).
        num_segs: segments (1 = one accumulator over all of K).
    """

    block_k: int
    seg_blocks: int
    num_segs: int


_n_independent: list[bool] = [False]
_generation: list[int] = [0]


def generation() -> int:
    """A number that changes with the chain switch and :class:`force_tiles` blocks.

    Launches prepared earlier compare it before replaying.
    """
    return _generation[0]


def set_n_independent_chain(on: bool) -> None:
    """Make the chain a function of ``(K, dtype)`` only: one segment whatever N (default off).

    Tensor parallelism splits a column-parallel layer's N (``qkv_proj``, ``gate_up_proj``, the
    vocab-parallel ``lm_head``) across ranks, so with the default rule a narrow layer could get
    split-K segments at TP=2 and not at TP=1, and other bits. The TP-invariant mode of
    ``vllm-bi-plugin`` switches this on in every process; it costs the split-K speed-up of
    narrow outputs (N < 1024) at small M, and changes nothing for N >= 1024.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_n_independent_chain: on must be a bool, got {type(on).__name__}")
    _n_independent[0] = on
    _generation[0] += 1


def n_independent_chain() -> bool:
    """Whether :func:`set_n_independent_chain` is on."""
    return _n_independent[0]


def chain_for(n: int, k: int, dtype: torch.dtype) -> Chain:
    """The accumulation chain of an ``[*, K] @ [K, N]`` product; depends on N, K, dtype only.

    Segments are equal (their count divides the number of K-blocks), which lets Triton fuse the
    segment and K loops into one pipelined loop. With :func:`set_n_independent_chain` on, N is
    ignored and K is one segment.
    """
    block_k = BLOCK_K[dtype]
    k_blocks = cdiv(k, block_k)
    segs = 1
    if _n_independent[0]:
        return Chain(block_k, k_blocks, 1)
    while (
        cdiv(n, _REF_BLOCK_N) * segs < _TARGET_PROGRAMS
        and segs < _MAX_SEGS
        and k_blocks % (2 * segs) == 0
        and k_blocks // (2 * segs) >= _MIN_SEG_BLOCKS
    ):
        segs *= 2
    return Chain(block_k, k_blocks // segs, segs)


@dataclass(frozen=True)
class Tiles:
    """Launch shape of one GEMM call.

    Attributes:
        split: one program per (tile, segment) with a fixed-order reduction (small M), or a
            persistent grid walking all segments per tile (large M).
        block_m: rows per tile.
        block_n: columns per tile.
        num_warps: warps per program.
        num_stages: software-pipelining depth.
        group_m: row tiles walked per column tile before moving right, in both kernels (the
            programs sharing a block of weight columns run together and read it from L2).
        flatten: fuse the persistent kernel's item loop with its K loop (``tl.range``'s
            ``flatten``, Triton >= 3.4; CUDA only).
        tma: one program per tile loading both operands through TMA tensor descriptors (Hopper,
            one K segment); where a call's operands cannot be described (alignment, layout,
            batches) the same tiles run through the pointer kernel instead.
    """

    split: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    flatten: bool = False
    tma: bool = False


def _fewest_waste(m: int, n: int, programs: int, options: list[Tiles]) -> Tiles:
    """The first (largest) option whose output tiles still fill ~70% of the programs."""
    for tiles in options:
        if cdiv(m, tiles.block_m) * cdiv(n, tiles.block_n) >= 0.7 * programs:
            return tiles
    return options[-1]


def tiles_for(
    arch: str,
    m: int,
    n: int,
    chain: Chain,
    dtype: torch.dtype,
    programs: int = 132,
    tma_ok: bool = False,
) -> Tiles:
    """Tiles for one call; free to depend on M, N and the device (the chain does not).

    The CUDA table was measured on an H100 (``bench/tune_gemm.py``, bf16, Qwen3 shapes), the
    M = 256 band on an H100 and an H200; every candidate gave the same bits per shape on both.
    Other devices get the same table untuned.

    Args:
        arch: ``interp``, ``sm90``, ``cuda`` or ``npu`` (from ``_platform.arch``).
        m: rows per batch entry.
        n: columns.
        chain: the shape's chain (two register accumulators when it has several segments).
        dtype: operand dtype.
        programs: the device's program count (SMs), to avoid half-empty waves.
        tma_ok: the operands can be loaded through TMA descriptors (see ``gemm.tma_layout``).
    """
    segmented = chain.num_segs > 1
    if _tma_possible(arch, chain, dtype, tma_ok):
        tma = _tma_tiles(m, n, programs)
        if tma is not None:
            return tma
    if arch == "interp":
        if m <= 16:
            return Tiles(True, 16, 32, 4, 1)
        return Tiles(False, 32 if m <= 64 else 64, 32 if segmented else 64, 4, 1)
    if arch == "npu":  # untuned: nothing has run on an NPU yet
        if m <= 64:
            return Tiles(True, 16 if m <= 16 else 64, 64, 4, 2)
        return Tiles(False, 128, 128 if dtype != torch.float32 else 64, 4, 2)
    tiles = _cuda_tiles(arch, m, n, chain, dtype, programs)
    if tiles.split and cdiv(n, 16) < programs:
        # Narrow outputs (N = 1024): the weights fit in L2 whatever the order, and row-major
        # order measured 1-3% faster there; wider ones gain up to 1.1x from the grouped order
        # at M = 128 (tune_gemm_order_h100.json).
        tiles = replace(tiles, group_m=1)
    return tiles


# TMA tiles, largest first: (block_m, block_n, warps, stages with one wave or less, stages when
# two programs share an SM). A one-wave grid gets the deepest pipeline that fits one program
# per SM; a grid of up to two waves gets the depth that fits two per SM (~96 KiB each), so the
# second wave is resident from the start. Measured on an H100 at M = 32-512 (bench/results/
# probe_tma_gemm_h100.json and probe_tma_gemm_2_h100.json): deeper stages in a 1.5-wave grid
# lost up to 25%, and shallower ones in a one-wave grid up to 30%.
_TMA_TILES = ((128, 128, 8, 4, 3), (64, 128, 4, 6, 4), (64, 64, 4, 8, 6), (64, 32, 4, 8, 8))
_TMA_BAND = (65, 768)  # M range; smaller M keeps the split-K table, larger the persistent one


def _tma_possible(arch: str, chain: Chain, dtype: torch.dtype, tma_ok: bool) -> bool:
    """Whether the TMA kernel can run a call at all: Hopper, 16-bit, one K segment."""
    return tma_ok and arch == "sm90" and chain.num_segs == 1 and dtype != torch.float32


def _tma_tiles(m: int, n: int, programs: int) -> Tiles | None:
    """The largest TMA tile that still fills ~90% of the SMs, within two waves; else ``None``.

    ``None`` (the pointer table) also below ``BLOCK_N = 32``: at N = 1024, M = 128 the pointer
    kernel's 64 x 16 tiles measured 0.86x cuBLAS against 0.81x through TMA.
    """
    if not _TMA_BAND[0] <= m <= _TMA_BAND[1]:
        return None
    for block_m, block_n, warps, deep, shared in _TMA_TILES:
        count = cdiv(m, block_m) * cdiv(n, block_n)
        if count < 0.9 * programs:
            continue
        if count > 2 * programs:
            return None
        stages = deep if count <= programs else shared
        return Tiles(True, block_m, block_n, warps, stages, tma=True)
    return None


def _cuda_tiles(
    arch: str, m: int, n: int, chain: Chain, dtype: torch.dtype, programs: int
) -> Tiles:
    """The CUDA table of :func:`tiles_for` (tile shapes, kernels and pipelining depth)."""
    segmented = chain.num_segs > 1
    flat = arch == "sm90"  # tl.range(flatten=True) fuses item and K loops (Triton >= 3.4)
    if dtype == torch.float32:  # fp32 FMA dot (no tensor cores): small square tiles
        if m <= 64:
            return Tiles(True, 16 if m <= 16 else 64, 32, 4, 3)
        return Tiles(False, 64, 64, 4, 3, flatten=flat)
    narrow = cdiv(n, 16) < programs  # too few weight tiles: split rows over more programs
    wide = n >= 16384
    if m <= 16:
        return Tiles(True, 16, 32, 4, 6) if wide else Tiles(True, 16, 16, 4, 8)
    if m <= 32:
        if segmented or narrow:
            return Tiles(True, 16, 16, 4, 8)
        return Tiles(True, 64, 32, 4, 5) if wide else Tiles(True, 32, 16, 4, 6)
    if m <= 64:
        return Tiles(True, 64, 32, 4, 5) if wide else Tiles(True, 64, 16, 4, 6)
    if segmented:  # two fp32 accumulators: 128x128 at most
        return _fewest_waste(m, n, programs, [
            Tiles(False, 128, 128, 8, 3, flatten=flat), Tiles(False, 64, 64, 4, 4, flatten=flat),
        ])  # fmt: skip
    if m <= 192:
        if wide:
            return Tiles(False, 128, 256, 8, 3, flatten=flat)
        return Tiles(True, 64, 16, 4, 6) if narrow else Tiles(True, 64, 32, 4, 5)
    if m <= 320:
        # Around a 256-sequence decode batch: these three won at M = 256 on 7 of the 8 Qwen3
        # shapes on both an H100 and an H200 (tune_gemm_256_h100.json, tune_gemm_h200.json).
        return _fewest_waste(m, n, programs, [
            Tiles(False, 128, 128, 4, 4, flatten=flat), Tiles(False, 64, 128, 4, 4, flatten=flat),
            Tiles(True, 64, 32, 4, 5),
        ])  # fmt: skip
    if m <= 768:
        return _fewest_waste(m, n, programs, [
            Tiles(False, 128, 256, 8, 3, flatten=flat), Tiles(False, 128, 128, 4, 4, flatten=flat),
            Tiles(True, 64, 64, 4, 4),
        ])  # fmt: skip
    return _fewest_waste(m, n, programs, [
        Tiles(False, 128, 256, 8, 3, flatten=flat), Tiles(False, 128, 128, 4, 4, flatten=flat),
        Tiles(False, 64, 64, 4, 4, flatten=flat),
    ])  # fmt: skip


_forced: list[Tiles] = []


class force_tiles:
    """Use the given tiles for every GEMM in the block (tuning sweeps and tile-freedom tests).

    The chain is never forced: it stays a function of (N, K, dtype), so results must not change.
    """

    def __init__(self, tiles: Tiles) -> None:
        self.tiles = tiles

    def __enter__(self) -> Tiles:
        _forced.append(self.tiles)
        _generation[0] += 1
        return self.tiles

    def __exit__(self, *exc: object) -> None:
        _forced.pop()
        _generation[0] += 1


def tiles_forced() -> bool:
    """Whether a :class:`force_tiles` block is active (callers that cache launches skip it)."""
    return bool(_forced)


def select_tiles(
    arch: str,
    m: int,
    n: int,
    chain: Chain,
    dtype: torch.dtype,
    programs: int,
    tma_ok: bool = False,
) -> Tiles:
    """:func:`tiles_for`, unless :class:`force_tiles` is active.

    Forced TMA tiles whose operands cannot use TMA run as the same tiles through pointers.
    """
    if _forced:
        forced = _forced[-1]
        usable = _tma_possible(arch, chain, dtype, tma_ok)
        return forced if usable or not forced.tma else replace(forced, tma=False)
    return tiles_for(arch, m, n, chain, dtype, programs, tma_ok)


def fit_shared_memory(
    tiles: Tiles, chain: Chain, in_bytes: int, out_bytes: int, limit: int | None
) -> Tiles:
    """``tiles`` with fewer pipeline stages (then narrower N tiles) until they fit ``limit``.

    The tile tables assume an output of the input's width; an fp32 output (the TP-invariant
    segment products) doubles the epilogue's staging tile, which overflowed shared memory on
    the H100 at 128 x 256 tiles with 3 stages (272 KiB of 227 KiB). Stages and tile widths never
    change the accumulation chain, so the bits stay the same. The estimate is the operand
    pipeline plus one output tile.
    """
    if limit is None:
        return tiles

    def need(t: Tiles) -> int:
        pipeline = t.num_stages * (t.block_m + t.block_n) * chain.block_k * in_bytes
        return pipeline + t.block_m * t.block_n * out_bytes

    while need(tiles) > limit and tiles.num_stages > 2:
        tiles = replace(tiles, num_stages=tiles.num_stages - 1)
    while need(tiles) > limit and tiles.block_n > 32:
        tiles = replace(tiles, block_n=tiles.block_n // 2)
    return tiles
