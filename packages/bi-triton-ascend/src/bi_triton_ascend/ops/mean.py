# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""``mean`` over any set of dimensions (``keepdim``, ``dtype``), fp32 accumulation.

Also the mean of the squares an RMSNorm takes (:func:`mean_of_squares`), with ``mean``'s sums.
The reduced dimensions are moved last, giving ``[R, L]`` rows (a view when strides allow).
Batch-invariant: each row is summed in a fixed order shaped by ``L`` only. Short rows are
summed whole, several to a program (:func:`row_tile`); rows longer than :data:`ONE_PASS_MAX`
are cut into chunks (their count and size a function of ``L``), summed by one program each and
combined in a fixed tree, so one long row (a global mean) is spread over the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

try:  # NVIDIA/AMD Triton; triton-ascend may lack it (its kernels never take ROUNDED)
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the Triton build
    libdevice = None

from ir_dispatch.layout import layout_key

from .. import _platform
from .._checks import check_float, check_out_dtype, check_tensor, normalize_dim
from .._launch_cache import Launcher, launch_kernel
from ._plans import OneLaunchPlan, PlanTable

ONE_PASS_MAX = 16384
BLOCK = 1024
"""The widest lane vector a row is summed in (shorter rows: their length's power of two)."""
TILE = 4096
"""Elements a one-pass program loads at once: short rows go ``TILE // block`` to a program."""
MAX_CHUNKS = 1024


@triton.jit
def _square(value, ROUNDED: tl.constexpr):
    """``value * value``; ``ROUNDED``: rounded on its own, never fused into a following add.

    A plain product feeding ``acc +=`` may be compiled into one FMA, which rounds once where
    ``x.pow(2).mean()`` rounds twice; libdevice's ``mul_rn`` (NVIDIA) is never contracted.
    The interpreter rounds every operation, so it takes the plain product.
    """
    if ROUNDED:  # noqa: SIM108 (a static branch: the other is never compiled)
        square = libdevice.mul_rn(value, value)
    else:
        square = value * value
    return square


def _rounded_squares(device: torch.device) -> bool:
    """Whether kernels on ``device`` must round each square explicitly (compiled for NVIDIA).

    Elsewhere the product is plain: the interpreter never fuses it, and the other back ends
    never run the lowering that must match ``pow(2).mean()``'s bits.
    """
    return (
        device.type == "cuda"
        and torch.version.cuda is not None
        and libdevice is not None
        and not _platform.interpreting()
    )


