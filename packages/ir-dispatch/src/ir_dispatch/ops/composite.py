"""Batch-invariant ops built from other ops: ``matmul``/``linear`` and ``token_logprobs``.

A provider that implements ``mm``, ``addmm`` and ``bmm`` gets every rank combination of
``matmul`` and ``linear`` for free: folding leading dimensions into M and broadcasting batch
dimensions only moves rows around, so the result is batch-invariant exactly when the products
underneath are. Likewise a provider with a ``log_softmax`` gets ``token_logprobs`` (its rows,
gathered), bitwise equal to what a trainer computes from that ``log_softmax``. Used only in
batch-invariant mode; the default mode keeps torch's own paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..mode import is_batch_invariant
from ..registry import Fn, IrOp
from .linalg import addmm, bmm, linear, matmul, mm
from .reduce import log_softmax, token_logprobs

COMPOSITE = "composite"
_NOTE = "reshapes onto mm/addmm/bmm: batch-invariant exactly when those are"
_LOGPROBS_NOTE = "fp32 log_softmax rows, gathered: batch-invariant exactly when log_softmax is"


def _only_in_batch_invariant_mode(*args: object, **kwargs: object) -> bool | str:
    return True if is_batch_invariant() else "only used in batch-invariant mode"


def _composite(op: IrOp, note: str) -> Callable[[Fn], Fn]:
    """Register the decorated function as ``op``'s composite: invariant, below providers."""
    return op.register_impl(
        COMPOSITE,
        batch_invariant=True,
        supports_args=_only_in_batch_invariant_mode,
        priority=5,
        note=note,
        layout_only=True,  # the mode only
    )


@_composite(matmul, _NOTE)
def matmul_composite(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(
            f"matmul: both arguments need at least 1 dimension, got {a.dim()}-D and {b.dim()}-D"
        )
    a_vec, b_vec = a.dim() == 1, b.dim() == 1
    a2 = a.unsqueeze(0) if a_vec else a
    b2 = b.unsqueeze(-1) if b_vec else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied"
        )
    if b2.dim() == 2:
        out = mm.call_selected(a2.reshape(-1, a2.shape[-1]), b2).reshape(
            *a2.shape[:-1], b2.shape[-1]
        )
    else:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        a3 = a2.expand(*batch, m, k).reshape(-1, m, k)
        b3 = b2.expand(*batch, k, n).reshape(-1, k, n)
        out = bmm.call_selected(a3, b3).reshape(*batch, m, n)
    if b_vec:
        out = out.squeeze(-1)
    if a_vec:
        out = out.squeeze(-2 if not b_vec else -1)
    return out


@_composite(linear, _NOTE)
def linear_composite(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    x2 = x.reshape(-1, x.shape[-1])
    out = (
        mm.call_selected(x2, weight.t())
        if bias is None
        else addmm.call_selected(bias, x2, weight.t())
    )
    return out.reshape(*x.shape[:-1], weight.shape[0])


@_composite(token_logprobs, _LOGPROBS_NOTE)
def token_logprobs_composite(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The selected ``log_softmax``'s fp32 rows, gathered: the trainer's bits, on any platform."""
    rows = log_softmax.call_selected(logits, -1, torch.float32)
    return rows.gather(-1, token_ids.long())
