# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""``softmax`` and ``log_softmax`` along any dimension: fp32 math, any output dtype.

Outputs are in the input dtype unless ``dtype`` asks for another (like torch).

Batch-invariant: every reduction is confined to one row and shaped by the row length only.
The input's dtype never changes the bits: every kernel reads its row in groups of
:data:`VEC` elements per thread whatever the element size (``tl.max_contiguous`` pins the load
layout that fp32 gets anyway), so the reductions run in the same tree for a bf16 row and for the
same row upcast to fp32. A caller may therefore pass bf16 logits with ``dtype=torch.float32``
instead of materializing ``logits.float()`` first, and get the bits of the upcast call (vLLM's
token logprobs skip that copy; the trainer may keep it).

Rows up to :data:`ONE_PASS_MAX` long are held by one program (one read, one write). Longer rows
(vocabularies: 151936) are cut into fixed chunks of :data:`CHUNK` elements: a first kernel
writes each chunk's max and sum of ``exp(x - max)``; a second combines a row's chunk statistics
in a fixed tree (shaped by the chunk count) and writes its chunk. A single row is thus spread
over many programs (decode-time logprobs) while keeping the same bits at any batch size.
:mod:`.token_logprobs` reuses the chunk statistics and their combine (:func:`chunk_stats`,
:func:`combine_chunk_stats`) to reach the same bits at a few entries per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from ir_dispatch.layout import layout_key

from .. import _platform
from .._checks import check_float, check_out_dtype, check_tensor, normalize_dim
from .._launch_cache import Launcher, launch_kernel
from ._plans import OneLaunchPlan, PlanTable

ONE_PASS_MAX = 8192
CHUNK = 4096
# Warps of the chunked kernels; the statistics combine's tree depends on it (and on BLOCK_C).
CHUNK_WARPS = 8
# Elements per thread and load: fp32's 16-byte vector, imposed on every dtype.
VEC = tl.constexpr(4)


@triton.jit
def _softmax_row_kernel(
    x_ptr, out_ptr, M, L, stride_xm, stride_xl, stride_om, num_programs,
    LOG: tl.constexpr, ROUND_TO: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One row per program iteration, the whole row in registers."""
    pid = tl.program_id(0)
    offs = tl.max_contiguous(tl.arange(0, BLOCK), VEC)
    mask = offs < L
    for row in range(pid, M, num_programs):
        row64 = tl.cast(row, tl.int64)
        x = tl.load(x_ptr + row64 * stride_xm + offs * stride_xl, mask=mask, other=-float("inf"))
        x = x.to(ROUND_TO).to(tl.float32)
        shifted = x - tl.max(x, axis=0)
        e = tl.exp(shifted)
        total = tl.sum(e, axis=0)
        y = shifted - tl.log(total) if LOG else e / total
        tl.store(out_ptr + row64 * stride_om + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chunk_stats_kernel(
    x_ptr, stats_ptr, L, stride_xm, stride_xl, n_chunks,
    ROUND_TO: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Grid ``(M, n_chunks)``: max and sum of ``exp(x - max)`` of one chunk of one row."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = tl.max_contiguous(chunk * CHUNK + tl.arange(0, CHUNK), VEC)
    x = tl.load(
        x_ptr + tl.cast(row, tl.int64) * stride_xm + offs * stride_xl,
        mask=offs < L,
        other=-float("inf"),
    )
    x = x.to(ROUND_TO).to(tl.float32)
    m = tl.max(x, axis=0)
    s = tl.sum(tl.exp(x - m), axis=0)
    base = stats_ptr + (tl.cast(row, tl.int64) * n_chunks + chunk) * 2
    tl.store(base, m)
    tl.store(base + 1, s)


@triton.jit
def combine_chunk_stats(stats_ptr, row64, n_chunks, BLOCK_C: tl.constexpr):
    """A row's max and sum of ``exp(x - max)`` from its chunk statistics, in a fixed tree.

    Shared by every kernel that needs a long row's statistics (``_chunk_write_kernel``, token
    logprobs): with the same ``BLOCK_C`` and ``num_warps`` they reduce in the same tree, so
    they agree to the bit.
    """
    c = tl.arange(0, BLOCK_C)
    c_ok = c < n_chunks
    ms = tl.load(stats_ptr + (row64 * n_chunks + c) * 2, mask=c_ok, other=-float("inf"))
    ss = tl.load(stats_ptr + (row64 * n_chunks + c) * 2 + 1, mask=c_ok, other=0.0)
    row_max = tl.max(ms, axis=0)
    # A chunk whose max is -inf has sum 0 (or NaN from inf - inf); keep it out of the total.
    scaled = tl.where(ms == -float("inf"), 0.0, ss * tl.exp(ms - row_max))
    total = tl.sum(scaled, axis=0)
    return row_max, total


@triton.jit
def _chunk_write_kernel(
    x_ptr, stats_ptr, out_ptr, L, stride_xm, stride_xl, stride_om, n_chunks,
    LOG: tl.constexpr, ROUND_TO: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grid ``(M, n_chunks)``: combine the row's chunk statistics, write one chunk."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    row64 = tl.cast(row, tl.int64)
    row_max, total = combine_chunk_stats(stats_ptr, row64, n_chunks, BLOCK_C)
    offs = tl.max_contiguous(chunk * CHUNK + tl.arange(0, CHUNK), VEC)
    mask = offs < L
    x = tl.load(x_ptr + row64 * stride_xm + offs * stride_xl, mask=mask, other=-float("inf"))
    shifted = x.to(ROUND_TO).to(tl.float32) - row_max
    y = shifted - tl.log(total) if LOG else tl.exp(shifted) / total
    tl.store(out_ptr + row64 * stride_om + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def rounding_dtype(x_dtype: torch.dtype, dtype: torch.dtype | None) -> tl.dtype:
    """The dtype the input is rounded through: torch casts it to ``dtype`` before computing."""
    if dtype is None or dtype.itemsize >= x_dtype.itemsize:
        return _TL[x_dtype]
    return _TL[dtype]


@dataclass(frozen=True)
class _RowPlan(OneLaunchPlan):
    """A one-pass softmax launch for one input layout: replayed with a new call's pointers."""

    kernel = _softmax_row_kernel

    alloc_shape: torch.Size  # the output as allocated (reduced dimension last)
    out_dtype: torch.dtype
    dim: int
    zero_dim: bool


