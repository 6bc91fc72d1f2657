"""Batch-invariant GEMMs inside ``torch.compile`` graphs, launched by Inductor itself.

Under ``torch.compile`` Inductor hands GEMMs to ATen (its "extern" kernels), so in
batch-invariant mode every compiled GEMM reaches the aten overrides through the dispatcher and
Python, at every step: host time that a small model's decode step pays per GEMM. An
implementation may register a *lowering*: a function with the op's arguments, built from torch
ops and ``torch.library.triton_op`` calls, that ``torch.compile`` can trace. This module's
Inductor pass puts the lowering in the graph in place of the torch call, and Inductor then
launches the implementation's kernels as it launches its own.

The choice follows eager dispatch: the pass asks :meth:`IrOp.select` with the traced (fake)
arguments in the mode active at compile time, and rewrites a call only when the implementation
selected has a lowering. So a graph compiled in batch-invariant mode keeps those kernels when
it later runs outside the mode (its results stay batch-invariant); a graph compiled outside the
mode is left alone and reaches the overrides at run time as before. The pass runs before
autograd tracing (Inductor's pre-grad pass): a call whose result requires grad is left alone
(lowerings have no backward); under ``no_grad``/``inference_mode`` weights that require grad
do not matter.

On by default wherever an implementation registered a lowering (bi-triton-ascend does on
CUDA): on an H100 it took the compiled 0.6B decode step from 0.57-0.91x of default mode's
tokens/s (extern GEMMs) to 0.89x at batch 1 and 1.4x at batch 32. ``IR_DISPATCH_LOWER=0``
turns it off, ``1`` on. Callers whose compiled graphs are replayed as CUDA graphs gain nothing
from it (the host time it saves is not in a replay) and may make it opt-in
(``install_aten_overrides(lowering_default=False)``, as the vLLM plugin does).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import operator
import os
from collections.abc import Callable
from typing import Any

import torch

from . import ops
from .mode import is_batch_invariant
from .registry import IrOp

logger = logging.getLogger(__name__)

ENV = "IR_DISPATCH_LOWER"

# How a torch-level call's (args, kwargs) become the registry op's positional arguments
# (``None``: a form the op does not take, e.g. ``out=``).
Adapter = Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, ...] | None]


def _pair(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    return args if len(args) == 2 and not kwargs else None


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    if set(kwargs) - {"bias"} or len(args) not in (2, 3) or (len(args) == 3 and kwargs):
        return None
    return (*args[:2], args[2] if len(args) == 3 else kwargs.get("bias"))


def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    if len(args) != 3 or set(kwargs) - {"beta", "alpha"}:
        return None
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if not all(type(s) in (int, float) for s in (beta, alpha)):
        return None  # a traced scalar: not a constant of the launch
    return (*args, float(beta), float(alpha))


# torch-level callables (as Dynamo records them) -> (registry op name, adapter)
_FUNCTIONS: dict[Any, tuple[str, Adapter]] = {
    torch._C._nn.linear: ("linear", _linear),
    torch.matmul: ("matmul", _pair),
    operator.matmul: ("matmul", _pair),
    torch.mm: ("mm", _pair),
    torch.bmm: ("bmm", _pair),
    torch.addmm: ("addmm", _addmm),
}
# Tensor methods (``x.matmul(w)``: ``self`` is the first argument) -> same
_METHODS: dict[str, tuple[str, Adapter]] = {
    "matmul": ("matmul", _pair),
    "__matmul__": ("matmul", _pair),
    "mm": ("mm", _pair),
    "bmm": ("bmm", _pair),
}

_MISSING = object()


def _route(node: torch.fx.Node) -> tuple[IrOp, tuple[Any, ...]] | None:
    """The registry op and its arguments (graph nodes) for a call the pass may rewrite."""
    if node.op == "call_function":
        found = _FUNCTIONS.get(node.target)
    elif node.op == "call_method" and isinstance(node.target, str):
        found = _METHODS.get(node.target)
    else:
        return None
    if found is None:
        return None
    name, adapt = found
    args = adapt(tuple(node.args), dict(node.kwargs))
    return None if args is None else (getattr(ops, name), args)


def _traced_value(arg: Any) -> Any:
    """The fake value Dynamo recorded for a graph node, or the constant itself."""
    if isinstance(arg, torch.fx.Node):
        return arg.meta.get("example_value", arg.meta.get("val", _MISSING))
    return arg


def lower_graph(graph: torch.fx.Graph) -> int:
    """Rewrite the graph's GEMM calls to the lowerings of the implementations dispatch selects.

    Does nothing outside batch-invariant mode. Returns how many calls were rewritten.
    """
    if not is_batch_invariant():
        return 0
    rewritten = 0
    for node in graph.nodes:
        route = _route(node)
        if route is None:
            continue
        op, args = route
        values = [_traced_value(a) for a in args]
        if any(v is _MISSING for v in values) or not isinstance(values[0], torch.Tensor):
            continue
        result = _traced_value(node)
        if not isinstance(result, torch.Tensor) or result.requires_grad:
            continue  # traced with autograd (lowerings have no backward): keep the aten op
        try:
            impl = op.select(*values)
        except Exception as error:
            logger.debug("ir_dispatch lowering: %s left as is: %s", op.name, error)
            continue
        if impl.lowering is None:
            continue
        node.op, node.target, node.args, node.kwargs = "call_function", impl.lowering, args, {}
        op._note(impl, tuple(values))  # recording() sees compile-time choices as calls
        rewritten += 1
    if rewritten:
        logger.debug("ir_dispatch lowering: %d calls rewritten", rewritten)
    return rewritten


def lowerings_fingerprint() -> str:
    """What the pass would do, for Inductor's cache key: the mode and every lowering's source."""
    parts: list[str] = [f"bi={is_batch_invariant()}"]
    for name in sorted({n for n, _ in (*_FUNCTIONS.values(), *_METHODS.values())}):
        op = getattr(ops, name)
        for impl in op.impls:
            if impl.lowering is not None:
                try:
                    source = inspect.getsource(impl.lowering)
                except (OSError, TypeError):
                    source = repr(impl.lowering)
                parts.append(f"{name}:{impl.provider}:{impl.priority}:{source}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


_installed: list[Any] = []  # the pass object while installed


def lowering_enabled(default: bool = True) -> bool:
    """Whether :func:`install_lowering` may install the pass.

    ``IR_DISPATCH_LOWER=1`` (or ``true``) says yes, ``0`` (or ``false``) no; unset or empty,
    ``default``.

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get(ENV, "").strip().lower()
    if value == "":
        return default
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(f"{ENV}={value!r} is not understood; expected 1 or 0")


