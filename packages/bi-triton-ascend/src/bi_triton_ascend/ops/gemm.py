# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""The batched GEMM core behind ``mm``, ``addmm``, ``bmm``, ``matmul`` and ``linear``.

``C[b] = alpha * (A[b] @ B[b]) + beta * bias`` for ``A [Bt, M, K]``, ``B [Bt, K, N]`` with any
strides (a batch stride of 0 broadcasts an operand), fp32 accumulation, one launch for all
batch entries. Two kernels share one accumulation chain (see :mod:`.gemm_config`):

* ``_gemm_split_kernel``: one program per (output tile, K segment). Each writes its fp32
  segment result; the last program of a tile to arrive (an atomic counter) adds the segments
  in segment order and writes the tile. Used for small M, where the N tiles alone leave most
  of the device idle.
* ``_gemm_persistent_kernel``: a grid of the platform's program count walking output tiles;
  each tile walks all segments in order. Used for large M.
* ``_gemm_tma_kernel``: one program per output tile of a one-segment chain, both operands
  loaded through TMA tensor descriptors (Hopper, mid-size M, 2-D operands that TMA can
  describe). The same ``BLOCK_K`` steps and ``tl.dot``: only how tiles reach shared memory
  changes, and tests check it gives the pointer kernels' bits.

All produce the same bits for a given ``(N, K, dtype)``, whatever M or the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

from .. import _platform
from .._launch_cache import PreparedLaunch, launch_kernel

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton-ascend 3.2 has no TMA descriptors (nor Hopper)
    TensorDescriptor = None  # type: ignore[assignment,misc]
from .gemm_config import Tiles, cdiv, chain_for, fit_shared_memory, select_tiles


