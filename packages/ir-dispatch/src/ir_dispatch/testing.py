"""Helpers for tests that need the registry, the mode or the device markers in a known state.

``pytest`` stays optional for ``ir_dispatch``: only :func:`skip_marked` needs it, and imports it
when called (from a ``conftest.py``, where pytest is running anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .mode import set_batch_invariant
from .overrides import uninstall_aten_overrides
from .registry import NATIVE, Impl, IrOp, list_ops


def skip_marked(items: Iterable[Any], marker: str, reason: str) -> None:
    """Mark every collected test that carries ``marker`` to skip with ``reason``.

    For ``pytest_collection_modifyitems`` in the packages' conftests: device tests (marked
    ``cuda`` or ``npu``) skip loudly, with the reason, where the device is absent, instead of
    failing or vanishing. The caller decides *whether* the device is absent.

    Args:
        items: the collected ``pytest.Item`` objects.
        marker: the marker name, e.g. ``"cuda"``.
        reason: shown in pytest's skip summary.
    """
    import pytest

    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker(marker) is not None:
            item.add_marker(skip)


@contextmanager
def seeded_default_mode(seed: int = 0, *, uninstall_overrides: bool = False) -> Iterator[None]:
    """Seed torch and run in default (not batch-invariant) mode; default mode again on exit.

    The mode and the aten overrides are process-wide, so a test that switches them must not leak
    into the next one; the packages' autouse fixtures wrap every test in this.

    Args:
        seed: passed to ``torch.manual_seed`` on entry.
        uninstall_overrides: also remove the aten overrides on exit.
    """
    torch.manual_seed(seed)
    set_batch_invariant(False)
    try:
        yield
    finally:
        set_batch_invariant(False)
        if uninstall_overrides:
            uninstall_aten_overrides()


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
                layout_only=impl.layout_only,
                prepare=impl.prepare,
            )(impl.fn)
