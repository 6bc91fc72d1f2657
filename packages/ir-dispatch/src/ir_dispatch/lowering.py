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
CUDA) or the reductions are routed (the default, below): on an H100 the GEMM lowerings took the
compiled 0.6B decode step from 0.57-0.91x of default mode's tokens/s (extern GEMMs) to
0.89-1.02x at batch 1 and 1.15-1.40x at batch 32 (two runs). ``IR_DISPATCH_LOWER=0`` turns the
pass off, ``1`` on. Callers whose compiled graphs are replayed as CUDA graphs may make it
opt-in (``install_aten_overrides(lowering_default=False)``, as the vLLM plugin does).

Without more, a compiled graph is still not batch-invariant (measured on an H100 and on CPU:
``benchmarks/compile_bits.py``). Inductor compiles ``mean``, ``softmax`` and ``log_softmax``
(an RMSNorm written as ``pow``/``mean``, attention's softmax) into reductions of its own, whose
block shapes follow the whole shape; and which bf16 round trips its fusions elide follows the
shapes too. So the pass also routes those calls, to the selected implementation's lowering
(bi-triton-ascend registers them on CUDA) or else the registry op's custom op (the kit's
kernel, at a Python call per op), and has Inductor keep eager's casts in batch-invariant graphs
(``emulate_precision_casts``). ``IR_DISPATCH_LOWER_REDUCTIONS=0`` leaves both to Inductor.
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

_MISSING = object()

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


def _dims(dim: Any) -> list[int] | object | None:
    """``mean``'s ``dim`` as the registry op takes it; ``_MISSING`` for a traced or odd value."""
    if dim is None:
        return None
    if type(dim) is int:
        return [dim]
    if isinstance(dim, list | tuple) and all(type(d) is int for d in dim):
        return list(dim)
    return _MISSING


