"""Helpers for tests that need the registry in a known state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .registry import NATIVE, Impl, IrOp, list_ops


@contextmanager
def providers_removed(
    should_remove: Callable[[Impl], bool], ops: list[IrOp] | None = None
) -> Iterator[list[Impl]]:
    """Temporarily unregister every implementation for which ``should_remove`` is true.

    The registry is process-wide, so a test that needs "no provider for this platform" must
    hide the ones other tests (or imports) registered. The native references are never removed.
    Yields the removed implementations; they are registered again, unchanged, on exit.
    """
    removed: list[tuple[IrOp, Impl]] = []
    for op in ops if ops is not None else list_ops():
        for impl in op.impls:
            if impl.provider != NATIVE and should_remove(impl):
                op.unregister_impl(impl.provider)
                removed.append((op, impl))
    try:
        yield [impl for _, impl in removed]
    finally:
        for op, impl in removed:
            op.register_impl(
                impl.provider,
                batch_invariant=impl.batch_invariant,
                platforms=impl.platforms,
                supports_args=impl.supports_args,
                priority=impl.priority,
                note=impl.note,
            )(impl.fn)