@triton.jit
def _lanes(BLOCK: tl.constexpr):
    """``tl.arange(0, BLOCK)``, known to Triton as contiguous in runs of 4 only.

    Triton lays a row's elements out over threads by how many contiguous elements one vector
    load takes (16 bytes: 4 fp32 or 8 bf16), and the sum's order follows that layout. Capping
    the runs at 4 gives a bf16 row the layout of an fp32 row, so :func:`mean_of_squares` of
    bf16 ``x`` sums in the order :func:`mean` sums ``x.float().pow(2)`` (on an H100 they
    differed at 128 and 1024 elements before).
    """
    lanes = tl.arange(0, BLOCK)
    return (lanes // 4) * 4 + lanes % 4


@triton.jit
def _row_sum_blocks(
    x_row, start, stop, stride_xl,
    ROUND_TO: tl.constexpr, BLOCK: tl.constexpr, SQUARE: tl.constexpr, ROUNDED: tl.constexpr,
):  # fmt: skip
    """fp32 sum of ``x_row[start:stop]`` (``SQUARE``: of its squares).

    Per-lane sums over BLOCK strides, then one tree.
    """
    offs = _lanes(BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(start, stop, BLOCK):
        idx = i0 + offs
        x = tl.load(x_row + idx * stride_xl, mask=idx < stop, other=0.0)
        value = x.to(ROUND_TO).to(tl.float32)
        if SQUARE:
            value = _square(value, ROUNDED)
        acc += value
    return tl.sum(acc, axis=0)


@triton.jit
def _mean_rows_kernel(
    x_ptr, out_ptr, R, L, stride_xr, stride_xl, num_programs,
    ROUND_TO: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
    SQUARE: tl.constexpr, ROUNDED: tl.constexpr,
):  # fmt: skip
    """Grid ``min(tiles, programs)``: the mean of whole rows, ``ROWS`` rows per tile.

    Each row is summed as a ``[BLOCK]`` lane vector over ``BLOCK`` strides, then one tree, the
    same for every row slot of a tile (``BLOCK`` and ``ROWS`` depend on ``L`` only). ``SQUARE``:
    the mean of the squares (each product rounded before it is added).
    """
    pid = tl.program_id(0)
    offs_l = _lanes(BLOCK)
    offs_r = tl.arange(0, ROWS)
    for tile in range(pid, tl.cdiv(R, ROWS), num_programs):
        rows = tile * ROWS + offs_r
        row_ok = rows < R
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xr
        acc = tl.zeros((ROWS, BLOCK), dtype=tl.float32)
        for i0 in range(0, L, BLOCK):
            idx = i0 + offs_l
            mask = row_ok[:, None] & (idx < L)[None, :]
            x = tl.load(x_rows + idx[None, :] * stride_xl, mask=mask, other=0.0)
            value = x.to(ROUND_TO).to(tl.float32)
            if SQUARE:
                value = _square(value, ROUNDED)
            acc += value
        total = tl.sum(acc, axis=1)
        tl.store(out_ptr + rows.to(tl.int64), (total / L).to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _chunk_sum_kernel(
    x_ptr, part_ptr, L, stride_xr, stride_xl, chunk_len, n_chunks,
    ROUND_TO: tl.constexpr, BLOCK: tl.constexpr, SQUARE: tl.constexpr, ROUNDED: tl.constexpr,
):  # fmt: skip
    """Grid ``(R, n_chunks)``: the fp32 sum of one chunk of one row (``SQUARE``: squares)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    row64 = tl.cast(row, tl.int64)
    start = chunk * chunk_len
    stop = tl.minimum(start + chunk_len, L)
    total = _row_sum_blocks(
        x_ptr + row64 * stride_xr, start, stop, stride_xl, ROUND_TO, BLOCK, SQUARE, ROUNDED
    )
    tl.store(part_ptr + row64 * n_chunks + chunk, total)


@triton.jit
def _chunk_mean_kernel(
    part_ptr, out_ptr, L, n_chunks, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grid ``(R,)``: one fixed tree over a row's chunk sums, divided by ``L``."""
    row64 = tl.cast(tl.program_id(0), tl.int64)
    c = tl.arange(0, BLOCK_C)
    parts = tl.load(part_ptr + row64 * n_chunks + c, mask=c < n_chunks, other=0.0)
    tl.store(out_ptr + row64, (tl.sum(parts, axis=0) / L).to(out_ptr.dtype.element_ty))


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _reduced_dims(x: torch.Tensor, dim: list[int] | None) -> list[int]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim()))
    if isinstance(dim, int) and not isinstance(dim, bool):
        dim = [dim]
    if not isinstance(dim, (list, tuple)):
        raise TypeError(f"mean: dim must be None, an int or a list of ints; got {dim!r}")
    dims = [normalize_dim("mean", d, x.dim()) for d in dim]
    if len(set(dims)) != len(dims):
        raise ValueError(f"mean: dim must not repeat a dimension; got {list(dim)}")
    return sorted(d for d in dims if x.dim() > 0)


def mean(
    x: torch.Tensor,
    dim: list[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``torch.mean(x, dim, keepdim, dtype=dtype)``; fp32 accumulation.

    Args:
        x: bf16/fp16/fp32, any shape and strides.
        dim: dimensions to reduce (``None`` or ``[]``: all).
        keepdim: keep reduced dimensions with size 1.
        dtype: output dtype; the input is rounded to it first when it is narrower, like torch.

    Returns:
        The mean in ``dtype`` (default ``x.dtype``); NaN for an empty reduction, like torch.
    """
    return _mean(x, dim, keepdim, dtype, square=False)


def mean_of_squares(
    x: torch.Tensor, dim: list[int] | None = None, keepdim: bool = False
) -> torch.Tensor:
    """``x.float().pow(2).mean(dim, keepdim)`` in one pass over ``x``: an RMSNorm's statistic.

    The same bits as :func:`mean` of ``x.float().pow(2)`` (each square rounded to fp32, then the
    same sums), without the fp32 squares written and read back: ir-dispatch's lowering pass
    puts it in compiled graphs where ``transformers`` writes that pattern.

    Args:
        x: bf16/fp16/fp32, any shape and strides.
        dim: dimensions to reduce (``None`` or ``[]``: all).
        keepdim: keep reduced dimensions with size 1.

    Returns:
        The fp32 mean of the squares.
    """
    return _mean(x, dim, keepdim, torch.float32, square=True)


def _mean(
    x: torch.Tensor,
    dim: list[int] | None,
    keepdim: bool,
    dtype: torch.dtype | None,
    square: bool,
) -> torch.Tensor:
    """:func:`mean` (``square``: :func:`mean_of_squares`): a stored plan, or the full path."""
    op = "mean_of_squares" if square else "mean"
    key = layout_key(op, x, dim, keepdim, dtype)
    plan = _plans.find(key)
    if plan is not None:
        return _replay(plan, x)
    check_tensor(op, "x", x)
    check_float(op, "x", x)
    rows = mean_rows(x, dim, keepdim, dtype)
    one_pass = None
    if rows.x2 is not None:
        one_pass = _launch(rows.x2, rows.out, rows.round_to, square=square)
        if rows.x2.data_ptr() != x.data_ptr():
            one_pass = None  # the kernel read a copy: a replay could not pass x itself
    if one_pass is not None:
        plan = _MeanPlan(*one_pass, rows.out.numel(), rows.out.dtype, tuple(rows.shape))
        _plans.keep(key, plan)
    return rows.out.view(rows.shape)


class MeanRows(NamedTuple):
    """What :func:`mean` reduces, laid out for its kernels.

    ``x2``: ``x``'s reduced dimensions moved last as ``[R, L]`` (``None`` when R = 0); ``out``:
    the ``[R]`` output; the dtype each element is rounded to; the result's shape.
    """

    x2: torch.Tensor | None
    out: torch.Tensor
    round_to: tl.dtype
    shape: list[int]


def mean_rows(
    x: torch.Tensor, dim: list[int] | None, keepdim: bool, dtype: torch.dtype | None
) -> MeanRows:
    """The rows :func:`mean` reduces (shared by the op and its ``torch.compile`` lowering)."""
    out_dtype = check_out_dtype("mean", dtype) or x.dtype
    red = _reduced_dims(x, dim)
    keep = [d for d in range(x.dim()) if d not in red]
    kept_shape = [x.shape[d] for d in keep]
    length = 1
    for d in red:
        length *= x.shape[d]
    rows = 1
    for s in kept_shape:
        rows *= s
    out = torch.empty(rows, dtype=out_dtype, device=x.device)
    x2 = x.permute(*keep, *red).reshape(rows, length) if rows > 0 else None  # a view if it can
    round_to = _TL[out_dtype if out_dtype.itemsize < x.dtype.itemsize else x.dtype]
    shape = [1 if d in red else x.shape[d] for d in range(x.dim())] if keepdim else kept_shape
    return MeanRows(x2, out, round_to, shape)


@dataclass(frozen=True)
class _MeanPlan(OneLaunchPlan):
    """A one-pass mean launch for one input layout: replayed with a new call's pointers."""

    kernel = _mean_rows_kernel

    rows: int
    out_dtype: torch.dtype
    shape: tuple[int, ...]


def _replay(plan: _MeanPlan, x: torch.Tensor) -> torch.Tensor:
    """``plan``'s launch on ``x`` (the layout it was made for)."""
    out = torch.empty(plan.shape, dtype=plan.out_dtype, device=x.device)  # rows, contiguous
    plan.launch(x, out)
    return out


def prepare_mean(
    x: torch.Tensor,
    dim: list[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> Callable[..., torch.Tensor] | None:
    """ir-dispatch's ``prepare`` hook: the launch plan of this layout, if one was stored."""
    return _prepared(layout_key("mean", x, dim, keepdim, dtype))


def prepare_mean_of_squares(
    x: torch.Tensor, dim: list[int] | None = None, keepdim: bool = False
) -> Callable[..., torch.Tensor] | None:
    """:func:`prepare_mean` for :func:`mean_of_squares` (the key :func:`_mean` stores under)."""
    return _prepared(layout_key("mean_of_squares", x, dim, keepdim, torch.float32))


def _prepared(key: Any) -> Callable[..., torch.Tensor] | None:
    """A replay of the plan stored under ``key``; ``None`` without one."""
    plan = _plans.find(key)
    if plan is None:
        return None
    return lambda x, *layout: _replay(plan, x)


# One-pass launches by input layout and arguments, kept when the kernel read the input in
# place: at decode sizes (RMSNorm's mean over a hidden state) the argument handling costs more
# host time than the kernel. Bounded.
_plans: PlanTable[_MeanPlan] = PlanTable(1024)


def row_tile(length: int) -> tuple[int, int]:
    """``(BLOCK, ROWS)`` of the one-pass kernel for rows of ``length``: a function of it only.

    A row is summed in lanes of its length's power of two (at most :data:`BLOCK`), and a
    program takes :data:`TILE` elements' worth of rows at once: 32 rows of a 128-wide head
    norm, where one row per program left most of each program idle.
    """
    block = min(BLOCK, max(16, triton.next_power_of_2(length)))
    return block, max(1, TILE // block)


def _launch(
    x2: torch.Tensor,
    out: torch.Tensor,
    round_to: tl.dtype,
    launch: Launcher = launch_kernel,
    square: bool = False,
) -> tuple[tuple[int], tuple[int, ...], dict[str, Any]] | None:
    """Launch the mean of ``x2``'s rows (``square``: of their squares) into ``out``.

    The lowering passes a ``launch`` that traces. Returns the one-pass launch's grid,
    integer arguments and options; ``None`` when the rows took the chunked path.
    """
    rows, length = x2.shape
    rounded = square and _rounded_squares(x2.device)
    if length <= ONE_PASS_MAX:
        block, tile_rows = row_tile(length)
        tiles = triton.cdiv(rows, tile_rows)
        programs = min(tiles, _platform.row_programs(x2.device, tiles))
        grid = (programs,)
        ints = (rows, length, *x2.stride(), programs)
        options = {
            "ROUND_TO": round_to, "BLOCK": block, "ROWS": tile_rows, "SQUARE": square,
            "ROUNDED": rounded, "num_warps": 4,
        }  # fmt: skip
        launch(_mean_rows_kernel, grid, x2, out, *ints, **options)
        return grid, ints, options
    chunk_len = BLOCK * triton.cdiv(triton.cdiv(length, BLOCK), MAX_CHUNKS)
    n_chunks = triton.cdiv(length, chunk_len)
    part = torch.empty((rows, n_chunks), dtype=torch.float32, device=x2.device)
    launch(
        _chunk_sum_kernel, (rows, n_chunks),
        x2, part, length, *x2.stride(), chunk_len, n_chunks,
        ROUND_TO=round_to, BLOCK=BLOCK, SQUARE=square, ROUNDED=rounded, num_warps=4,
    )  # fmt: skip
    launch(
        _chunk_mean_kernel, (rows,),
        part, out, length, n_chunks, BLOCK_C=max(16, triton.next_power_of_2(n_chunks)), num_warps=4,
    )  # fmt: skip
    return None
