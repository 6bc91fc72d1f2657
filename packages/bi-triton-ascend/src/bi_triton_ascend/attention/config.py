"""The attention's reduction chain (a fixed chunk grid of the keys) and its tiles.

Batch invariance of attention is a property of the *chain* that builds one query row:

* Keys are cut into chunks on a grid of absolute positions (:class:`ChunkGrid`): chunks of
  ``kv_chunk`` keys up to position ``long_from``, chunks of ``long_chunk`` keys after it. Chunk
  ``c`` starts at ``c * kv_chunk`` for ``c < long_from // kv_chunk``, else at
  ``long_from + (c - long_from // kv_chunk) * long_chunk``. Each chunk is walked in tiles of
  ``block_n`` keys, also on the absolute grid, in increasing order, with an online softmax that
  starts from scratch at the chunk's start: that gives one partial ``(max, sum, accumulator)``
  per chunk.
* The partials of a row are folded in chunk order (0, 1, 2, ...) starting from the empty partial.

Short chunks keep short sequences split over enough programs (a 1k-key decode has four chunks);
long ones halve the folds (and the partials) of long sequences (512-key chunks ran 1.03-1.22x
faster than 256-key ones at long context on an H100). The grid is a function of the position
only, so the switch changes no invariance.

The grid and ``block_n`` depend on the head size, the dtype and the device family only: never
on the batch, the number of sequences, other sequences' lengths, or how many queries of the
sequence this call computes. So a query at position ``p`` walks ``[0, p]`` (or its window) in the
same tiles and chunks whether it is decoded alone, decoded in a batch of 64, prefilled in one
call or in chunks, or scored by the trainer's packed varlen call.

``block_m`` (query rows per program) and the warps are *not* part of the chain on GPUs, within
one family of tiles: with 16-bit operands and heads up to 128, tiles of 64 or 128 rows on 4 or
8 warps build every row from the same Hopper matrix instructions (64-row warpgroup slices, the
same ``BLOCK_N`` and ``k``-steps over the head) and the same per-row reductions, so they give the
same bits (measured on every case of ``bench/tune_attention.py`` and checked by
``test_attn_cuda.py::test_tile_family_gives_the_same_bits``; 16- and 32-row tiles use other
instructions and do not). So a launch may take the tiles that suit it: :func:`launch_config`
gives decode-like launches 64 rows on 4 warps and prefill-like ones 128 rows on 8. In Triton's
CPU interpreter and for other operand sizes there is one tile shape for every caller.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_HEAD_SIZE = 256

# The chunk grid on GPUs/NPUs: 256-key chunks up to key 4096 (a 1k-token sequence keeps four
# chunks, i.e. 32 programs for 8 KV heads at batch 1), 512-key chunks after (a 32k-token
# sequence has 16 + 56 = 72 chunks, 576 programs for 8 KV heads: an H100 has 132 SMs).
GPU_KV_CHUNK = 256
GPU_LONG_FROM = 4096
GPU_LONG_CHUNK = 512
# In Triton's CPU interpreter: small enough that tests with sequences of a few hundred tokens
# cross several short chunks, the switch and several long chunks.
INTERP_KV_CHUNK = 32
INTERP_LONG_FROM = 128
INTERP_LONG_CHUNK = 64
INTERP_BLOCK_N = 16
MIN_DOT = 16  # smallest tl.dot extent
# Launches with at least this many queries per sequence on average take the prefill tiles.
PREFILL_QUERIES_PER_SEQ = 16
# Query rows of the prefill tiles (two 64-row warpgroups).
PREFILL_BLOCK_M = 128
# Software-pipelining depth of the 16-bit decode tiles (heads up to 128) on devices.
DECODE_STAGES = 1
# Largest padded head size of the tile family (a [128, head] fp32 accumulator on 8 warps).
FAMILY_MAX_HEAD = 128
# Register cap of split decode launches on sm90, per padded GQA group (see split_config).
SPLIT_MAX_REGISTERS_SM90 = {4: 168}


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ChunkGrid:
    """The chunks of the keys: ``short``-key chunks up to ``long_from``, ``long``-key ones after.

    Chunk ``c`` covers ``[chunk_start(c), chunk_start(c + 1))``; :meth:`chunk_of` is its inverse.
    ``long_from`` must be a multiple of ``short`` (so the switch falls on a chunk boundary);
    ``long_from == short == long`` is a uniform grid (:meth:`uniform`).

    Attributes:
        short: keys per chunk before ``long_from``.
        long_from: the position where the long chunks start.
        long: keys per chunk from ``long_from`` on.
    """

    short: int
    long_from: int
    long: int

    def __post_init__(self) -> None:
        if self.short <= 0:
            raise ValueError(f"kv_chunk (short chunk) must be positive; got {self.short}")
        if self.long <= 0:
            raise ValueError(f"long_chunk must be positive; got {self.long}")
        if self.long_from < 0 or self.long_from % self.short:
            raise ValueError(
                f"long_from must be a non-negative multiple of kv_chunk ({self.short}); "
                f"got {self.long_from}"
            )

    @classmethod
    def uniform(cls, chunk: int) -> ChunkGrid:
        """Chunks of ``chunk`` keys everywhere."""
        return cls(chunk, chunk, chunk)

    @property
    def short_chunks(self) -> int:
        """How many short chunks there are (the index of the first long chunk)."""
        return self.long_from // self.short

    def check_tiles(self, block_n: int) -> None:
        """Raise ``ValueError`` unless both chunk lengths are multiples of the key tile."""
        for name, keys in (("kv_chunk", self.short), ("long_chunk", self.long)):
            if keys % block_n:
                raise ValueError(f"{name} must be a multiple of block_n ({block_n}); got {keys}")

    def chunk_of(self, pos: int) -> int:
        """The chunk of key position ``pos`` (``pos >= 0``)."""
        if pos < self.long_from:
            return pos // self.short
        return self.short_chunks + (pos - self.long_from) // self.long

    def chunk_start(self, c: int) -> int:
        """The first key position of chunk ``c >= 0`` (chunk ``c`` ends where ``c + 1`` starts)."""
        if c < self.short_chunks:
            return c * self.short
        return self.long_from + (c - self.short_chunks) * self.long

    def num_chunks(self, n_keys: int) -> int:
        """Chunks that keys ``[0, n_keys)`` touch (0 for no key)."""
        return self.chunk_of(n_keys - 1) + 1 if n_keys > 0 else 0

    def describe(self) -> str:
        """``"256-key chunks, 512 from key 4096"`` (``"256-key chunks"`` if uniform)."""
        text = f"{self.short}-key chunks"
        if self.long != self.short:
            text += f", {self.long} from key {self.long_from}"
        return text


@dataclass(frozen=True)
class AttnConfig:
    """Tiles and chunk grid of one attention call.

    Attributes:
        kv_chunk: keys per chunk up to ``long_from`` (a multiple of ``block_n``); the chunk is
            the unit of the split and merge.
        long_from: the position where chunks of ``long_chunk`` keys start (a multiple of
            ``kv_chunk``).
        long_chunk: keys per chunk from ``long_from`` on (a multiple of ``block_n``).
        block_n: keys per inner tile (one ``tl.dot`` for scores, one for the value sum).
        block_m: query rows per program: ``block_q`` tokens times ``group_pad`` heads.
        group_pad: query heads per KV head, rounded up to a power of two.
        head_pad: head size rounded up to a power of two (at least 16).
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key loop.
        prefetch_table: paged keys load the next tile's block-table entries one step ahead
            (speed only, same bits; paged prefill launches use it).
        max_registers: a cap on registers per thread (Triton's ``maxnreg``; ``None``: the
            compiler's choice), so that more programs share a compute unit (speed only, same
            bits: it changes register allocation, not the arithmetic).
    """

    kv_chunk: int
    long_from: int
    long_chunk: int
    block_n: int
    block_m: int
    group_pad: int
    head_pad: int
    num_warps: int
    num_stages: int
    prefetch_table: bool = False
    max_registers: int | None = None

    def __post_init__(self) -> None:
        self.grid.check_tiles(self.block_n)

    @functools.cached_property
    def grid(self) -> ChunkGrid:
        """The chunk grid (validated: see :class:`ChunkGrid`), built once per config."""
        return ChunkGrid(self.kv_chunk, self.long_from, self.long_chunk)

    @property
    def block_q(self) -> int:
        """Query tokens per program."""
        return self.block_m // self.group_pad


def chunk_grid(head_size: int, dtype: torch.dtype, interpreter: bool) -> ChunkGrid:
    """The chunk grid: a constant per device family (``head_size``/``dtype`` kept for tuning).

    Args:
        head_size: the head dimension.
        dtype: the query/cache dtype.
        interpreter: whether Triton's CPU interpreter runs the kernels.
    """
    del head_size, dtype  # one grid fits every supported head size today
    if interpreter:
        return ChunkGrid(INTERP_KV_CHUNK, INTERP_LONG_FROM, INTERP_LONG_CHUNK)
    return ChunkGrid(GPU_KV_CHUNK, GPU_LONG_FROM, GPU_LONG_CHUNK)


def kv_chunk_size(head_size: int, dtype: torch.dtype, interpreter: bool) -> int:
    """Keys per chunk before the switch to long chunks (:func:`chunk_grid` has the whole grid).

    Args:
        head_size: the head dimension.
        dtype: the query/cache dtype.
        interpreter: whether Triton's CPU interpreter runs the kernels.
    """
    return chunk_grid(head_size, dtype, interpreter).short


@functools.cache
def attention_config(
    head_size: int, dtype: torch.dtype, group: int, interpreter: bool
) -> AttnConfig:
    """The tiles for ``(head_size, dtype, group)`` on a device family; never batch-dependent.

    Cached: every attention call of every layer asks (host cost per call).

    Args:
        head_size: the head dimension (at most :data:`MAX_HEAD_SIZE`).
        dtype: the query/cache dtype, one of :data:`SUPPORTED_DTYPES`.
        group: query heads per KV head (GQA group size).
        interpreter: whether Triton's CPU interpreter runs the kernels.
    """
    group_pad = next_pow2(group)
    head_pad = max(MIN_DOT, next_pow2(head_size))
    num_stages = 2
    if interpreter:
        block_n, base_m, num_warps = INTERP_BLOCK_N, 16, 4
    elif dtype == torch.float32:
        # fp32 operands take the exact FMA dot (no tensor cores): small tiles keep it in registers.
        block_n, base_m, num_warps = 16, 16, 4
    else:
        # Sized on sm90 (ptxas: no spills): 64 x 64 tiles on 4 warps up to head 128 (decode
        # 1.3-1.6x faster than on 8 warps on an H200, same bits); head 256 takes half the key tile
        # and 8 warps so that the [64, head] accumulators stay in registers.
        block_n = 64 if head_pad <= 128 else 32  # part of the chain: never tie it to the family
        base_m, num_warps = 64, (4 if head_pad <= 128 else 8)
        if head_pad <= 128:
            # One stage (48 KiB of shared memory instead of 80): decode 1.02-1.07x faster on an
            # H100 at batch 8-256 (tune_attention_decode256_h100.json; same bits). Two stages
            # never overlapped a tile's loads with its math anyway (cp.async.wait_group 0).
            num_stages = DECODE_STAGES
    block_m = max(base_m, group_pad)
    grid = chunk_grid(head_size, dtype, interpreter)
    return AttnConfig(
        kv_chunk=grid.short,
        long_from=grid.long_from,
        long_chunk=grid.long,
        block_n=block_n,
        block_m=block_m,
        group_pad=group_pad,
        head_pad=head_pad,
        num_warps=num_warps,
        num_stages=num_stages,
    )


def has_tile_family(head_size: int, dtype: torch.dtype, interpreter: bool) -> bool:
    """Whether launches may pick among same-bits tiles (see the module docstring)."""
    head_pad = max(MIN_DOT, next_pow2(head_size))
    return (
        not interpreter
        and dtype in (torch.bfloat16, torch.float16)
        and (head_pad <= FAMILY_MAX_HEAD)
    )


@functools.cache
def launch_config(
    head_size: int, dtype: torch.dtype, group: int, interpreter: bool, *, prefill: bool,
    paged: bool,
) -> AttnConfig:  # fmt: skip
    """The tiles of one launch: :func:`attention_config`'s, or the prefill tiles of its family.

    Prefill tiles (128 rows, 8 warps) ran 1.2-1.3x faster than the 64-row tiles on 4 warps on
    long causal prefills (H200, ``bench/tune_attention.py``), which in turn run decode fastest.
    Both pipeline three stages deep; paged keys (a gather through the block table) also load the
    next tile's block-table entries one step ahead (``prefetch_table``; decode tiles gained
    nothing from it, ``tune_attention_prefetch_h100.json``). Since the fused launch walks all
    chunks in one key loop, three stages beat two on a 4k-token chunk over a 16k-token paged
    cache on an H100 (3.65 against 3.85-3.95 ms, ``tune_attention_flat_loop_after*_h100.json``);
    with a loop per chunk they lost (4.0-4.1 ms).

    Args:
        head_size: the head dimension.
        dtype: the query/cache dtype.
        group: query heads per KV head.
        interpreter: whether Triton's CPU interpreter runs the kernels.
        prefill: whether the launch has many queries per sequence.
        paged: whether the keys come from a paged cache.
    """
    cfg = attention_config(head_size, dtype, group, interpreter)
    if not prefill or not has_tile_family(head_size, dtype, interpreter):
        return cfg
    return dataclasses.replace(
        cfg, block_m=max(PREFILL_BLOCK_M, cfg.group_pad), num_warps=8,
        num_stages=3, prefetch_table=paged,
    )  # fmt: skip


@functools.cache
def split_config(cfg: AttnConfig, arch: str) -> AttnConfig:
    """The tiles of a split launch: ``cfg`` with the register cap measured faster for it.

    A split decode program holds one ``[64, head]`` accumulator (a fused one holds two), so
    ptxas gives it about 200 registers: two programs per SM. Capped at 168 (three per SM) it
    spills 24-32 bytes a thread with Qwen3-8B's GQA group of 4 and ran 1.14x faster at 8 x 32k,
    1.05x at 1 x 32k and 1.00-1.05x at 8 x 8k on an H200, with the same bits
    (``tune_attention_split_regs_run{1,2}_h200.json``). Other groups spill 40-128 bytes under the
    same cap and were not timed, so they keep the compiler's choice; so do prefill tiles and
    every other device family (``maxnreg`` is a CUDA option). Speed only: a cap changes
    register allocation, not the arithmetic.

    Args:
        cfg: the launch's tiles (:func:`launch_config`).
        arch: :func:`bi_triton_ascend._platform.arch` of the launch's device.
    """
    decode_tiles = cfg.block_m == 64 and cfg.num_warps == 4 and cfg.head_pad <= FAMILY_MAX_HEAD
    cap = SPLIT_MAX_REGISTERS_SM90.get(cfg.group_pad)
    if arch != "sm90" or not decode_tiles or cap is None or cfg.max_registers is not None:
        return cfg
    return dataclasses.replace(cfg, max_registers=cap)
