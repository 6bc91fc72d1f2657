"""One hashable summary of a call's arguments: what selection and launch plans may depend on.

Selection (``supports_args``) and the providers' launch plans look at shapes, strides, dtypes,
devices and scalar values, never at tensor contents or addresses. Two calls with equal keys
therefore get the same implementation and the same launch, which lets both be remembered
(host time per op is what eager models and the trainer pay at decode sizes).
"""

from __future__ import annotations

from typing import Any

import torch

LayoutKey = tuple[Any, ...]


def layout_key(tag: Any, *args: Any) -> LayoutKey | None:
    """``(tag, ...)`` with each argument summarized, or ``None`` for an argument not modelled.

    Tensors contribute shape, strides, dtype and device (subclasses their type too); ``None``
    and dtypes themselves; bools, ints and floats their type with their value (``True`` and
    ``1`` differ); lists and tuples of ints their values. Anything else (strings, nested lists,
    objects) gives ``None``: such calls are never remembered.
    """
    key: list[Any] = [tag]
    for arg in args:
        kind = type(arg)
        if kind is torch.Tensor:
            key += (arg.shape, arg.stride(), arg.dtype, arg.device)
        elif isinstance(arg, torch.Tensor):  # a subclass (Parameter, ...) keys by its type too
            key += (kind, arg.shape, arg.stride(), arg.dtype, arg.device)
        elif arg is None or kind is torch.dtype:
            key.append(arg)
        elif kind is int or kind is float or kind is bool:
            key.append((kind, arg))
        elif (kind is list or kind is tuple) and all(type(a) is int for a in arg):
            key.append((list, tuple(arg)))
        else:
            return None
    return tuple(key)
