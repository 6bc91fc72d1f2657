"""``mm``, ``addmm`` and ``bmm``: thin wrappers over the batched GEMM (kernels in :mod:`.gemm`).

Batch-invariant: each output element follows the accumulation chain fixed by ``(N, K, dtype)``
(see :mod:`.gemm_config`), so a row gives the same bits alone or at any position of any batch.
"""

from __future__ import annotations

import torch

from .._checks import check_dim, check_float, check_same, check_tensor
from ._plans import Key, Operands, pair_operands, plan_key, prepare_hook, remember, replay
from .gemm import describe, execute


def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor, dims: int) -> None:
    check_tensor(op, "a", a)
    check_tensor(op, "b", b)
    check_dim(op, "a", a, dims)
    check_dim(op, "b", b, dims)
    check_float(op, "a", a)
    check_same(op, "a", a, "b", b)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"{op}: a's last dimension must equal b's second-to-last; got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``: ``a [M, K]``, ``b [K, N]`` (any strides) -> ``[M, N]`` in ``a.dtype``."""
    key = plan_key("mm", a, b)
    replayed = replay(key, a, b)
    if replayed is not None:
        return replayed
    _check_pair("mm", a, b, 2)
    return _run(key, a.unsqueeze(0), b.unsqueeze(0), None, 1.0, 1.0, (a, b, None))[0]


def addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)``, the sum in fp32 before the cast to ``a.dtype``.

    Args:
        bias: broadcastable to ``[M, N]`` (``[N]``, ``[1, N]``, ``[M, 1]``, ``[M, N]``, ``[]``);
            ignored when ``beta == 0`` (NaN and inf in it do not propagate, like torch).
        a: ``[M, K]``.
        b: ``[K, N]``.
        beta: scale of ``bias``.
        alpha: scale of the product.
    """
    key = plan_key("addmm", bias, a, b, beta, alpha)
    replayed = replay(key, a, b, bias)
    if replayed is not None:
        return replayed
    _check_pair("addmm", a, b, 2)
    check_tensor("addmm", "bias", bias)
    check_same("addmm", "a", a, "bias", bias)
    m, n = a.shape[0], b.shape[1]
    try:
        bias2 = bias.expand(m, n)
    except RuntimeError:
        raise ValueError(
            f"addmm: bias must broadcast to [M, N] = [{m}, {n}]; got shape {tuple(bias.shape)}"
        ) from None
    three_d = (a.unsqueeze(0), b.unsqueeze(0), bias2.unsqueeze(0))
    return _run(key, *three_d, alpha, beta, (a, b, bias))[0]


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched ``a [B, M, K] @ b [B, K, N]`` in one launch (any strides)."""
    key = plan_key("bmm", a, b)
    replayed = replay(key, a, b)
    if replayed is not None:
        return replayed
    _check_pair("bmm", a, b, 3)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"bmm: a and b must have the same batch size; got {a.shape[0]} and {b.shape[0]}"
        )
    return _run(key, a, b, None, 1.0, 1.0, (a, b, None))


def _run(
    key: Key,
    a3: torch.Tensor,
    b3: torch.Tensor,
    bias3: torch.Tensor | None,
    alpha: float,
    beta: float,
    args: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
) -> torch.Tensor:
    """The GEMM on the 3-D views, its launch remembered for ``key``.

    ``args`` are the op's own tensors, whose pointers a replay passes.
    """
    launch = describe(a3, b3, bias3, alpha, beta)
    out = execute(launch, a3, b3, bias3)
    result = out[0] if args[0].dim() == 2 else out
    remember(key, launch, result, ((args[0], a3), (args[1], b3), (args[2], bias3)))
    return out


def _addmm_operands(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> Operands:
    return a, b, bias


# ir-dispatch's ``prepare`` hooks: the launch plan of a layout, if one was stored.
prepare_mm = prepare_hook("mm", mm, pair_operands)
prepare_addmm = prepare_hook("addmm", addmm, _addmm_operands)
prepare_bmm = prepare_hook("bmm", bmm, pair_operands)