def _mean(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """``torch.mean(x, dim=None, keepdim=False, *, dtype=None)`` and ``x.mean(...)``."""
    if not 1 <= len(args) <= 3 or set(kwargs) - {"dim", "keepdim", "dtype"}:
        return None
    x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dtype, dims = kwargs.get("dtype"), _dims(dim)
    if dims is _MISSING or type(keepdim) is not bool or not _is_dtype(dtype):
        return None
    return (x, dims, keepdim, dtype)


def _row_softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """``torch.softmax(x, dim, dtype=None)``, ``x.softmax(dim, dtype=None)`` (and log_)."""
    if not 1 <= len(args) <= 3 or set(kwargs) - {"dim", "dtype"}:
        return None
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
    return (args[0], dim, dtype) if type(dim) is int and _is_dtype(dtype) else None


def _functional_softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """``F.softmax(x, dim=None, _stacklevel=3, dtype=None)`` (and ``F.log_softmax``)."""
    if not 1 <= len(args) <= 4 or set(kwargs) - {"dim", "_stacklevel", "dtype"}:
        return None
    dim = args[1] if len(args) > 1 else kwargs.get("dim")  # None: torch guesses one; not here
    dtype = args[3] if len(args) > 3 else kwargs.get("dtype")
    return (args[0], dim, dtype) if type(dim) is int and _is_dtype(dtype) else None


def _is_dtype(value: Any) -> bool:
    return value is None or isinstance(value, torch.dtype)


# torch-level callables (as Dynamo records them) -> (registry op name, adapter)
_FUNCTIONS: dict[Any, tuple[str, Adapter]] = {
    torch._C._nn.linear: ("linear", _linear),
    torch.matmul: ("matmul", _pair),
    operator.matmul: ("matmul", _pair),
    torch.mm: ("mm", _pair),
    torch.bmm: ("bmm", _pair),
    torch.addmm: ("addmm", _addmm),
    torch.mean: ("mean", _mean),
    torch.softmax: ("softmax", _row_softmax),
    torch.log_softmax: ("log_softmax", _row_softmax),
    torch.nn.functional.softmax: ("softmax", _functional_softmax),
    torch.nn.functional.log_softmax: ("log_softmax", _functional_softmax),
}
# Tensor methods (``x.matmul(w)``: ``self`` is the first argument) -> same
_METHODS: dict[str, tuple[str, Adapter]] = {
    "matmul": ("matmul", _pair),
    "__matmul__": ("matmul", _pair),
    "mm": ("mm", _pair),
    "bmm": ("bmm", _pair),
    "mean": ("mean", _mean),
    "softmax": ("softmax", _row_softmax),
    "log_softmax": ("log_softmax", _row_softmax),
}
# Ops that Inductor would otherwise decompose into reductions of its own (never reaching the
# aten overrides): without a lowering they may go to the registry's custom op instead.
_REDUCTIONS = frozenset({"mean", "softmax", "log_softmax"})
REDUCTIONS_ENV = "IR_DISPATCH_LOWER_REDUCTIONS"


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


_SOFTMAXES = frozenset({"softmax", "log_softmax"})
# Tensor methods that only convert their tensor to a float dtype: name -> the dtype, or None
# for ``to``, whose dtype is its one other argument.
_CASTS: dict[str, torch.dtype | None] = {
    "to": None, "bfloat16": torch.bfloat16, "half": torch.float16, "float": torch.float32,
}  # fmt: skip


def _cast_dtype(node: torch.fx.Node) -> torch.dtype | None:
    """The dtype ``node`` converts its first argument to, if it does only that."""
    if node.op != "call_method" or node.target not in _CASTS:
        return None
    fixed = _CASTS[str(node.target)]
    if fixed is not None:
        return fixed if len(node.args) == 1 and not node.kwargs else None
    rest = (*node.args[1:], *node.kwargs.values())
    keys_ok = set(node.kwargs) <= {"dtype"}
    return rest[0] if keys_ok and len(rest) == 1 and isinstance(rest[0], torch.dtype) else None


def _fold_cast_back(graph: torch.fx.Graph, node: torch.fx.Node, x: Any) -> None:
    """Let a routed softmax whose only use casts it back to its input's dtype write that dtype.

    ``softmax(x, -1, dtype=torch.float32).to(x.dtype)`` (transformers' eager attention) rounds
    its fp32 result once to bf16 either way, so asking the kernel for ``x``'s dtype gives the
    same bits without an fp32 result written and read back: at 16 x 512 tokens on the 0.6B
    model, an fp32 write, read and cast of attention scores cost about as much per layer as the
    softmax itself (H100 profile, ``benchmarks/profile_model.py``).
    """
    if len(node.users) != 1 or not isinstance(x, torch.Tensor):
        return
    (user,) = node.users
    dtype = node.args[2]
    if user.args[0] is not node or _cast_dtype(user) != x.dtype:
        return
    if not isinstance(dtype, torch.dtype) or dtype.itemsize < x.dtype.itemsize:
        return  # dtype narrower than x rounds the input first: not the same computation
    node.args = (node.args[0], node.args[1], None)
    if "example_value" in user.meta:
        node.meta["example_value"] = user.meta["example_value"]
    user.replace_all_uses_with(node)
    graph.erase_node(user)


_POWS = frozenset({torch.pow, operator.pow})


def _squared(node: Any) -> torch.fx.Node | None:
    """``t`` when ``node`` is ``t.pow(2)`` / ``torch.pow(t, 2)`` / ``t ** 2``; else ``None``."""
    if not isinstance(node, torch.fx.Node) or node.kwargs or len(node.args) != 2:
        return None
    is_pow = (node.op == "call_method" and node.target == "pow") or (
        node.op == "call_function" and node.target in _POWS
    )
    base, exponent = node.args
    if not is_pow or type(exponent) is not int or exponent != 2:
        return None
    return base if isinstance(base, torch.fx.Node) else None


def _mean_of_squares_args(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``(x, dims, keepdim)`` for a routed mean of ``x.float().pow(2)``; else ``None``.

    RMSNorm as ``transformers`` writes it; ``x`` is the cast's bf16/fp16 source, or the fp32
    tensor squared.
    """
    source, dims, keepdim, dtype = args
    base = _squared(source)
    if base is None or dtype is not None:
        return None
    squared_value = _traced_value(base)
    if not isinstance(squared_value, torch.Tensor) or squared_value.dtype != torch.float32:
        return None  # the square of a bf16 tensor is rounded to bf16: another computation
    if _cast_dtype(base) == torch.float32 and isinstance(base.args[0], torch.fx.Node):
        inner = _traced_value(base.args[0])
        if isinstance(inner, torch.Tensor) and inner.dtype in (torch.bfloat16, torch.float16):
            base = base.args[0]  # widening to fp32 is exact: the kernel reads x itself
    return (base, dims, keepdim)


def _route_mean_of_squares(
    graph: torch.fx.Graph, node: torch.fx.Node, mean_args: tuple[Any, ...]
) -> bool:
    """Rewrite a routed ``mean`` of ``x.float().pow(2)`` to ``mean_of_squares(x)``'s lowering.

    ``mean_args`` are the registry ``mean``'s arguments; returns whether it rewrote. The kernel
    reads ``x`` once where the pattern writes fp32 squares for ``mean`` to read back, and rounds
    each square as ``pow`` does (the same bits). Only where the implementation selected has a
    lowering (a Python call per op would cost more than it saves); the ``pow`` is removed when
    nothing else uses it.
    """
    args = _mean_of_squares_args(mean_args)
    if args is None:
        return False
    values = [_traced_value(a) for a in args]
    if any(v is _MISSING for v in values):
        return False
    try:
        impl = ops.mean_of_squares.select(*values)
    except Exception as error:
        logger.debug("ir_dispatch lowering: mean_of_squares not used: %s", error)
        return False
    if impl.lowering is None:
        return False
    squares = mean_args[0]
    node.op, node.target, node.args, node.kwargs = "call_function", impl.lowering, args, {}
    ops.mean_of_squares._note(impl, tuple(values))
    if isinstance(squares, torch.fx.Node) and not squares.users:
        graph.erase_node(squares)
    return True


def lower_graph(graph: torch.fx.Graph) -> int:
    """Rewrite the graph's GEMM calls to the lowerings of the implementations dispatch selects.

    With :func:`reductions_routed`, ``mean``/``softmax``/``log_softmax`` calls too: to a
    lowering, else to the registry's custom op. Does nothing outside batch-invariant mode.
    Returns how many calls were rewritten.
    """
    if not is_batch_invariant():
        return 0
    route_reductions = reductions_routed()
    rewritten = 0
    for node in graph.nodes:
        route = _route(node)
        if route is None:
            continue
        op, args = route
        if op.name in _REDUCTIONS and not route_reductions:
            continue  # left to Inductor (IR_DISPATCH_LOWER_REDUCTIONS=0)
        values = [_traced_value(a) for a in args]
        if any(v is _MISSING for v in values) or not isinstance(values[0], torch.Tensor):
            continue
        result = _traced_value(node)
        if not isinstance(result, torch.Tensor) or result.requires_grad:
            continue  # traced with autograd (lowerings have no backward): keep the aten op
        if op.name == "mean" and _route_mean_of_squares(graph, node, args):
            rewritten += 1
            continue
        try:
            impl = op.select(*values)
        except Exception as error:
            logger.debug("ir_dispatch lowering: %s left as is: %s", op.name, error)
            continue
        target = impl.lowering
        if target is None and op.name in _REDUCTIONS:
            target = op.torch_op  # selects at run time: the kit's kernel, a Python call
        if target is None:
            continue
        node.op, node.target, node.args, node.kwargs = "call_function", target, args, {}
        op._note(impl, tuple(values))  # recording() sees compile-time choices as calls
        if op.name in _SOFTMAXES:
            _fold_cast_back(graph, node, values[0])
        rewritten += 1
    if rewritten:
        logger.debug("ir_dispatch lowering: %d calls rewritten", rewritten)
    return rewritten


def lowerings_fingerprint() -> str:
    """What the pass would do, for Inductor's cache key: the mode and every lowering's source."""
    # The routing switch also keeps eager's casts (``_inductor_pass.eager_casts``): a cached
    # graph compiled without them must not be reused with them.
    parts: list[str] = [f"bi={is_batch_invariant()}", f"reductions+casts={reductions_routed()}"]
    names = {n for n, _ in (*_FUNCTIONS.values(), *_METHODS.values())} | {"mean_of_squares"}
    for name in sorted(names):
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


def _switch(name: str, default: bool) -> bool:
    """An environment switch: ``1``/``true`` on, ``0``/``false`` off, unset or empty ``default``.

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(f"{name}={value!r} is not understood; expected 1 or 0")


def lowering_enabled(default: bool = True) -> bool:
    """Whether :func:`install_lowering` may: ``IR_DISPATCH_LOWER``, or ``default`` if unset."""
    return _switch(ENV, default)


def reductions_routed() -> bool:
    """Whether the pass makes batch-invariant graphs invariant (on unless ``..._REDUCTIONS=0``).

    It routes ``mean``, ``softmax`` and ``log_softmax`` calls to the selected implementation's
    lowering or, without one, to the registry's custom op (the kit's kernel, for a Python call
    per op at run time), and has Inductor keep eager's low-precision casts
    (:func:`~ir_dispatch._inductor_pass.eager_casts`). Without both, a compiled Qwen3 decoder
    gave a prompt other logits inside a batch than alone, on an H100 and on CPU
    (``benchmarks/compile_bits.py``): Inductor's own reductions take their block shapes from
    the whole shape, and which bf16 round trips its fusions elide follows the shapes too.
    ``IR_DISPATCH_LOWER_REDUCTIONS=0`` leaves both to Inductor: faster, not batch-invariant.
    """
    return _switch(REDUCTIONS_ENV, True)


def lowerings_registered() -> bool:
    """Whether an implementation of a routed op has a lowering (if none, the pass does nothing)."""
    names = {name for name, _ in (*_FUNCTIONS.values(), *_METHODS.values())}
    return any(impl.lowering is not None for name in names for impl in getattr(ops, name).impls)


def install_lowering(default: bool = True) -> bool:
    """Put :func:`lower_graph` in Inductor's pre-grad passes; returns whether it is installed.

    Installed when :func:`lowering_enabled` (``default`` when ``IR_DISPATCH_LOWER`` is unset)
    and some implementation registered a lowering or :func:`reductions_routed` (the default),
    so a process with neither does not import Inductor for it. Passes set before
    (``torch._inductor.config.pre_grad_custom_pass``) still run, after this one. Idempotent.
    """
    if _installed:
        return True
    if not lowering_enabled(default) or not (lowerings_registered() or reductions_routed()):
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

    from ._inductor_pass import eager_casts

    eager_casts(False)

    if config.pre_grad_custom_pass is lowering:
        config.pre_grad_custom_pass = previous


def lowering_installed() -> bool:
    """Whether the pass is in Inductor's pre-grad passes now."""
    return bool(_installed)
