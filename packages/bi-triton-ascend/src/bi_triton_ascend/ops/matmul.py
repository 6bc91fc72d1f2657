"""``matmul`` (every rank combination torch accepts) and ``linear``, one GEMM launch each.

Leading dimensions fold into M, or become the batch of one batched launch (a broadcast operand
gets batch stride 0); inputs are copied only when their strides cannot be expressed as
``[Bt, rows, cols]`` (e.g. a broadcast over some, but not all, batch dimensions). Folding moves
rows, never the reduction: the chain is fixed by ``(N, K, dtype)``, so results are
batch-invariant and equal to :func:`~.mm.mm` on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._checks import check_dim, check_float, check_same, check_tensor
from ._plans import Operands, pair_operands, plan_key, prepare_hook, remember, replay
from .gemm import describe, execute


def _as_batched(t: torch.Tensor) -> torch.Tensor:
    """``t [..., r, c]`` as ``[Bt, r, c]``: a view when strides allow, else a copy."""
    return t.reshape(math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])


def _fold(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``a [..., M, K]``, ``b [K, N]``, ``bias [N]`` in the GEMM's 3-D layout.

    Views where strides allow; ``a`` is copied only when no view folds its batch dimensions.
    """
    lead, k, n = a.shape[:-1], a.shape[-1], b.shape[-1]
    bias3 = None if bias is None else bias.reshape(1, 1, -1).expand(1, 1, n)
    try:  # fold every leading dimension into M
        a3 = a.view(1, math.prod(lead), k)
    except (RuntimeError, ValueError):  # no such view (traced: ValueError); keep the batches
        a3 = _as_batched(a)
    b3 = b.unsqueeze(0).expand(a3.shape[0], k, n)
    if bias3 is not None:
        bias3 = bias3.expand(a3.shape[0], 1, n)
    return a3, b3, bias3


Finish = Callable[[torch.Tensor], torch.Tensor]


def matmul_operands(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Finish]:
    """``matmul``'s 3-D GEMM operands, and what turns the ``[Bt, M, N]`` product into its result.

    Shared by the eager op and its ``torch.compile`` lowering, so both launch the same GEMM.

    Raises:
        ValueError: ``a``'s last dimension differs from ``b``'s contracted one.
    """
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied"
        )
    n = b2.shape[-1]
    if b2.dim() == 2:
        a3, b3, _ = _fold(a2, b2, None)
        lead: tuple[int, ...] = tuple(a2.shape[:-1])
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        m, k = a2.shape[-2], a2.shape[-1]
        a3 = _as_batched(a2.expand(*batch, m, k))
        b3 = _as_batched(b2.expand(*batch, k, n))
        lead = (*batch, m)
    squeeze_n, squeeze_m = b.dim() == 1, a.dim() == 1

    def finish(out: torch.Tensor) -> torch.Tensor:
        out = out.view(*lead, n)
        if squeeze_n:
            out = out.squeeze(-1)
        if squeeze_m:
            out = out.squeeze(-2 if not squeeze_n else -1)
        return out

    return a3, b3, finish


def linear_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Finish]:
    """``linear``'s 3-D GEMM operands (``weight`` read in place as ``[K, N]``) and its finish."""
    x2 = x.unsqueeze(0) if x.dim() == 1 else x
    a3, b3, bias3 = _fold(x2, weight.t(), bias)
    shape = (*x2.shape[:-1], weight.shape[0])
    one_d = x.dim() == 1

    def finish(out: torch.Tensor) -> torch.Tensor:
        out = out.view(shape)
        return out.squeeze(0) if one_d else out

    return a3, b3, bias3, finish


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul``: 1-D operands, folded or broadcast batch dimensions, one launch.

    Args:
        a: ``[K]`` or ``[..., M, K]``.
        b: ``[K]`` or ``[..., K, N]``; batch dimensions broadcast against ``a``'s.

    Returns:
        The product in ``a.dtype`` with torch's output shape.
    """
    key = plan_key("matmul", a, b)
    replayed = replay(key, a, b)
    if replayed is not None:
        return replayed
    check_tensor("matmul", "a", a)
    check_tensor("matmul", "b", b)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(
            f"matmul: both arguments need at least 1 dimension; got {a.dim()}-D and {b.dim()}-D"
        )
    check_float("matmul", "a", a)
    check_same("matmul", "a", a, "b", b)
    a3, b3, finish = matmul_operands(a, b)
    launch = describe(a3, b3)
    out = finish(execute(launch, a3, b3, None))
    remember(key, launch, out, ((a, a3), (b, b3)))
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with the bias added in fp32 before the cast.

    Args:
        x: ``[..., K]`` (any strides).
        weight: ``[N, K]``; read in place as ``[K, N]`` through its strides, never copied.
        bias: ``None``, ``[N]`` or a scalar tensor, in ``x.dtype``.
    """
    key = plan_key("linear", x, weight, bias)
    replayed = replay(key, x, weight, bias)
    if replayed is not None:  # seen before: the same checks passed, the same launch
        return replayed
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
    a3, b3, bias3, finish = linear_operands(x, weight, bias)
    launch = describe(a3, b3, bias3)
    out = finish(execute(launch, a3, b3, bias3))
    remember(key, launch, out, ((x, a3), (weight, b3), (bias, bias3)))
    return out


def _linear_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> Operands:
    return x, weight, bias


# ir-dispatch's ``prepare`` hooks: the launch plan of a layout, if one was stored.
prepare_matmul = prepare_hook("matmul", matmul, pair_operands)
prepare_linear = prepare_hook("linear", linear, _linear_operands)