# One-pass launches by (op, input layout, dim, dtype), kept when the kernel read the input in
# place: at decode sizes (attention rows of a few hundred keys) the argument handling costs
# more host time than the kernel. Bounded.
_plans: PlanTable[_RowPlan] = PlanTable(1024)


def _replay(plan: _RowPlan, x: torch.Tensor) -> torch.Tensor:
    """``plan``'s launch on ``x`` (the layout it was made for)."""
    out = torch.empty(plan.alloc_shape, dtype=plan.out_dtype, device=x.device)
    plan.launch(x, out)
    if plan.zero_dim:
        return out.squeeze(0)
    return out if plan.dim == len(plan.alloc_shape) - 1 else out.movedim(-1, plan.dim)


def _prepared(op: str, x: torch.Tensor, dim: int, dtype: torch.dtype | None) -> Any:
    plan = _plans.find(layout_key(op, x, dim, dtype))
    if plan is None:
        return None
    return lambda x, dim, dtype=None: _replay(plan, x)


def prepare_softmax(
    x: torch.Tensor, dim: int, dtype: torch.dtype | None = None
) -> Callable[..., torch.Tensor] | None:
    """ir-dispatch's ``prepare`` hook: the launch plan of this layout, if one was stored."""
    return _prepared("softmax", x, dim, dtype)  # type: ignore[no-any-return]


def prepare_log_softmax(
    x: torch.Tensor, dim: int, dtype: torch.dtype | None = None
) -> Callable[..., torch.Tensor] | None:
    """ir-dispatch's ``prepare`` hook: the launch plan of this layout, if one was stored."""
    return _prepared("log_softmax", x, dim, dtype)  # type: ignore[no-any-return]


def _softmax_impl(
    op: str, x: torch.Tensor, dim: int, dtype: torch.dtype | None, log: bool
) -> torch.Tensor:
    key = layout_key(op, x, dim, dtype)
    plan = _plans.find(key)
    if plan is not None:
        return _replay(plan, x)
    check_tensor(op, "x", x)
    check_float(op, "x", x)
    rows = softmax_rows(op, x, dim, dtype)
    if rows.x2 is not None:
        one_pass = _launch(rows.x2, rows.out2, log, rows.round_to)
        if one_pass is not None and rows.x2.data_ptr() == x.data_ptr():
            grid, ints, options = one_pass
            plan = _RowPlan(
                grid, ints, options, rows.out.shape, rows.out.dtype, rows.dim, x.dim() == 0
            )
            _plans.keep(key, plan)
    return rows.result()