@triton.jit
def _segment_acc(
    a_ptrs,
    b_ptrs,
    K,
    kb_lo,
    n_blocks,
    stride_ak,
    stride_bk,
    row_ok,
    MASK_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """fp32 sum over K-blocks ``kb_lo .. kb_lo + n_blocks - 1``, from zero, one ``tl.dot`` each.

    ``n_blocks`` is the same for every segment, so Triton can fuse this loop with the loop
    around it (``tl.range(flatten=True)`` needs inner bounds invariant to the outer loop).
    With ``MASK_M``, rows past M are masked rather than re-read: at M=1 a clamped tile would
    send BLOCK_M requests per program to the same activation row (an L2 hot spot).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs += kb_lo * BLOCK_K * stride_ak
    b_ptrs += kb_lo * BLOCK_K * stride_bk
    for j in range(0, n_blocks):
        kb = kb_lo + j
        if EVEN_K:
            if MASK_M:  # noqa: SIM108  (constexpr branches, one load each)
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kb * BLOCK_K
            a_mask = offs_k[None, :] < k_left
            if MASK_M:
                a_mask = a_mask & row_ok[:, None]
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def _epilogue(
    total,
    c_ptr,
    bias_ptr,
    offs_m,
    offs_n,
    M,
    N,
    stride_cm,
    stride_cn,
    stride_xm,
    stride_xn,
    alpha,
    beta,
    write,
    HAS_BIAS: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_BETA: tl.constexpr,
):
    """``alpha * total + beta * bias`` in fp32, cast to C's dtype, stored under the M/N mask.

    ``write`` (a scalar predicate) joins the mask instead of guarding the call: a branch around
    the stores would stop Triton from fusing the persistent kernel's loops.
    """
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N) & write
    if HAS_ALPHA:
        total = total * alpha
    if HAS_BIAS:
        bias = tl.load(
            bias_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        if HAS_BETA:
            bias = bias * beta
        total = total + bias
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_operands(
    a_ptr, b_ptr, batch, pid_m, pid_n, M, N,
    stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Row/column offsets of tile ``(pid_m, pid_n)`` and its first K-block's operand pointers.

    Rows/columns past the edge re-read valid ones (unmasked loads); their results are dropped.
    """
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    a_ptrs = (
        a_ptr + tl.cast(batch, tl.int64) * stride_ab
        + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    )  # fmt: skip
    b_ptrs = (
        b_ptr + tl.cast(batch, tl.int64) * stride_bb
        + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    )  # fmt: skip
    return offs_m, offs_n, a_ptrs, b_ptrs


@triton.jit
def _tile_coords(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """``(batch, pid_m, pid_n)`` of output tile ``tile`` in grouped order.

    Consecutive tiles walk ``GROUP_M`` row tiles down one column tile before moving right, so
    the programs that share a block of weight columns run together and all but the first read
    it from L2 (``GROUP_M = 1``: row-major order, every column tile once per row tile).
    """
    tiles = tiles_m * tiles_n
    batch = tile // tiles
    t = tile % tiles
    in_group = GROUP_M * tiles_n
    first_m = (t // in_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (t % in_group) % group_rows
    pid_n = (t % in_group) // group_rows
    return batch, pid_m, pid_n


@triton.jit
def _gemm_split_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, part_ptr, count_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    stride_xb, stride_xm, stride_xn,
    alpha, beta, seg_blocks, num_segs,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    PART_CACHE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Grid ``(batches * tiles, num_segs)``: one K segment of one output tile per program."""
    tile = tl.program_id(0)
    seg = tl.program_id(1)
    num_tiles = tl.num_programs(0)
    batch, pid_m, pid_n = _tile_coords(tile, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m, offs_n, a_ptrs, b_ptrs = _tile_operands(
        a_ptr, b_ptr, batch, pid_m, pid_n, M, N,
        stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
        BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    acc = _segment_acc(
        a_ptrs, b_ptrs, K, seg * seg_blocks, seg_blocks, stride_ak, stride_bk, offs_m < M,
        True, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, UPCAST, PRECISION,
    )  # fmt: skip
    c_base = c_ptr + tl.cast(batch, tl.int64) * stride_cb
    bias_base = bias_ptr + tl.cast(batch, tl.int64) * stride_xb
    if SPLIT:
        offs_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        row_ok = (offs_m < M)[:, None]
        tile_part = part_ptr + tl.cast(tile, tl.int64) * (BLOCK_M * BLOCK_N) + offs_tile
        seg_stride = tl.cast(num_tiles, tl.int64) * (BLOCK_M * BLOCK_N)
        tl.store(tile_part + seg * seg_stride, acc, mask=row_ok)
        # Every thread's partial is written before one thread publishes it (release); the last
        # program to arrive (acquire) sees all partials of the tile.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == num_segs - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, num_segs):
                total += tl.load(
                    tile_part + s * seg_stride, mask=row_ok, other=0.0, cache_modifier=PART_CACHE
                )
            _epilogue(
                total, c_base, bias_base, offs_m, offs_n, M, N, stride_cm, stride_cn,
                stride_xm, stride_xn, alpha, beta, True, HAS_BIAS, HAS_ALPHA, HAS_BETA,
            )  # fmt: skip
            tl.atomic_xchg(count_ptr + tile, 0)  # ready for the next launch (and graph replay)
    else:
        _epilogue(
            acc, c_base, bias_base, offs_m, offs_n, M, N, stride_cm, stride_cn,
            stride_xm, stride_xn, alpha, beta, True, HAS_BIAS, HAS_ALPHA, HAS_BETA,
        )  # fmt: skip


@triton.jit
def _persistent_item(
    it, total, pid, a_ptr, b_ptr, c_ptr, bias_ptr,
    M, N, K, tiles_m, tiles_n,
    stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn, stride_xb, stride_xm, stride_xn,
    alpha, beta, seg_blocks, num_segs, num_programs,
    SEGMENTED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr,
    HAS_BETA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Work item ``it`` of this program: segment ``it % num_segs`` of its tile ``it // num_segs``.

    Returns the running segment sum; the tile is written after its last segment.
    """
    seg = it % num_segs
    tile = pid + (it // num_segs) * num_programs
    batch, pid_m, pid_n = _tile_coords(tile, tiles_m, tiles_n, GROUP_M)
    offs_m, offs_n, a_ptrs, b_ptrs = _tile_operands(
        a_ptr, b_ptr, batch, pid_m, pid_n, M, N,
        stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
        BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    acc = _segment_acc(
        a_ptrs, b_ptrs, K, seg * seg_blocks, seg_blocks, stride_ak, stride_bk, offs_m < M,
        False, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, UPCAST, PRECISION,
    )  # fmt: skip
    if SEGMENTED:  # noqa: SIM108
        # The chain's segment sum starts from zero: ((0 + s0) + s1) + ...
        total = tl.where(seg == 0, 0.0, total) + acc
    else:
        total = acc
    _epilogue(
        total, c_ptr + tl.cast(batch, tl.int64) * stride_cb,
        bias_ptr + tl.cast(batch, tl.int64) * stride_xb, offs_m, offs_n, M, N,
        stride_cm, stride_cn, stride_xm, stride_xn, alpha, beta, seg == num_segs - 1,
        HAS_BIAS, HAS_ALPHA, HAS_BETA,
    )  # fmt: skip
    return total


@triton.jit
def _gemm_persistent_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,
    M, N, K, num_batches,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    stride_xb, stride_xm, stride_xn,
    alpha, beta, seg_blocks, num_segs, num_programs,
    FLATTEN: tl.constexpr, SEGMENTED: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Grid ``min(programs, tiles)``: each program walks its tiles, each tile its segments.

    The (tile, segment) items of a program form one loop; with ``FLATTEN`` (Triton >= 3.4 on
    CUDA) Triton fuses it with the K loop, so loads run ahead across segment and tile ends.
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    my_tiles = tl.cdiv(num_batches * tiles_m * tiles_n - pid, num_programs)
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLATTEN:
        for it in tl.range(0, my_tiles * num_segs, flatten=True):
            total = _persistent_item(
                it, total, pid, a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, tiles_m, tiles_n,
                stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                stride_cb, stride_cm, stride_cn, stride_xb, stride_xm, stride_xn, alpha, beta,
                seg_blocks, num_segs, num_programs, SEGMENTED, HAS_BIAS, HAS_ALPHA, HAS_BETA,
                EVEN_K, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
            )  # fmt: skip
    else:
        for it in range(0, my_tiles * num_segs):
            total = _persistent_item(
                it, total, pid, a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, tiles_m, tiles_n,
                stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn,
                stride_cb, stride_cm, stride_cn, stride_xb, stride_xm, stride_xn, alpha, beta,
                seg_blocks, num_segs, num_programs, SEGMENTED, HAS_BIAS, HAS_ALPHA, HAS_BETA,
                EVEN_K, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
            )  # fmt: skip


@triton.jit
def _gemm_tma_kernel(
    a_desc, b_desc, c_ptr, bias_ptr,
    M, N, K, stride_cm, stride_cn, stride_xm, stride_xn, alpha, beta,
    HAS_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_BETA: tl.constexpr,
    B_KMAJOR: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """One output tile per program; ``A [M, K]`` and ``B`` tiles arrive through TMA.

    ``B_KMAJOR``: ``b_desc`` describes ``B^T`` (``[N, K]``, a linear layer's weight), else
    ``B`` itself (``[K, N]``). TMA fills what lies past M, N or K with zeros, as the pointer
    kernels' masks do, so the K tail adds the same zero products.
    """
    _, pid_m, pid_n = _tile_coords(
        tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
        if B_KMAJOR:
            b = b_desc.load([pid_n * BLOCK_N, kb * BLOCK_K]).T
        else:
            b = b_desc.load([kb * BLOCK_K, pid_n * BLOCK_N])
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _epilogue(
        acc, c_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, stride_cn,
        stride_xm, stride_xn, alpha, beta, True, HAS_BIAS, HAS_ALPHA, HAS_BETA,
    )  # fmt: skip


TMA_ENV = "BI_TRITON_TMA"  # "0": never the TMA kernel (read at import; same bits either way)
_tma_enabled = os.environ.get(TMA_ENV, "1").strip().lower() not in ("0", "false")


def tma_layout(a: torch.Tensor, b: torch.Tensor) -> bool | None:
    """How TMA can load ``b`` of ``a [Bt, M, K] @ b [Bt, K, N]``, judged by shapes and strides.

    ``True``: as ``B^T`` (K contiguous, a linear layer's weight); ``False``: as ``B`` (N
    contiguous); ``None``: not at all (a batch, a dtype other than bf16/fp16, A's K not contiguous,
    or a row stride that is not a multiple of 16 bytes, which TMA requires). Pointer alignment
    is a property of each call's tensors: :class:`TmaLaunch` checks it per call.
    """
    if a.shape[0] != 1 or a.dtype not in (torch.bfloat16, torch.float16) or b.dtype != a.dtype:
        return None
    item = a.element_size()
    m, k = a.shape[1], a.shape[2]
    n = b.shape[2]
    if min(m, n, k) == 0 or a.stride(2) != 1 or (a.stride(1) * item) % 16 or k * item < 16:
        return None
    stride_bk, stride_bn = b.stride(1), b.stride(2)
    if stride_bk == 1 and n > 1 and (stride_bn * item) % 16 == 0:
        return True
    if stride_bn == 1 and (stride_bk * item) % 16 == 0 and n * item >= 16:
        return False
    return None


@dataclass(frozen=True)
class TmaLaunch:
    """The TMA kernel's launch for one layout: descriptors are built per call (new pointers).

    A call whose ``a`` or ``b`` does not start on 16 bytes (a view with an odd offset) returns
    ``False`` and runs the pointer kernel with the same tiles instead (same bits).
    """

    grid: tuple[int, ...]
    ints: tuple[Any, ...]  # every argument after the descriptors and pointers, in kernel order
    options: dict[str, Any]
    a_geometry: tuple[list[int], list[int], list[int]]  # shape, strides, block shape
    b_geometry: tuple[list[int], list[int], list[int]]

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: Any) -> bool:
        if (a.data_ptr() | b.data_ptr()) & 15:
            return False
        a_desc = TensorDescriptor(a, *self.a_geometry)
        b_desc = TensorDescriptor(b, *self.b_geometry)
        launch_kernel(_gemm_tma_kernel, self.grid, a_desc, b_desc, out, bias, *self.ints,
                      **self.options)  # fmt: skip
        return True


def _tma_launch(
    a: torch.Tensor,
    b: torch.Tensor,
    k_major: bool,
    tiles: Tiles,
    block_k: int,
    strides: tuple[int, ...],
    scalars: tuple[float, float],
    options: dict[str, Any],
) -> TmaLaunch:
    """The :class:`TmaLaunch` of :func:`describe`.

    ``strides``: C's then the bias's row and column strides; ``scalars``: alpha and beta;
    ``options``: the pointer launch's, whose tile and epilogue constexprs are shared.
    """
    m, k, n = a.shape[1], a.shape[2], b.shape[2]
    a_geometry = ([m, k], [a.stride(1), 1], [tiles.block_m, block_k])
    if k_major:
        b_geometry = ([n, k], [b.stride(2), 1], [tiles.block_n, block_k])
    else:
        b_geometry = ([k, n], [b.stride(1), 1], [block_k, tiles.block_n])
    keep = ("HAS_BIAS", "HAS_ALPHA", "HAS_BETA", "PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_K",
            "GROUP_M", "num_warps", "num_stages")  # fmt: skip
    tma_options = {name: options[name] for name in keep} | {"B_KMAJOR": k_major}
    grid = (cdiv(m, tiles.block_m) * cdiv(n, tiles.block_n),)
    ints = (m, n, k, *strides, *scalars)
    return TmaLaunch(grid, ints, tma_options, a_geometry, b_geometry)


# Split-K arrival counters, per (device, stream): zero between launches (the last program of a
# tile resets its counter). Buffers are never freed, since captured CUDA graphs may hold them.
_counters: dict[tuple[str, int, int], list[torch.Tensor]] = {}
_MIN_COUNTERS = 1 << 14


def _arrival_counters(device: torch.device, needed: int) -> torch.Tensor:
    key = _platform.stream_key(device)
    pool = _counters.setdefault(key, [])
    if not pool or pool[-1].numel() < needed:
        size = max(needed, _MIN_COUNTERS, 2 * pool[-1].numel() if pool else 0)
        pool.append(torch.zeros(size, dtype=torch.int32, device=device))
    return pool[-1]


@dataclass(frozen=True)
class GemmLaunch:
    """Everything one GEMM launch needs but its tensors: a function of shapes, strides, dtypes.

    :func:`describe` computes it; :func:`execute` runs it on tensors of those shapes and
    strides. Callers that see the same shapes again (``linear`` at every decode step) keep
    it and skip the tile selection and argument building (host time at decode sizes).
    """

    kernel: Any
    grid: tuple[int, ...]
    ints: tuple[Any, ...]  # every argument after the pointers, in kernel order
    options: dict[str, Any]  # constexprs and launch options
    out_shape: tuple[int, int, int]
    out_dtype: torch.dtype
    has_bias: bool
    split_kernel: bool  # the split kernel's two extra pointers (partials, counters)
    partials: int  # fp32 partial sums to allocate (0: none)
    tiles: int  # split-K arrival counters needed
    tma: TmaLaunch | None = None  # the TMA kernel, tried first (``kernel`` is its fallback)
    prepared: PreparedLaunch = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # The tensors change from call to call; the kernel, grid, ints and options do not.
        prepared = PreparedLaunch(self.kernel, self.grid, self.ints, self.options)
        object.__setattr__(self, "prepared", prepared)


def describe(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> GemmLaunch:
    """The launch of :func:`batched_gemm` for these arguments; nothing runs or is allocated.

    The same shapes, strides, dtypes, device and scalars give the same launch.
    """
    batches, m, k = a.shape
    n = b.shape[2]
    if out_dtype is not None and out_dtype not in (a.dtype, torch.float32):
        raise ValueError(
            f"batched_gemm: out_dtype must be None, {a.dtype} or float32, got {out_dtype}"
        )
    dtype = out_dtype or a.dtype
    out_strides = (m * n, n, 1)
    has_bias = bias is not None and beta != 0.0
    bias_strides = (
        bias.expand(batches, m, n).stride() if bias is not None and has_bias else out_strides
    )
    chain = chain_for(n, k, a.dtype)
    programs = _platform.num_programs(a.device)
    arch = _platform.arch(a.device)
    usable = arch == "sm90" and _tma_enabled and TensorDescriptor is not None
    k_major = tma_layout(a, b) if usable else None
    tiles = select_tiles(arch, m, n, chain, a.dtype, programs, k_major is not None)
    if dtype != a.dtype:
        tiles = fit_shared_memory(
            tiles, chain, a.element_size(), dtype.itemsize,
            _platform.shared_memory_limit(a.device),
        )  # fmt: skip
    strides = (*a.stride(), *b.stride(), *out_strides, *bias_strides)
    scalars = (float(alpha), float(beta), chain.seg_blocks, chain.num_segs)
    options: dict[str, Any] = {
        "HAS_BIAS": has_bias,
        "HAS_ALPHA": alpha != 1.0,
        "HAS_BETA": beta != 1.0,
        "EVEN_K": k % chain.block_k == 0,
        "UPCAST": _platform.upcast_dot(),
        "PRECISION": _platform.dot_precision(a.dtype),
        "BLOCK_M": tiles.block_m,
        "BLOCK_N": tiles.block_n,
        "BLOCK_K": chain.block_k,
        "GROUP_M": tiles.group_m,
        "num_warps": tiles.num_warps,
        "num_stages": tiles.num_stages,
    }
    n_tiles = batches * cdiv(m, tiles.block_m) * cdiv(n, tiles.block_n)
    if tiles.split:
        split = chain.num_segs > 1
        tma = None
        if tiles.tma and k_major is not None:
            tma = _tma_launch(
                a, b, k_major, tiles, chain.block_k, (n, 1, *bias_strides[1:]),
                (float(alpha), float(beta)), options,
            )  # fmt: skip
        options.update(SPLIT=split, PART_CACHE=_platform.partials_cache_modifier(a.device))
        return GemmLaunch(
            _gemm_split_kernel, (n_tiles, chain.num_segs), (m, n, k, *strides, *scalars),
            options, (batches, m, n), dtype, has_bias, True,
            chain.num_segs * n_tiles * tiles.block_m * tiles.block_n if split else 0,
            n_tiles if split else 0, tma,
        )  # fmt: skip
    programs = min(programs, n_tiles)
    options.update(FLATTEN=tiles.flatten, SEGMENTED=chain.num_segs > 1)
    return GemmLaunch(
        _gemm_persistent_kernel, (programs,), (m, n, k, batches, *strides, *scalars, programs),
        options, (batches, m, n), dtype, has_bias, False, 0, 0,
    )  # fmt: skip


def execute(
    launch: GemmLaunch,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``launch`` on ``a``, ``b`` and ``bias``; returns the ``[Bt, M, N]`` output.

    The tensors must have the shapes and strides ``launch`` was made for, or be other views of
    the same data pointers (only pointers reach the kernel: a bias that broadcasts needs no
    expanding here, its strides are in ``launch``). ``out``, when given, must be contiguous
    with ``launch``'s output shape (any view of it) and dtype; the result is written there.
    """
    if out is None:
        out = torch.empty(launch.out_shape, dtype=launch.out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    bias_arg = bias if launch.has_bias and bias is not None else out
    if launch.tma is not None and launch.tma(a, b, out, bias_arg):
        return out
    if launch.split_kernel:
        if launch.partials:
            part = torch.empty(launch.partials, dtype=torch.float32, device=a.device)
            counters = _arrival_counters(a.device, launch.tiles)
        else:
            part, counters = out, out  # never touched
        launch.prepared(a, b, out, bias_arg, part, counters)
    else:
        launch.prepared(a, b, out, bias_arg)
    return out


def batched_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``alpha * (a @ b) + beta * bias`` per batch entry, in one launch.

    Batch-invariant: every output element follows the chain of :func:`chain_for(N, K, dtype)`,
    whatever M, the batch count or the kernel chosen for them.

    Args:
        a: ``[Bt, M, K]``, any strides (batch stride 0 broadcasts).
        b: ``[Bt, K, N]``, same dtype and device, any strides.
        bias: ``None`` or a tensor that expands to ``[Bt, M, N]``; ignored when ``beta == 0``.
        alpha: scale of the product.
        beta: scale of ``bias``.
        out_dtype: the output dtype; ``None`` is ``a.dtype``. ``torch.float32`` returns the fp32
            accumulator itself (no rounding to ``a.dtype``), which the TP-invariant row-parallel
            layers need to add K segments in fp32. The chain does not depend on it.

    Returns:
        A new contiguous ``[Bt, M, N]`` tensor in ``out_dtype`` (default ``a.dtype``).
    """
    return execute(describe(a, b, bias, alpha, beta, out_dtype), a, b, bias)
