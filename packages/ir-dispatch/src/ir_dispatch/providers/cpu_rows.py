"""Batch-invariant CPU row reductions: RMSNorm, softmax, log-softmax and mean.

Why ATen's reductions are batch-variant on CPU: a reduction with one output (one long row, e.g.
``mean`` over a 151936 vocab with ``M = 1``) is split across threads and the partial sums are
combined, while many rows are parallelised by row with each row summed serially; so a row's
summation order follows ``M`` and the thread count.

Why these are batch-invariant: sums are built only from element-wise additions in a tree fixed
by the row length ``L`` (:func:`tree_row_sum`): the row is zero-padded to a multiple of a
segment length ``S`` (a power of two, from ``L`` alone), each segment is summed by halving
(``x[:h] + x[h:]``, ``log2 S`` times), and the segment sums likewise after padding their count to
a power of two. An element-wise addition rounds each element on its own (IEEE addition is the
same in the vector body and the scalar tail, on any thread), so every row gets the same tree of
the same roundings whatever the batch. Row maxima use ``amax``, which is exact in any order.
``exp``/``log``/``rsqrt`` are element-wise too. Pairwise summation is also more accurate than
the serial sum (error ``O(log L)`` instead of ``O(L)`` ulps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Longest level-1 segment (a power of two). Fixed: changing it changes the bits.
SEGMENT = 1024


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _halve(x: torch.Tensor, overwrite: bool) -> torch.Tensor:
    """Sum a power-of-two last dimension by halving: ``x[..., :h] + x[..., h:]`` until one.

    With ``overwrite`` the halves are added in place (the two halves never overlap, and an
    in-place addition rounds exactly like an out-of-place one); otherwise only the first step
    allocates.
    """
    if x.shape[-1] > 1 and not overwrite:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x[..., :h].add_(x[..., h:])
        x = x[..., :h]
    return x[..., 0]


def tree_row_sum(x: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """Sum each row of ``x [rows, L]`` in a summation tree fixed by ``L`` only.

    The tree: zero-pad the row to whole segments of ``S = min(SEGMENT, next_pow2(L))``, halve
    each segment to its sum, zero-pad the segment sums to a power of two and halve them. Only the
    last, partial segment is actually copied for padding.

    Args:
        x: ``[rows, L]`` floating.
        overwrite: ``x`` is scratch that may be destroyed (saves the allocations).

    Returns:
        ``[rows]`` in ``x``'s dtype.
    """
    rows, length = x.shape
    if length == 0:
        return x.new_zeros(rows)
    seg = min(SEGMENT, _next_pow2(length))
    full, tail = divmod(length, seg)
    parts = []
    if full:
        parts.append(_halve(x[:, : full * seg].reshape(rows, full, seg), overwrite))
    if tail:
        last = x.new_zeros(rows, 1, seg)
        last[:, 0, :tail] = x[:, full * seg :]
        parts.append(_halve(last, True))
    partial = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    groups = partial.shape[1]
    if groups == 1:
        return partial[:, 0]
    return _halve(F.pad(partial, (0, _next_pow2(groups) - groups)), True)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor, got {str(t.dtype).removeprefix('torch.')}"
        )
    return t


def _check_dim(dim: int, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(f"dim must be in [{-rank}, {rank - 1}] for a {ndim}-D tensor, got {dim}")
    return dim % rank


def _along_rows(x: torch.Tensor, dim: int, dtype: torch.dtype | None, log: bool) -> torch.Tensor:
    """(log-)softmax of ``x`` along ``dim``, row by row in the compute dtype."""
    if dtype is not None and isinstance(x, torch.Tensor):
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype or None, got {dtype}")
        x = x.to(dtype)
    _check_float("x", x)
    d = _check_dim(dim, x.dim())
    out_dtype = x.dtype
    moved = x.unsqueeze(0) if x.dim() == 0 else x.movedim(d, -1)
    shape = moved.shape
    rows = moved.reshape(math.prod(shape[:-1]), shape[-1]).to(_compute_dtype(out_dtype))
    if rows.numel() == 0:
        result = rows.clone()  # never return a view of the input
    else:
        # In-place steps save allocations, but autograd records these ops when the kernel is
        # reached from a composite op (``softmax.int`` overridden at the CPU key, e.g. a
        # trainer's attention backward in a process where vLLM's plugin is loaded): then the
        # same arithmetic runs out of place, giving the same bits.
        tracked = torch.is_grad_enabled() and rows.requires_grad
        shifted = rows - rows.amax(dim=-1, keepdim=True)
        if log:
            total = tree_row_sum(torch.exp(shifted), overwrite=not tracked)
            log_total = torch.log(total).unsqueeze(-1)
            result = shifted - log_total if tracked else shifted.sub_(log_total)
        else:
            exps = torch.exp(shifted) if tracked else shifted.exp_()
            sums = tree_row_sum(exps).unsqueeze(-1)
            result = exps / sums if tracked else exps.div_(sums)
    result = result.to(out_dtype).reshape(shape)
    if x.dim() == 0:
        return result.reshape(())
    return result.movedim(-1, d).contiguous()


def softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Batch-invariant ``torch.softmax(x, dim, dtype=dtype)`` (fp32 math for 16-bit inputs)."""
    return _along_rows(x, dim, dtype, log=False)


