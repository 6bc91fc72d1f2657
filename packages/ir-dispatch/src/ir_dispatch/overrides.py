"""Route aten ops to the registry, for models that call ``torch.mm``/``F.linear``/... directly.

One ``torch.library.Library("aten", "IMPL")`` holds the overrides for one dispatch key (the
platform's: ``CUDA``, ``PrivateUse1``, ``XPU`` or ``CPU``). Installing twice is harmless;
uninstalling destroys that library, which restores whatever kernel was registered before.

Implementations may themselves call the aten ops they override (the native references do, and
so can providers that wrap a vendor kernel in a batch-invariant way): while an override runs,
nested calls in the same thread go straight to the kernel that was registered before ours.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from . import ops
from .lowering import install_lowering, uninstall_lowering
from .platform import current_platform

Handler = Callable[..., Any]


def _dtype_for(half_to_float: bool) -> torch.dtype | None:
    return torch.float32 if half_to_float else None


def _into(out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    if out.shape != result.shape:
        out.resize_(result.shape)
    return out.copy_(result)


# The GEMM ``out=`` overloads (Inductor's extern kernels call them) write in place when the
# provider's remembered launch plan can: no copy kernel per GEMM. The rest copy via ``_into``.
# aten overload -> function of the aten arguments that calls the registry op.
_HANDLERS: dict[str, Handler] = {
    "mm": lambda a, b: ops.mm.call_selected(a, b),
    "mm.out": lambda a, b, *, out: ops.mm.call_into(out, a, b),
    "addmm": lambda bias, a, b, *, beta=1, alpha=1: ops.addmm.call_selected(
        bias, a, b, float(beta), float(alpha)
    ),
    "addmm.out": lambda bias, a, b, *, beta=1, alpha=1, out: ops.addmm.call_into(
        out, bias, a, b, float(beta), float(alpha)
    ),
    "bmm": lambda a, b: ops.bmm.call_selected(a, b),
    "bmm.out": lambda a, b, *, out: ops.bmm.call_into(out, a, b),
    "matmul": lambda a, b: ops.matmul.call_selected(a, b),
    "matmul.out": lambda a, b, *, out: ops.matmul.call_into(out, a, b),
    "linear": lambda x, w, bias=None: ops.linear.call_selected(x, w, bias),
    "linear.out": lambda x, w, bias=None, *, out: ops.linear.call_into(out, x, w, bias),
    "_log_softmax": lambda x, dim, half_to_float: ops.log_softmax.call_selected(
        x, dim, _dtype_for(half_to_float)
    ),
    "_log_softmax.out": lambda x, dim, half_to_float, *, out: _into(
        out, ops.log_softmax.call_selected(x, dim, _dtype_for(half_to_float))
    ),
    "log_softmax.int": lambda x, dim, dtype=None: ops.log_softmax.call_selected(x, dim, dtype),
    "_softmax": lambda x, dim, half_to_float: ops.softmax.call_selected(
        x, dim, _dtype_for(half_to_float)
    ),
    "_softmax.out": lambda x, dim, half_to_float, *, out: _into(
        out, ops.softmax.call_selected(x, dim, _dtype_for(half_to_float))
    ),
    "softmax.int": lambda x, dim, dtype=None: ops.softmax.call_selected(x, dim, dtype),
    "mean.dim": lambda x, dim, keepdim=False, *, dtype=None: ops.mean.call_selected(
        x, list(dim) if dim is not None else None, keepdim, dtype
    ),
    "mean.out": lambda x, dim, keepdim=False, *, dtype=None, out: _into(
        out, ops.mean.call_selected(x, list(dim) if dim is not None else None, keepdim, dtype)
    ),
}

DEFAULT_OVERRIDES: tuple[str, ...] = tuple(_HANDLERS)

_reentry = threading.local()


@dataclass
class _Installed:
    library: torch.library.Library
    dispatch_key: str
    overloads: tuple[str, ...]


_installed: _Installed | None = None
_install_lock = threading.Lock()


def _original_kernel(overload: str, dispatch_key: str) -> Any:
    name = overload if "." in overload else f"{overload}"
    return torch.library.get_kernel(f"aten::{name}", dispatch_key)


def _make_override(overload: str, handler: Handler, original: Any) -> Callable[..., Any]:
    def override(keyset: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_reentry, "active", False):
            return original.call_boxed(keyset, *args, **kwargs)
        _reentry.active = True
        try:
            return handler(*args, **kwargs)
        finally:
            _reentry.active = False

    override.__name__ = f"ir_dispatch_override_{overload.replace('.', '_')}"
    return override


def install_aten_overrides(
    overloads: Iterable[str] | None = None,
    dispatch_key: str | None = None,
    *,
    lowering_default: bool = True,
) -> None:
    """Route the given aten overloads (default: all of :data:`DEFAULT_OVERRIDES`) to the registry.

    Args:
        overloads: aten overload names such as ``"mm"``, ``"addmm.out"``, ``"mean.dim"``.
        dispatch_key: the key to install under; defaults to the current platform's.
        lowering_default: whether the ``torch.compile`` lowering pass is installed too when
            ``IR_DISPATCH_LOWER`` is unset (see :mod:`ir_dispatch.lowering`).

    Raises:
        ValueError: an unknown overload name, or overrides already installed under another key.
    """
    global _installed
    wanted = tuple(overloads) if overloads is not None else DEFAULT_OVERRIDES
    unknown = [o for o in wanted if o not in _HANDLERS]
    if unknown:
        raise ValueError(
            f"overloads={unknown} cannot be overridden; supported: {', '.join(_HANDLERS)}"
        )
    key = dispatch_key or current_platform().dispatch_key
    with _install_lock:
        if _installed is not None:
            if _installed.dispatch_key == key and set(wanted) <= set(_installed.overloads):
                return
            raise ValueError(
                f"aten overrides are already installed under {_installed.dispatch_key} for "
                f"{_installed.overloads}; uninstall them first"
            )
        library = torch.library.Library("aten", "IMPL")
        allow = (
            {"allow_override": True}
            if "allow_override" in inspect.signature(library.impl).parameters
            else {}
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*previously registered kernel")
            for overload in wanted:
                original = _original_kernel(overload, key)
                library.impl(
                    overload,
                    _make_override(overload, _HANDLERS[overload], original),
                    key,
                    with_keyset=True,
                    **allow,
                )
        _installed = _Installed(library, key, wanted)
    install_lowering(lowering_default)  # compiled graphs: GEMMs Inductor launches (.lowering)


def uninstall_aten_overrides() -> None:
    """Remove the overrides; the kernels registered before them serve the ops again."""
    global _installed
    with _install_lock:
        if _installed is None:
            return
        _installed.library._destroy()
        _installed = None
    uninstall_lowering()


def installed_overrides() -> tuple[str, tuple[str, ...]] | None:
    """``(dispatch_key, overloads)`` of the installed overrides, or ``None``."""
    current = _installed
    return None if current is None else (current.dispatch_key, current.overloads)


@contextmanager
def aten_overrides(
    overloads: Iterable[str] | None = None, dispatch_key: str | None = None
) -> Iterator[None]:
    """Install the overrides for the block (if not installed already) and restore afterwards."""
    was_installed = _installed is not None
    install_aten_overrides(overloads, dispatch_key)
    try:
        yield
    finally:
        if not was_installed:
            uninstall_aten_overrides()
