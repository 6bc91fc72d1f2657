"""Recording aten ops and comparing a probe's slice of each output (for ``vllm-bi check``)."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ._check_report import NO_BATCH_DIM, OpDifference

# Ops whose outputs are not a function of their inputs: never compared.
_UNDEFINED = (
    "empty",
    "rand",
    "bernoulli",
    "normal",
    "uniform",
    "dropout",
    "multinomial",
    "exponential",
)


def _probe_slice(
    batched: torch.Tensor, alone_shape: tuple[int, ...], batch: int, row: int
) -> tuple[torch.Tensor | None, str]:
    """The probe's part of a batched op output, and a note on how it was found ('' = batch dim)."""
    shape = tuple(batched.shape)
    if shape == alone_shape:
        return batched, "" if batch == 1 else NO_BATCH_DIM
    if len(shape) != len(alone_shape):
        return None, f"rank {len(shape)} in a batch, {len(alone_shape)} alone"
    grown = [d for d in range(len(shape)) if shape[d] != alone_shape[d]]
    if len(grown) != 1:
        return None, f"the batch changes dimensions {grown}"
    d = grown[0]
    if shape[d] != batch * alone_shape[d]:
        return None, f"dimension {d} is {shape[d]} for batch {batch}, {alone_shape[d]} alone"
    return batched.narrow(d, row * alone_shape[d], alone_shape[d]), ""


def _comparable(t: torch.Tensor) -> torch.Tensor:
    if t.dtype in (torch.bool,):
        return t.to(torch.int64)
    if t.is_floating_point() and t.element_size() == 1:  # float8: compare and subtract in fp32
        return t.to(torch.float32)
    return t


def difference(got: torch.Tensor, want: torch.Tensor) -> tuple[int, float]:
    """(mismatched elements, max |diff|); NaN equals NaN, NaN against a number is ``inf``."""
    a, b = _comparable(got), _comparable(want)
    if a.is_floating_point() or a.is_complex():
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        diff = (
            a.to(torch.complex128 if a.is_complex() else torch.float64)
            - b.to(torch.complex128 if b.is_complex() else torch.float64)
        ).abs()
        diff = torch.where(same, torch.zeros_like(diff), torch.nan_to_num(diff, nan=math.inf))
    else:
        same = a == b
        diff = (a.to(torch.float64) - b.to(torch.float64)).abs()
    mismatched = int((~same).sum())
    return mismatched, float(diff.max()) if diff.numel() and mismatched else 0.0


@dataclass
class _AloneOp:
    name: str
    outputs: list[Any]  # cloned tensors, or plain values for non-tensor outputs


class OpRecorder(TorchDispatchMode):
    """Records every aten op's outputs (alone run) or compares them with a record (batched run).

    Runs with the mode popped inside ``__torch_dispatch__``, so its own cloning and comparing
    never shows up as ops; nor do the ops that kernels run inside aten overrides.

    Batch indices: a factory op whose output grows with the batch (``arange(B)``) holds indices,
    not data, and ops on nothing but such tensors (``unsqueeze``, ``expand``) hold them too. Their
    probe slices legitimately differ (row ``r`` holds ``r``), so they are marked and skipped;
    ops that combine them with data (indexing a mask by them) are compared as usual.
    """

    def __init__(
        self, reference: list[_AloneOp] | None = None, batch: int = 1, row: int = 0
    ) -> None:
        super().__init__()
        self.reference = reference or []
        self.recording = reference is None
        self.batch, self.row = batch, row
        self.record: list[_AloneOp] = []
        self.index = 0
        self.compared = 0
        self.first: OpDifference | None = None
        self.diverged: str | None = None
        self.skipped: dict[str, str] = {}
        self.whole: set[str] = set()
        self._indices: dict[int, weakref.ref[torch.Tensor]] = {}  # id -> tensor (identity)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = str(func)
        outputs = tree_leaves(out)
        if self.recording:
            cloned = [o.detach().clone() if isinstance(o, torch.Tensor) else o for o in outputs]
            self.record.append(_AloneOp(name, cloned))
        elif self.first is None and self.diverged is None:
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            self._compare(name, inputs, outputs)
        self.index += 1
        return out

    def _is_index(self, t: torch.Tensor) -> bool:
        ref = self._indices.get(id(t))
        return ref is not None and ref() is t

    def _compare(self, name: str, inputs: list[torch.Tensor], outputs: list[Any]) -> None:
        if self.index >= len(self.reference) or self.reference[self.index].name != name:
            alone = (
                self.reference[self.index].name if self.index < len(self.reference) else "nothing"
            )
            self.diverged = (
                f"op #{self.index} is {name} in the batch but {alone} alone "
                "(the module runs other ops for other batch sizes)"
            )
            return
        wanted = self.reference[self.index].outputs
        if any(word in name for word in _UNDEFINED):
            self.skipped.setdefault(name, "output values are undefined (uninitialised or random)")
            return
        grows = any(
            isinstance(o, torch.Tensor) and isinstance(w, torch.Tensor) and o.shape != w.shape
            for o, w in zip(outputs, wanted, strict=False)
        )
        if (not inputs and grows) or (inputs and all(self._is_index(t) for t in inputs)):
            self._indices.update(
                (id(o), weakref.ref(o)) for o in outputs if isinstance(o, torch.Tensor)
            )
            self.skipped.setdefault(name, "holds batch indices (e.g. arange(batch)), not data")
            return
        self.compared += 1
        shapes = tuple(tuple(t.shape) for t in inputs)
        for i, (got, want) in enumerate(zip(outputs, wanted, strict=False)):
            if not isinstance(got, torch.Tensor) or not isinstance(want, torch.Tensor):
                if got != want:
                    numeric = isinstance(got, (int, float)) and isinstance(want, (int, float))
                    worst = abs(float(got) - float(want)) if numeric else math.inf
                    self.first = OpDifference(
                        self.index, name, i, shapes, (), (), worst, 1, 1, NO_BATCH_DIM
                    )
                    return
                continue
            piece, note = _probe_slice(got, tuple(want.shape), self.batch, self.row)
            if piece is None:
                self.skipped.setdefault(name, f"cannot find the probe in its output ({note})")
                continue
            if note:
                self.whole.add(name)
            if piece.dtype != want.dtype:
                mismatched, worst, note = (
                    want.numel(),
                    math.inf,
                    f"dtype {piece.dtype} vs {want.dtype}",
                )
            elif torch.equal(piece, want):
                continue
            else:
                mismatched, worst = difference(piece, want)
                if not mismatched:  # NaN in the same places
                    continue
            self.first = OpDifference(
                self.index,
                name,
                i,
                shapes,
                tuple(got.shape),
                tuple(want.shape),
                worst,
                mismatched,
                want.numel(),
                note,
            )
            return