class SoftmaxRows(NamedTuple):
    """What a softmax normalizes, laid out for its kernels.

    ``x2``: ``x`` with ``dim`` moved last as ``[R, L]`` (``None`` when empty); the output and
    its ``[R, L]`` view; the dtype each element is rounded to; the normalized ``dim``.
    """

    x2: torch.Tensor | None
    out: torch.Tensor
    out2: torch.Tensor
    round_to: tl.dtype
    dim: int
    scalar: bool

    def result(self) -> torch.Tensor:
        """``out`` with ``dim`` back in place (a 0-d input gives a 0-d result)."""
        result = self.out.movedim(-1, self.dim)
        return result.squeeze(0) if self.scalar else result


def softmax_rows(op: str, x: torch.Tensor, dim: int, dtype: torch.dtype | None) -> SoftmaxRows:
    """The rows a softmax normalizes (shared by the ops and their ``torch.compile`` lowering)."""
    out_dtype = check_out_dtype(op, dtype) or x.dtype
    d = normalize_dim(op, dim, x.dim())
    xt = x.unsqueeze(0) if x.dim() == 0 else x
    moved = xt.movedim(d, -1)
    out = torch.empty(moved.shape, dtype=out_dtype, device=x.device)
    length = moved.shape[-1]
    rows = out.numel() // length if length else 0
    x2 = moved.reshape(rows, length) if out.numel() > 0 else None  # a view if it can
    out2 = out.view(rows, length)
    return SoftmaxRows(x2, out, out2, rounding_dtype(x.dtype, dtype), d, x.dim() == 0)


def _launch(
    x2: torch.Tensor,
    out2: torch.Tensor,
    log: bool,
    round_to: tl.dtype,
    launch: Launcher = launch_kernel,
) -> tuple[tuple[int], tuple[int, ...], dict[str, Any]] | None:
    """Launch the softmax of ``x2``'s rows into ``out2`` through ``launch``.

    The lowering passes a ``launch`` that traces. Returns the one-pass launch's grid,
    integer arguments and options; ``None`` when the rows took the chunked path.
    """
    rows, length = x2.shape
    if length <= ONE_PASS_MAX:
        block = max(16, triton.next_power_of_2(length))
        programs = min(rows, _platform.row_programs(x2.device, rows))
        grid = (programs,)
        ints = (rows, length, *x2.stride(), out2.stride(0), programs)
        options = {"LOG": log, "ROUND_TO": round_to, "BLOCK": block,
                   "num_warps": min(16, max(1, block // 512))}  # fmt: skip
        launch(_softmax_row_kernel, grid, x2, out2, *ints, **options)
        return grid, ints, options
    stats = chunk_stats(x2, round_to, launch)
    n_chunks = stats.shape[1]
    launch(
        _chunk_write_kernel, (rows, n_chunks),
        x2, stats, out2, length, *x2.stride(), out2.stride(0), n_chunks,
        LOG=log, ROUND_TO=round_to, CHUNK=CHUNK, BLOCK_C=block_c(n_chunks), num_warps=CHUNK_WARPS,
    )  # fmt: skip
    return None


def block_c(n_chunks: int) -> int:
    """``BLOCK_C`` of :func:`combine_chunk_stats`: a function of the chunk count only."""
    return max(16, triton.next_power_of_2(n_chunks))


def chunk_stats(
    x2: torch.Tensor, round_to: tl.dtype, launch: Launcher = launch_kernel
) -> torch.Tensor:
    """``[rows, n_chunks, 2]`` fp32 max and sum of ``exp(x - max)`` of each :data:`CHUNK`."""
    rows, length = x2.shape
    n_chunks = triton.cdiv(length, CHUNK)
    stats = torch.empty((rows, n_chunks, 2), dtype=torch.float32, device=x2.device)
    launch(
        _chunk_stats_kernel, (rows, n_chunks),
        x2, stats, length, *x2.stride(), n_chunks,
        ROUND_TO=round_to, CHUNK=CHUNK, num_warps=CHUNK_WARPS,
    )  # fmt: skip
    return stats


def softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.softmax(x, dim, dtype=dtype)``; any strides, fp32 math.

    Args:
        x: bf16/fp16/fp32, any shape.
        dim: the dimension to normalize.
        dtype: output dtype (the input is rounded to it first when it is narrower, like torch).
    """
    return _softmax_impl("softmax", x, dim, dtype, log=False)


def log_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.log_softmax(x, dim, dtype=dtype)``; same rules as :func:`softmax`."""
    return _softmax_impl("log_softmax", x, dim, dtype, log=True)
