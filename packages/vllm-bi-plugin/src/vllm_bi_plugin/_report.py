"""What ``register()`` did, for the one log line and for ``vllm-bi info``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ._log import logger


@dataclass
class Report:
    """The outcome of installing batch-invariant mode in one process.

    Attributes:
        platform: ``cuda``, ``npu``, ``cpu``, ...
        vllm: the vLLM version and layout label (``"0.32.0 (layout 0.32)"``), or ``None``.
        providers: provider modules imported.
        missing: messages for provider packages that could not be imported.
        replacements: ``(what of vLLM's, by what of ours)`` pairs.
        kept: parts of vLLM's own batch-invariant mode that stay in place, with why.
        gaps: problems left: batch-invariant mode will raise there rather than vary.
        env: environment variables set.
        tp: tensor-parallel facts (``mode``, ``segments``, ``collective``) for the log line.
        announced: whether the summary line was logged in this process.
    """

    platform: str
    vllm: str | None = None
    providers: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    replacements: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tp: dict[str, str] = field(default_factory=dict)
    announced: bool = False

    def replaced(self, theirs: str, ours: str) -> None:
        self.replacements.append((theirs, ours))

    def keep(self, why: str) -> None:
        self.kept.append(why)

    def gap(self, what: str) -> None:
        self.gaps.append(what)

    def summary(self) -> str:
        """One line: platform, vLLM, providers, each replacement, what vLLM keeps, gaps."""
        head = f"vllm-bi-plugin: batch-invariant mode on {self.platform}"
        if self.vllm:
            head += f", vLLM {self.vllm}"
        parts = [head, "providers [" + ", ".join(self.providers or ["none"]) + "]"]
        if self.replacements:
            parts.append("installed " + "; ".join(f"{t} -> {o}" for t, o in self.replacements))
        else:
            parts.append("installed nothing in place of vLLM's own")
        if self.tp:
            parts.append("tensor parallel: " + "; ".join(f"{k} {v}" for k, v in self.tp.items()))
        if self.kept:
            parts.append("kept vLLM's own: " + "; ".join(self.kept))
        if self.gaps:
            parts.append("GAPS: " + "; ".join(self.gaps))
        return " | ".join(parts)

    def announce(self, *, force: bool = False) -> bool:
        """Log :meth:`summary` at INFO once per process; return whether it was logged now.

        vLLM configures its log handlers after it loads plugins in the process that builds the
        engine, so ``register()`` calls this without ``force`` (it logs only if a handler can
        show the line) and the worker hook calls it with ``force`` once vLLM's logging is up.
        """
        if self.announced:
            return False
        if not force and not (logger.isEnabledFor(logging.INFO) and _has_handler(logger)):
            return False
        logger.info(self.summary())
        self.announced = True
        return True


def _has_handler(lg: logging.Logger) -> bool:
    current: logging.Logger | None = lg
    while current is not None:
        if current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False
