"""``matmul`` (every rank combination torch accepts) and ``linear``, one GEMM launch each.

Leading dimensions fold into M, or become the batch of one batched launch (a broadcast operand
gets batch stride 0); inputs are copied only when their strides cannot be expressed as
``[Bt, rows, cols]`` (e.g. a broadcast over some, but not all, batch dimensions). Folding moves
rows, never the reduction: the chain is fixed by ``(N, K, dtype)``, so results are
batch-invariant and equal to :func:`~.mm.mm` on the same rows.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_dim, check_float, check_same, check_tensor
from .gemm import batched_gemm


def _as_batched(t: torch.Tensor) -> torch.Tensor:
    """``t [..., r, c]`` as ``[Bt, r, c]``: a view when strides allow, else a copy."""
    shape = (math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def _times_matrix(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``a [..., M, K] @ b [K, N] (+ bias [N])`` -> ``[..., M, N]`` in one launch."""
    lead, k, n = a.shape[:-1], a.shape[-1], b.shape[-1]
    bias3 = None if bias is None else bias.reshape(1, 1, -1).expand(1, 1, n)
    try:  # fold every leading dimension into M
        a3 = a.view(1, math.prod(lead), k)
    except RuntimeError:  # keep the batch dimensions, broadcast b over them
        a3 = _as_batched(a)
    b3 = b.unsqueeze(0).expand(a3.shape[0], k, n)
    if bias3 is not None:
        bias3 = bias3.expand(a3.shape[0], 1, n)
    return batched_gemm(a3, b3, bias3).view(*lead, n)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul``: 1-D operands, folded or broadcast batch dimensions, one launch.

    Args:
        a: ``[K]`` or ``[..., M, K]``.
        b: ``[K]`` or ``[..., K, N]``; batch dimensions broadcast against ``a``'s.

    Returns:
        The product in ``a.dtype`` with torch's output shape.
    """
    check_tensor("matmul", "a", a)
    check_tensor("matmul", "b", b)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(
            f"matmul: both arguments need at least 1 dimension; got {a.dim()}-D and {b.dim()}-D"
        )
    check_float("matmul", "a", a)
    check_same("matmul", "a", a, "b", b)
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied"
        )
    if b2.dim() == 2:
        out = _times_matrix(a2, b2)
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        a3 = _as_batched(a2.expand(*batch, m, k))
        b3 = _as_batched(b2.expand(*batch, k, n))
        out = batched_gemm(a3, b3).view(*batch, m, n)
    if b.dim() == 1:
        out = out.squeeze(-1)
    if a.dim() == 1:
        out = out.squeeze(-2 if b.dim() > 1 else -1)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with the bias added in fp32 before the cast.

    Args:
        x: ``[..., K]`` (any strides).
        weight: ``[N, K]``; read in place as ``[K, N]`` through its strides, never copied.
        bias: ``None``, ``[N]`` or a scalar tensor, in ``x.dtype``.
    """
    check_tensor("linear", "x", x)
    check_tensor("linear", "weight", weight)
    check_dim("linear", "weight", weight, 2)
    check_dim("linear", "x", x, tuple(range(1, 64)))
    check_float("linear", "x", x)
    check_same("linear", "x", x, "weight", weight)
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(
            f"linear: x's last dimension must equal weight's ({k}); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor("linear", "bias", bias)
        check_same("linear", "x", x, "bias", bias)
        if bias.dim() > 1 or bias.numel() not in (1, n):
            raise ValueError(f"linear: bias must have shape [{n}] or []; got {tuple(bias.shape)}")
    x2 = x.unsqueeze(0) if x.dim() == 1 else x
    out = _times_matrix(x2, weight.t(), bias)
    return out.squeeze(0) if x.dim() == 1 else out
