"""The report of :func:`vllm_bi_plugin.check.check_module`: per-run results and the table.

``str(report)`` is what ``vllm-bi check`` prints; :meth:`CheckReport.as_dict` what it writes as
JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NO_BATCH_DIM = "no batch dimension: compared whole"


@dataclass(frozen=True)
class OpDifference:
    """The first op of one run whose output for the probe differs from the alone run.

    Attributes:
        index: the op's position in the forward pass (0 = first aten op).
        op: the aten overload, e.g. ``aten.addmm.default``.
        output: which of the op's tensor outputs differs.
        input_shapes: the op's tensor input shapes in the batched run.
        output_shape: that output's shape in the batched run.
        alone_shape: its shape when the probe ran alone (the probe's slice has this shape).
        max_abs_diff: the largest absolute difference in the probe's slice (``inf`` for NaN
            against a number).
        mismatched: how many elements of the probe's slice differ.
        numel: elements in the probe's slice.
        note: how the slice was taken, when not by a batch dimension.
    """

    index: int
    op: str
    output: int
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    alone_shape: tuple[int, ...]
    max_abs_diff: float
    mismatched: int
    numel: int
    note: str = ""

    def describe(self) -> str:
        inputs = ", ".join(str(s) for s in self.input_shapes) or "no tensor inputs"
        out = f" output {self.output}" if self.output else ""
        note = f" [{self.note}]" if self.note else ""
        return (
            f"#{self.index} {self.op}({inputs}) -> {self.output_shape}{out}: probe slice "
            f"{self.alone_shape}, {self.mismatched}/{self.numel} elements differ, "
            f"max |diff| {self.max_abs_diff:.3g}{note}"
        )


@dataclass(frozen=True)
class RunResult:
    """One batched run of the probe.

    Attributes:
        batch_size: rows in the batch.
        position: ``front``, ``middle`` or ``back``.
        row: the probe's row in the batch.
        first_difference: the first differing op, or ``None``.
        ops_compared: ops whose probe slice was compared.
        diverged: set when the batched run executed other ops than the alone run.
        output_max_abs_diff: largest absolute difference of the module output for the probe.
    """

    batch_size: int
    position: str
    row: int
    first_difference: OpDifference | None
    ops_compared: int
    diverged: str | None = None
    output_max_abs_diff: float | None = None

    @property
    def identical(self) -> bool:
        return (
            self.first_difference is None and self.diverged is None and not self.output_max_abs_diff
        )


@dataclass
class CheckReport:
    """Everything :func:`check_module` found; ``str()`` gives the table ``vllm-bi check`` prints.

    Attributes:
        module: the module's class name.
        mode: ``batch_invariant`` or ``default``.
        probe_shape: the probe input's shape.
        probe_dtype: its dtype.
        ops_per_forward: aten ops in the alone run.
        runs: one result per (batch size, position), positions that land on the same row once.
        skipped: op name -> why its outputs were not compared.
        whole: op names whose outputs have no batch dimension and were compared whole.
    """

    module: str
    mode: str
    probe_shape: tuple[int, ...]
    probe_dtype: str
    ops_per_forward: int
    runs: list[RunResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    whole: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the probe got the same bits in every run, at every op."""
        return all(r.identical for r in self.runs)

    @property
    def differing_runs(self) -> list[RunResult]:
        return [r for r in self.runs if not r.identical]

    @property
    def first_difference(self) -> OpDifference | None:
        """The earliest differing op over all runs (where batch variance enters)."""
        found = [r.first_difference for r in self.runs if r.first_difference is not None]
        return min(found, key=lambda d: d.index) if found else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for ``vllm-bi check --json``)."""
        out = asdict(self)
        out["ok"] = self.ok
        first = self.first_difference
        out["first_difference"] = asdict(first) if first is not None else None
        return out

    def __str__(self) -> str:
        lines = [
            f"vllm-bi check: {self.module} in {self.mode} mode; probe {self.probe_shape} "
            f"{self.probe_dtype}; {self.ops_per_forward} aten ops per forward",
            f"{'batch':>6}  {'position':<8} {'row':>4}  {'result':<9} {'first differing op':<46} "
            f"{'max |diff|':>10}  {'output |diff|':>13}",
        ]
        for r in self.runs:
            first = r.first_difference
            if first is not None:  # before any divergence: comparing stops at the first difference
                result, where, diff = (
                    "DIFFERS",
                    f"#{first.index} {first.op}",
                    f"{first.max_abs_diff:.3g}",
                )
            elif r.diverged:
                result, where, diff = "DIVERGED", r.diverged, ""
            else:
                result = "identical" if r.identical else "DIFFERS"
                where, diff = "", ""
            out = "" if r.output_max_abs_diff is None else f"{r.output_max_abs_diff:.3g}"
            lines.append(
                f"{r.batch_size:>6}  {r.position:<8} {r.row:>4}  {result:<9} {where[:46]:<46} "
                f"{diff:>10}  {out:>13}"
            )
        bad = self.differing_runs
        if not bad:
            lines.append(
                "Verdict: batch-invariant - the probe got the same bits in all "
                f"{len(self.runs)} runs."
            )
        else:
            lines.append(f"Verdict: batch-VARIANT - {len(bad)} of {len(self.runs)} runs differ.")
            first = self.first_difference
            if first is not None:
                seen = next(
                    r
                    for r in self.runs
                    if r.first_difference is not None and r.first_difference.index == first.index
                )
                lines.append(
                    f"First differing op: {first.describe()} "
                    f"(batch {seen.batch_size}, {seen.position})."
                )
            diverged = [r for r in bad if r.diverged]
            if diverged:
                r = diverged[0]
                lines.append(
                    f"Op sequence differs in {len(diverged)} runs, e.g. batch {r.batch_size} "
                    f"({r.position}): {r.diverged}"
                )
        if self.whole:
            lines.append(f"Compared whole ({NO_BATCH_DIM.split(':')[0]}): {', '.join(self.whole)}")
        for name, why in self.skipped.items():
            lines.append(f"Skipped {name}: {why}")
        return "\n".join(lines)
