"""GEMM launches remembered by argument layout, so repeated calls skip the host-side set-up.

A model calls ``linear``, ``matmul``, ``mm``, ``addmm`` and ``bmm`` with the same few argument
layouts at every step, and at decode sizes the argument checks, folding and tile selection cost
more host time than the kernel's GPU time (``benchmarks/host_cost.py``). Each op keys its
launch (:class:`~.gemm.GemmLaunch`) on the shapes, strides, dtypes and devices of its arguments
and the scalars that shape the launch; a later call with an equal key passed the same checks
and gets the same launch, replayed with its own tensors' data pointers.

A plan is kept only when the kernel read every argument in place (a view at the argument's own
data pointer, not a copy), and never while ``force_tiles`` is active; the chain switch of
tensor-parallel mode is part of the key. The table is bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ir_dispatch.layout import layout_key

from . import gemm_config
from .gemm import GemmLaunch, execute

Key = tuple[Any, ...] | None
P = TypeVar("P")
Operands = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class PlanTable(dict[tuple[Any, ...], P]):
    """A bounded table of launch plans by :func:`layout_key` (each op keeps one)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def find(self, key: Key) -> P | None:
        """The plan stored for ``key``; ``None`` without one (or for a ``None`` key)."""
        return None if key is None else self.get(key)

    def keep(self, key: Key, plan: P) -> None:
        """Store ``plan`` for ``key`` unless ``key`` is ``None`` or the table is full."""
        if key is not None and len(self) < self.limit:
            self[key] = plan


_plans: PlanTable[tuple[GemmLaunch, torch.Size]] = PlanTable(4096)


def plan_key(op: str, *args: Any) -> Key:
    """:func:`layout_key` of a GEMM op, with the chain switch; ``None`` under ``force_tiles``."""
    if gemm_config.tiles_forced():
        return None
    return layout_key(op, gemm_config.n_independent_chain(), *args)


def replay(
    key: Key, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The output of the plan stored for ``key``, run on these tensors; ``None`` without one."""
    plan = _plans.find(key)
    if plan is None:
        return None
    launch, shape = plan
    return execute(launch, a, b, bias).view(shape)


def prepared(
    op: str, full: Callable[..., Any], operands: Callable[..., Operands], *args: Any
) -> Callable[..., Any] | None:
    """What serves later calls of ``op`` with ``args``' layout: the stored plan, or ``None``.

    For ir-dispatch's ``prepare`` hook, which remembers it per layout and calls it with the op's
    own arguments; ``operands`` picks ``(a, b, bias)`` from them. If the chain switch or forced
    tiles changed since, the call goes through ``full``, the op itself.
    """
    plan = _plans.find(plan_key(op, *args))
    if plan is None:
        return None
    launch, shape = plan
    made_in = gemm_config.generation()

    def run(*call_args: Any) -> torch.Tensor:
        if gemm_config.generation() != made_in:
            return full(*call_args)  # type: ignore[no-any-return]
        a, b, bias = operands(*call_args)
        return execute(launch, a, b, bias).view(shape)

    return run


def remember(
    key: Key,
    launch: GemmLaunch,
    out: torch.Tensor,
    pairs: tuple[tuple[torch.Tensor | None, torch.Tensor | None], ...],
) -> None:
    """Store ``launch`` (and ``out``'s shape) for ``key`` if the kernel read in place.

    In place: each (argument, tensor launched) pair shares its data pointer.
    """
    if all(t is None or u is None or t.data_ptr() == u.data_ptr() for t, u in pairs):
        _plans.keep(key, (launch, out.shape))


def clear() -> None:
    """Forget every plan (tests; plans are otherwise valid for the process's life)."""
    _plans.clear()


def planned() -> int:
    """How many plans are stored."""
    return len(_plans)