def log_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Batch-invariant ``torch.log_softmax(x, dim, dtype=dtype)``: ``(x - max) - log(sum)``."""
    return _along_rows(x, dim, dtype, log=True)


def mean(
    x: torch.Tensor,
    dim: list[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Batch-invariant ``torch.mean(x, dim, keepdim, dtype=dtype)``.

    The reduced dimensions are moved last and flattened, summed by :func:`tree_row_sum` in fp32
    (fp64 for fp64) and divided by their size, so each output element's order depends only on
    the reduced sizes. ``dim=None`` or ``[]`` reduces everything, like ``torch.mean``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if dtype is not None:
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype or None, got {dtype}")
        x = x.to(dtype)
    _check_float("x", x)
    ndim = x.dim()
    if isinstance(dim, int):
        dim = [dim]
    if dim is None or len(dim) == 0:
        dims = list(range(ndim))
    else:
        dims = sorted({_check_dim(d, ndim) for d in dim})
        if len(dims) != len(dim):
            raise ValueError(f"dim must not repeat a dimension, got {list(dim)}")
    kept = [d for d in range(ndim) if d not in dims]
    kept_shape = [x.shape[d] for d in kept]
    count = math.prod(x.shape[d] for d in dims)
    rows = (
        x.permute([*kept, *dims]).reshape(math.prod(kept_shape), count).to(_compute_dtype(x.dtype))
    )
    result = (tree_row_sum(rows) / count).to(x.dtype).reshape(kept_shape)
    if keepdim:
        result = result.reshape([1 if d in dims else x.shape[d] for d in range(ndim)])
    return result


def mean_of_squares(
    x: torch.Tensor, dim: list[int] | None = None, keepdim: bool = False
) -> torch.Tensor:
    """Batch-invariant ``x.float().pow(2).mean(dim, keepdim)``: :func:`mean` of the squares.

    Exactly the pattern's bits in batch-invariant mode (ATen's ``pow``, then this ``mean``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_float("x", x)
    return mean(x.float().pow(2), dim, keepdim)


def _normalise(summed: torch.Tensor, epsilon: float, out_dtype: torch.dtype) -> torch.Tensor:
    """``summed / sqrt(mean(summed**2, -1) + epsilon)`` in fp32, cast to ``out_dtype``."""
    width = summed.shape[-1]
    rows = summed.reshape(math.prod(summed.shape[:-1]), width)
    variance = (tree_row_sum(rows * rows, overwrite=True) / width).unsqueeze(-1)
    return (rows * torch.rsqrt(variance + epsilon)).to(out_dtype).reshape(summed.shape)


def _check_norm(x: torch.Tensor, weight: torch.Tensor | None) -> None:
    _check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (the normalised one), got a scalar")
    if weight is not None and (
        not isinstance(weight, torch.Tensor) or weight.shape != x.shape[-1:]
    ):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be None or of shape ({x.shape[-1]},), got {got}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """Batch-invariant RMSNorm over the last dimension, in vLLM's order (fp32, cast, weight)."""
    _check_norm(x, weight)
    out = _normalise(x.to(torch.float32), epsilon, x.dtype)
    return out * weight if weight is not None else out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-invariant ``(rms_norm(x + residual), x + residual)``, the sum kept in fp32."""
    _check_norm(x, weight)
    _check_float("residual", residual)
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    summed = x.to(torch.float32) + residual.to(torch.float32)
    out = _normalise(summed, epsilon, x.dtype)
    return (out * weight if weight is not None else out), summed.to(x.dtype)