def lowerings_registered() -> bool:
    """Whether an implementation of a routed op has a lowering (if none, the pass does nothing)."""
    names = {name for name, _ in (*_FUNCTIONS.values(), *_METHODS.values())}
    return any(impl.lowering is not None for name in names for impl in getattr(ops, name).impls)


def install_lowering(default: bool = True) -> bool:
    """Put :func:`lower_graph` in Inductor's pre-grad passes; returns whether it is installed.

    Installed when :func:`lowering_enabled` (``default`` when ``IR_DISPATCH_LOWER`` is unset)
    and some implementation registered a lowering, so a process with none (CPU, interpreter)
    does not import Inductor for it. Passes set before
    (``torch._inductor.config.pre_grad_custom_pass``) still run, after this one. Idempotent.
    """
    if _installed:
        return True
    if not lowering_enabled(default) or not lowerings_registered():
        return False
    try:
        from torch._inductor import config
    except ImportError:  # a torch without Inductor
        return False
    from ._inductor_pass import LoweringPass

    lowering = LoweringPass(config.pre_grad_custom_pass)
    config.pre_grad_custom_pass = lowering
    _installed.append(lowering)
    return True


def uninstall_lowering() -> None:
    """Remove the pass (restoring the pre-grad pass that was set before it)."""
    if not _installed:
        return
    lowering = _installed.pop()
    previous = lowering.previous
    from torch._inductor import config

    if config.pre_grad_custom_pass is lowering:
        config.pre_grad_custom_pass = previous


def lowering_installed() -> bool:
    """Whether the pass is in Inductor's pre-grad passes now."""
    return bool(_installed)
