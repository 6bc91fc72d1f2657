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
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from ir_dispatch.layout import layout_key

from .._launch_cache import PreparedLaunch
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


@dataclass(frozen=True)
class OneLaunchPlan:
    """A row op's single launch for one argument layout, replayed with a new call's tensors.

    Subclasses name their ``kernel`` and add what their replay needs (output shape, dtype).
    """

    kernel: ClassVar[Any]
    grid: tuple[int, ...]
    ints: tuple[Any, ...]  # the kernel's arguments after the tensors
    options: dict[str, Any]  # constexprs and launch options
    launch: PreparedLaunch = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        prepared = PreparedLaunch(self.kernel, self.grid, self.ints, self.options)
        object.__setattr__(self, "launch", prepared)


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


def pair_operands(a: torch.Tensor, b: torch.Tensor) -> Operands:
    """``(a, b, no bias)`` from the arguments of ``mm``, ``bmm`` and ``matmul``."""
    return a, b, None


class PreparedGemm:
    """A stored GEMM plan, as ir-dispatch's ``prepare`` hook hands it out.

    Called with the op's own arguments, optionally writing into ``out`` (aten's ``mm.out``,
    which Inductor's extern GEMMs call). ``operands`` picks ``(a, b, bias)`` from the op's
    arguments. If the chain switch or forced tiles changed since the plan was made, the call
    goes through ``full``, the op itself.
    """

    writes_out = True  # ir-dispatch passes ``out=`` (else it copies the result into it)

    def __init__(
        self,
        plan: tuple[GemmLaunch, torch.Size],
        full: Callable[..., Any],
        operands: Callable[..., Operands],
    ) -> None:
        self.launch, self.shape = plan
        self.full, self.operands = full, operands
        self.made_in = gemm_config.generation()

    def __call__(self, *args: Any, out: torch.Tensor | None = None) -> torch.Tensor:
        """The product as a new tensor, or written into ``out`` (and ``out`` returned).

        ``out`` is used when it has the result's shape and dtype, is contiguous and shares
        storage with no input.
        """
        if gemm_config.generation() != self.made_in:
            return self.full(*args)  # type: ignore[no-any-return]
        a, b, bias = self.operands(*args)
        if out is None or not self._fits(out, a, b, bias):
            # The result's own shape: contiguous like the kernel's [Bt, M, N], no view needed.
            out = torch.empty(self.shape, dtype=self.launch.out_dtype, device=a.device)
        return execute(self.launch, a, b, bias, out)

    def _fits(
        self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None
    ) -> bool:
        if out.shape != self.shape or out.dtype != self.launch.out_dtype:
            return False
        if out.device != a.device or not out.is_contiguous():
            return False
        storage = out.untyped_storage().data_ptr()
        return all(t is None or t.untyped_storage().data_ptr() != storage for t in (a, b, bias))


def prepare_hook(
    op: str, full: Callable[..., Any], operands: Callable[..., Operands]
) -> Callable[..., PreparedGemm | None]:
    """ir-dispatch's ``prepare`` hook for the GEMM op ``op``.

    Given a call's arguments, it returns the plan stored for their layout as a
    :class:`PreparedGemm`, or ``None`` without one.
    """

    def prepare(*args: Any) -> PreparedGemm | None:
        plan = _plans.find(plan_key(op, *args))
        return None if plan is None else PreparedGemm(plan, full, operands)

    return prepare


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
