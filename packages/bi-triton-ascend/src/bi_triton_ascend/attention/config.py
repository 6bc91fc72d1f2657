"""The attention's reduction chain (fixed KV chunks) and its tiles.

Batch invariance of attention is a property of the *chain* that builds one query row:

* Keys are cut into chunks of ``kv_chunk`` positions on the absolute grid ``[0, kv_chunk)``,
  ``[kv_chunk, 2 * kv_chunk)``, ... of their sequence. Each chunk is walked in tiles of
  ``block_n`` keys, also on the absolute grid, in increasing order, with an online softmax that
  starts from scratch at the chunk's start: that gives one partial ``(max, sum, accumulator)``
  per chunk.
* The partials of a row are folded in chunk order (0, 1, 2, ...) starting from the empty partial.

``kv_chunk`` and ``block_n`` depend on the head size, the dtype and the device family only: never
on the batch, the number of sequences, other sequences' lengths, or how many queries of the
sequence this call computes. So a query at position ``p`` walks ``[0, p]`` (or its window) in the
same tiles and chunks whether it is decoded alone, decoded in a batch of 64, prefilled in one
call or in chunks, or scored by the trainer's packed varlen call.

``block_m`` (query rows per program) is fixed per ``(head size, dtype, GQA group, device
family)`` too: decode and prefill run the same kernel with the same tile shapes, so the same
``tl.dot`` instructions build every score.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_HEAD_SIZE = 256

# Keys per chunk on GPUs/NPUs: 256 gives a 32k-token sequence 128 chunks, i.e. 1024 programs
# for 8 KV heads at batch 1 (an H100 has 132 SMs), while a chunk still spans several tiles.
GPU_KV_CHUNK = 256
# In Triton's CPU interpreter: small enough that tests with sequences of a few dozen tokens
# cross several chunks and tiles.
INTERP_KV_CHUNK = 32
INTERP_BLOCK_N = 16
MIN_DOT = 16  # smallest tl.dot extent


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class AttnConfig:
    """Tiles and chunk of one attention call.

    Attributes:
        kv_chunk: keys per chunk (a multiple of ``block_n``); the unit of the split and merge.
        block_n: keys per inner tile (one ``tl.dot`` for scores, one for the value sum).
        block_m: query rows per program: ``block_q`` tokens times ``group_pad`` heads.
        group_pad: query heads per KV head, rounded up to a power of two.
        head_pad: head size rounded up to a power of two (at least 16).
        num_warps: warps per program.
        num_stages: software-pipelining depth of the key loop.
    """

    kv_chunk: int
    block_n: int
    block_m: int
    group_pad: int
    head_pad: int
    num_warps: int
    num_stages: int

    @property
    def block_q(self) -> int:
        """Query tokens per program."""
        return self.block_m // self.group_pad


def kv_chunk_size(head_size: int, dtype: torch.dtype, interpreter: bool) -> int:
    """Keys per chunk: a constant per device family (``head_size``/``dtype`` kept for tuning).

    Args:
        head_size: the head dimension.
        dtype: the query/cache dtype.
        interpreter: whether Triton's CPU interpreter runs the kernels.
    """
    del head_size, dtype  # one chunk length fits every supported head size today
    return INTERP_KV_CHUNK if interpreter else GPU_KV_CHUNK


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
    if interpreter:
        block_n, base_m, num_warps = INTERP_BLOCK_N, 16, 4
    elif dtype == torch.float32:
        # fp32 operands take the exact FMA dot (no tensor cores): small tiles keep it in registers.
        block_n, base_m, num_warps = 16, 16, 4
    else:
        # Sized on sm90 (ptxas: no spills): 64 x 64 tiles, 8 warps from head 128, and half the key
        # tile for head 256 so that the [64, head] accumulators stay in registers.
        block_n = 64 if head_pad <= 128 else 32
        base_m, num_warps = 64, (4 if head_pad <= 64 else 8)
    block_m = max(base_m, group_pad)
    return AttnConfig(
        kv_chunk=kv_chunk_size(head_size, dtype, interpreter),
        block_n=block_n,
        block_m=block_m,
        group_pad=group_pad,
        head_pad=head_pad,
        num_warps=num_warps,
        num_stages=2,
    )
