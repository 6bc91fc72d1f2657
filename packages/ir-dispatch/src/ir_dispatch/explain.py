"""Answer "which implementation would serve this call, and why not the others"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .mode import batch_invariant as _mode
from .mode import is_batch_invariant
from .platform import platform_of
from .registry import IrOp, describe_args, get_op


@dataclass(frozen=True)
class Candidate:
    """One implementation as dispatch saw it."""

    provider: str
    priority: int
    batch_invariant: bool
    rejection: str | None
    note: str


@dataclass(frozen=True)
class Explanation:
    """The outcome of dispatching one call, with every candidate's verdict."""

    op: str
    args: str
    platform: str
    batch_invariant_mode: bool
    chosen: str | None
    candidates: tuple[Candidate, ...]

    def __str__(self) -> str:
        mode = "batch-invariant" if self.batch_invariant_mode else "default"
        lines = [
            f"{self.op}{self.args} on {self.platform}, {mode} mode"
            f" -> {self.chosen or 'NO IMPLEMENTATION'}"
        ]
        for c in self.candidates:
            mark = "*" if c.provider == self.chosen else " "
            verdict = "eligible" if c.rejection is None else f"rejected: {c.rejection}"
            bi = "batch-invariant" if c.batch_invariant else "batch-variant"
            lines.append(f" {mark} {c.provider:<14} priority {c.priority:>3}  {bi:<15}  {verdict}")
        return "\n".join(lines)


def explain(
    op: str | IrOp, *args: Any, batch_invariant: bool | None = None, **kwargs: Any
) -> Explanation:
    """Explain dispatch of ``op(*args, **kwargs)`` without running it.

    Args:
        op: an op or its name.
        batch_invariant: the mode to explain for; defaults to the mode active in this thread.
    """
    ir_op = get_op(op) if isinstance(op, str) else op
    bi = is_batch_invariant() if batch_invariant is None else batch_invariant
    platform = platform_of(*args, *kwargs.values())
    with _mode(bi):  # providers' supports_args may consult the mode being explained
        verdicts = ir_op.evaluate(*args, batch_invariant_only=bi, **kwargs)
    chosen = next((impl.provider for impl, why in verdicts if why is None), None)
    return Explanation(
        op=ir_op.name,
        args=describe_args([*args, *kwargs.values()]),
        platform=platform.value,
        batch_invariant_mode=bi,
        chosen=chosen,
        candidates=tuple(
            Candidate(
                impl.provider, impl.priority, impl.is_batch_invariant_on(platform), why, impl.note
            )
            for impl, why in verdicts
        ),
    )
