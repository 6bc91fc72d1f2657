"""Attribute patches that remember what they replaced.

vLLM offers no hook for most of what batch invariance needs (its kernels are module functions,
some imported by value), so the plugin replaces attributes. Every replacement goes through
:func:`patch_attr`, which makes a second ``register()`` a no-op, keeps a list for ``vllm-bi
info`` and the one log line, and lets tests undo everything. Defaults vLLM keeps in dicts (the
optimization levels' pass switches) go through :func:`patch_item`, into the same list.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

_ORIGINAL = "__vllm_bi_original__"
_MISSING = object()


@dataclass(frozen=True)
class Patch:
    """One replaced attribute.

    Attributes:
        target: the module or class that holds the attribute.
        attr: the attribute name.
        original: what was stored there before (a class's raw descriptor; ``_MISSING`` when
            the class inherited it).
        replacement: what is there now.
        item: whether ``target`` is a dict and ``attr`` one of its keys (:func:`patch_item`).
        label: the name for messages where the target has none (a dict).
    """

    target: Any
    attr: str
    original: Any
    replacement: Any
    item: bool = False
    label: str = ""

    @property
    def where(self) -> str:
        """``module.attr``, ``module.Class.attr`` or a dict item's label, for messages."""
        if self.label:
            return self.label
        if isinstance(self.target, types.ModuleType):
            return f"{self.target.__name__}.{self.attr}"
        if isinstance(self.target, type):
            return f"{self.target.__module__}.{self.target.__qualname__}.{self.attr}"
        return f"{self.target!r}.{self.attr}"


_applied: list[Patch] = []


def original_of(fn: Any) -> Any:
    """The function a replacement stands in for (``fn`` itself if it is not a replacement)."""
    return getattr(fn, _ORIGINAL, fn)


def mark_replacement(replacement: Callable[..., Any], original: Any) -> Callable[..., Any]:
    """Tag ``replacement`` with the function it replaces, so patching again is detected."""
    with contextlib.suppress(AttributeError, TypeError):  # builtins take no attributes
        setattr(replacement, _ORIGINAL, original)
    return replacement


def _raw(target: Any, attr: str) -> Any:
    """The attribute as stored: a class's own ``__dict__`` entry (descriptor), else getattr."""
    if isinstance(target, type):
        return target.__dict__.get(attr, _MISSING)
    return getattr(target, attr)


def patch_attr(target: Any, attr: str, replacement: Any) -> bool:
    """Set ``target.attr = replacement`` unless a plugin replacement is already there.

    On a class, ``replacement`` may be a ``classmethod``/``staticmethod``; an inherited
    attribute is shadowed on the class and removed again on undo.

    Args:
        target: module or class.
        attr: attribute name; it must exist (a typo must not silently add a new attribute).
        replacement: the new value.

    Returns:
        True if the attribute was replaced now, False if a replacement was already in place.

    Raises:
        AttributeError: ``target`` has no attribute ``attr`` (vLLM moved it: the layout in
            ``_vllm_compat`` needs updating).
    """
    if not hasattr(target, attr):
        name = getattr(target, "__name__", repr(target))
        raise AttributeError(f"{name} has no attribute {attr!r}; cannot patch it")
    current = getattr(target, attr)
    if current is replacement or hasattr(current, _ORIGINAL):
        return False
    inner = (
        replacement.__func__
        if isinstance(replacement, (classmethod, staticmethod))
        else replacement
    )
    mark_replacement(inner, current)
    raw = _raw(target, attr)
    setattr(target, attr, replacement)
    _applied.append(Patch(target, attr, raw, replacement))
    return True


def patch_item(mapping: MutableMapping[str, Any], key: str, value: Any, *, where: str) -> bool:
    """Set ``mapping[key] = value`` and remember the original (identity kept for the undo).

    Args:
        mapping: the dict (a vLLM defaults table).
        key: the key; it must exist (a typo must not silently add an entry).
        value: the new value.
        where: the item's name for messages (``module.TABLE[level]...key``).

    Returns:
        True if the item was replaced now, False if ``value`` itself is already there.

    Raises:
        KeyError: ``mapping`` has no ``key`` (vLLM renamed it: ``_vllm_compat`` needs updating).
    """
    if key not in mapping:
        raise KeyError(f"{where} does not exist; cannot patch it")
    current = mapping[key]
    if current is value:
        return False
    mapping[key] = value
    _applied.append(Patch(mapping, key, current, value, item=True, label=where))
    return True


def applied() -> tuple[Patch, ...]:
    """Every patch in force, oldest first."""
    return tuple(_applied)


def undo_all() -> None:
    """Restore every patched attribute, newest first (for tests and ``unregister``)."""
    while _applied:
        p = _applied.pop()
        if p.item:
            p.target[p.attr] = p.original
        elif p.original is _MISSING:
            delattr(p.target, p.attr)
        else:
            setattr(p.target, p.attr, p.original)
