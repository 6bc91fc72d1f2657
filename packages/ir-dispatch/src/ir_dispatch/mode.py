"""Batch-invariant mode: one switch for the whole project.

The process-wide default comes from ``VLLM_BATCH_INVARIANT`` (so vLLM's own switch turns it on)
and can be changed with :func:`set_batch_invariant`. :func:`batch_invariant` overrides it for
the current thread only, so a server thread running a determinism check does not flip the mode
under its neighbours. The mode is read when an op is *called*, never when it is traced, so
compiled graphs and captured CUDA graphs follow the mode that was active at call/capture time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

ENV_VAR = "VLLM_BATCH_INVARIANT"


def _parse_env(value: str | None) -> bool:
    if value is None or value.strip() == "":
        return False
    try:
        return bool(int(value))
    except ValueError:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not understood; expected an integer such as 0 or 1"
        ) from None


_process_default: bool = _parse_env(os.environ.get(ENV_VAR))
_local = threading.local()


def is_batch_invariant() -> bool:
    """Whether dispatch in this thread may only pick batch-invariant implementations."""
    override: bool | None = getattr(_local, "override", None)
    return _process_default if override is None else override


def set_batch_invariant(enabled: bool) -> None:
    """Set the process-wide default (threads inside :func:`batch_invariant` keep theirs)."""
    global _process_default
    _process_default = bool(enabled)


def reload_from_env() -> bool:
    """Re-read ``VLLM_BATCH_INVARIANT`` into the process-wide default; returns the new value."""
    set_batch_invariant(_parse_env(os.environ.get(ENV_VAR)))
    return _process_default


@contextmanager
def batch_invariant(enabled: bool = True) -> Iterator[None]:
    """Run the block with batch-invariant mode on (or off) in this thread.

    Example:
        >>> with batch_invariant():
        ...     logits = model(input_ids)
    """
    previous: bool | None = getattr(_local, "override", None)
    _local.override = bool(enabled)
    try:
        yield
    finally:
        _local.override = previous
