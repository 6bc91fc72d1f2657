"""The op registry: native references, provider implementations, and mode-aware selection.

An op is declared from its native (reference) implementation. Providers register further
implementations with a ``batch_invariant`` flag, the platforms they run on, an argument check
and a priority. :meth:`IrOp.select` walks the implementations by priority and takes the first
that runs on the arguments' platform and accepts them; in batch-invariant mode only
implementations that are batch-invariant on that platform are eligible, and if none is left it
raises :class:`NoBatchInvariantImplError` explaining every rejection - it never falls back to a
batch-variant kernel.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .layout import LayoutKey, layout_key
from .mode import is_batch_invariant
from .platform import PlatformKind, platform_of

logger = logging.getLogger("ir_dispatch")

NAMESPACE = "ir_dispatch"
#: How the ops reach PyTorch (benchmarks label their results with it).
REGISTRATION = "torch.library.Library"
NATIVE = "native"
RESERVED_PROVIDERS = frozenset({NATIVE})
DEFAULT_PRIORITY = 10
NATIVE_PRIORITY = 0
REMEMBERED_LAYOUTS = 4096
"""Bound of the layouts whose implementation each op remembers (models use a few dozen)."""
REMEMBER_ENV = "IR_DISPATCH_REMEMBER"
"""``0`` turns remembered selection off (read at import; :func:`set_remembering` at run time)."""
_remembering = [os.environ.get(REMEMBER_ENV, "1").strip().lower() not in ("0", "false")]


def set_remembering(on: bool) -> None:
    """Turn remembered selection on or off (off: every call selects, as :meth:`IrOp.select`).

    Either way every op forgets what it remembered. For debugging a provider whose
    ``layout_only`` promise is in doubt, and for comparing host costs.
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_remembering: on must be a bool, got {type(on).__name__}")
    _remembering[0] = on
    for op in _OPS.values():
        op.forget_layouts()


def remembering() -> bool:
    """Whether ops remember their selection per argument layout in this process."""
    return _remembering[0]


Fn = TypeVar("Fn", bound=Callable[..., Any])
SupportCheck = Callable[..., "bool | str"]
ALL_PLATFORMS = frozenset(PlatformKind)


@dataclass(frozen=True)
class Impl:
    """One implementation of an op.

    Attributes:
        op_name: the op it implements.
        provider: who provides it (``native``, ``triton``, ``cutlass_fp8``, ``cpu``, ...).
        fn: the callable; same signature as the op's native function.
        batch_invariant: whether each output row is independent of the batch it sits in.
        platforms: where it can run at all.
        supports_args: ``True`` if it accepts the arguments; ``False`` or a reason string if not.
        priority: higher runs first; ties keep registration order.
        variant_on: platforms where it is batch-variant despite ``batch_invariant``, with why.
        note: why it is (or is not) batch-invariant, shown by :func:`explain`.
        layout_only: ``supports_args`` depends only on the arguments' :func:`layout_key`
            (shapes, strides, dtypes, devices, scalar values) and the mode, so its verdict may
            be remembered per layout.
        prepare: given a call's arguments after a successful call, a function that serves
            every later call with the same layout (``None``: call ``fn``), e.g. a launch plan.
        lowering: ``fn`` as ``torch.compile`` can trace it (torch ops and
            ``torch.library.triton_op`` calls), put in compiled graphs in its place
            (:mod:`ir_dispatch.lowering`); ``None``: compiled graphs reach ``fn`` through the
            aten overrides.
    """

    op_name: str
    provider: str
    fn: Callable[..., Any]
    batch_invariant: bool
    platforms: frozenset[PlatformKind] = ALL_PLATFORMS
    supports_args: SupportCheck | None = None
    priority: int = DEFAULT_PRIORITY
    variant_on: Mapping[PlatformKind, str] = field(default_factory=dict)
    note: str = ""
    layout_only: bool = False
    prepare: Callable[..., Callable[..., Any] | None] | None = None
    lowering: Callable[..., Any] | None = None

    def is_batch_invariant_on(self, platform: PlatformKind) -> bool:
        return self.batch_invariant and platform not in self.variant_on

    def rejection(
        self, platform: PlatformKind, batch_invariant_only: bool, args: tuple, kwargs: dict
    ) -> str | None:
        """Why this implementation cannot serve the call, or ``None`` if it can."""
        if platform not in self.platforms:
            names = ", ".join(sorted(p.value for p in self.platforms))
            return f"runs on {names}, not {platform.value}"
        if batch_invariant_only and not self.is_batch_invariant_on(platform):
            why = self.variant_on.get(platform) or self.note or "not flagged batch_invariant"
            return f"batch-variant on {platform.value}: {why}"
        if self.supports_args is not None:
            verdict = self.supports_args(*args, **kwargs)
            if verdict is not True:
                return (
                    verdict if isinstance(verdict, str) and verdict else "arguments not supported"
                )
        return None


class NoBatchInvariantImplError(RuntimeError):
    """Raised when no eligible implementation accepts a call; the message lists every rejection."""


class UnknownOpError(KeyError):
    """Raised for an op name that was never declared; the message lists the declared ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


def describe_args(args: Iterable[Any]) -> str:
    """Shapes, dtypes, devices and strides of tensor arguments; ``repr`` of the rest."""
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            layout = "" if a.is_contiguous() else f", strides={tuple(a.stride())}"
            parts.append(
                f"Tensor{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}"
                f" on {a.device}{layout}"
            )
        else:
            parts.append(repr(a))
    return "(" + ", ".join(parts) + ")"


class _DispatchRecorder:
    """Counts which provider served which op while :func:`recording` is active."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def providers(self) -> dict[str, list[str]]:
        """Op name -> providers that served it, in first-seen order."""
        out: dict[str, list[str]] = {}
        for op_name, provider in self.counts:
            out.setdefault(op_name, []).append(provider)
        return out


_recorders: list[_DispatchRecorder] = []
_recorders_lock = threading.Lock()


@contextmanager
def recording() -> Iterator[_DispatchRecorder]:
    """Record (op, provider) for every dispatch in the block, from any thread.

    Example:
        >>> with recording() as rec:
        ...     model(x)
        >>> rec.providers()  # {"mm": ["triton"], "rms_norm": ["triton"]}
    """
    rec = _DispatchRecorder()
    with _recorders_lock:
        _recorders.append(rec)
    try:
        yield rec
    finally:
        with _recorders_lock:
            _recorders.remove(rec)


class IrOp:
    """An op: its native reference plus the providers' implementations.

    Call the op (``op(*args)``) to go through its torch custom op ``ir_dispatch::<name>``, which
    ``torch.compile(fullgraph=True)`` traces as one node and which selects the implementation at
    run time, so the batch-invariant mode active at call time decides.
    """

    def __init__(
        self,
        name: str,
        native: Callable[..., Any],
        *,
        has_reduction: bool,
        native_variant_on: Mapping[PlatformKind, str] | None = None,
        doc: str = "",
    ) -> None:
        variant_on = dict(native_variant_on or {})
        if variant_on and not has_reduction:
            raise ValueError(f"op {name!r}: native_variant_on given but has_reduction=False")
        self.name = name
        self.native = native
        self.has_reduction = has_reduction
        self.__doc__ = doc or native.__doc__
        self._impls: dict[str, Impl] = {}
        self._sorted: list[Impl] = []
        self._explicit_order: list[str] | None = None
        # (what is remembered per layout, who may be remembered per platform): replaced as one
        # whenever the registry changes, so a call never mixes an old choice into a new table.
        self._memo: Memo = ({}, {})
        self._lock = threading.Lock()
        self._add(
            Impl(
                op_name=name,
                provider=NATIVE,
                fn=native,
                batch_invariant=True,
                priority=NATIVE_PRIORITY,
                variant_on=variant_on,
                note="reference implementation without cross-row reductions"
                if not has_reduction
                else "reference implementation",
            )
        )
        self.torch_op = self._make_custom_op()

    # ----------------------------------------------------------------- registration
    def register_impl(
        self,
        provider: str,
        *,
        batch_invariant: bool,
        platforms: Iterable[PlatformKind | str] | None = None,
        supports_args: SupportCheck | None = None,
        priority: int = DEFAULT_PRIORITY,
        note: str = "",
        layout_only: bool = False,
        prepare: Callable[..., Callable[..., Any] | None] | None = None,
        lowering: Callable[..., Any] | None = None,
    ) -> Callable[[Fn], Fn]:
        """Decorator registering ``fn`` as ``provider``'s implementation of this op.

        Registering the same provider again replaces it (so plugins may run twice).

        Args:
            provider: provider name; ``native`` is reserved.
            batch_invariant: whether each output row is independent of the rest of the batch.
            platforms: platforms it runs on (``PlatformKind`` or their names); all if omitted.
            supports_args: predicate over the call's arguments: ``True`` to accept, ``False``
                or a reason string to decline.
            priority: higher is tried first; the native reference has priority 0.
            note: why it is batch-invariant (fixed reduction order, ...), shown by ``explain``.
            layout_only: ``supports_args`` looks only at shapes, strides, dtypes, devices,
                scalar values and the mode (never at contents, addresses or global state), so
                dispatch may remember the choice per argument layout.
            prepare: called once per layout after a successful call with its arguments;
                returns a function with ``fn``'s signature that serves later calls with that
                layout (a launch plan), or ``None`` to keep calling ``fn``.
            lowering: ``fn`` in a form ``torch.compile`` traces, which compiled graphs run in
                its place (see :mod:`ir_dispatch.lowering`).
        """
        if provider in RESERVED_PROVIDERS:
            raise ValueError(f"provider name {provider!r} is reserved; choose another name")
        plats = (
            ALL_PLATFORMS if platforms is None else frozenset(PlatformKind(p) for p in platforms)
        )

        def decorator(fn: Fn) -> Fn:
            self._add(
                Impl(
                    op_name=self.name,
                    provider=provider,
                    fn=fn,
                    batch_invariant=batch_invariant,
                    platforms=plats,
                    supports_args=supports_args,
                    priority=priority,
                    note=note,
                    layout_only=layout_only,
                    prepare=prepare,
                    lowering=lowering,
                )
            )
            return fn

        return decorator

    def unregister_impl(self, provider: str) -> None:
        """Remove a provider's implementation (the native one cannot be removed)."""
        if provider == NATIVE:
            raise ValueError("the native implementation cannot be unregistered")
        with self._lock:
            if self._impls.pop(provider, None) is not None:
                self._resort()

    def set_priority(self, providers: list[str] | None) -> None:
        """Force an explicit provider order (``None`` returns to numeric priorities).

        Providers not listed keep their numeric order after the listed ones.
        """
        if providers is not None:
            unknown = [p for p in providers if p not in self._impls]
            if unknown:
                raise ValueError(
                    f"op {self.name!r}: unknown providers {unknown};"
                    f" registered: {sorted(self._impls)}"
                )
        with self._lock:
            self._explicit_order = list(providers) if providers is not None else None
            self._resort()

    def _add(self, impl: Impl) -> None:
        with self._lock:
            self._impls[impl.provider] = impl
            self._resort()

    def _resort(self) -> None:
        order = list(self._impls.values())  # dict keeps registration order; sort is stable
        order.sort(key=lambda i: -i.priority)
        if self._explicit_order is not None:
            rank = {p: n for n, p in enumerate(self._explicit_order)}
            order.sort(key=lambda i: rank.get(i.provider, len(rank)))
        self._sorted = order
        self._memo = ({}, _rememberable(order))

    @property
    def impls(self) -> list[Impl]:
        """Implementations in the order dispatch tries them."""
        return list(self._sorted)

    def impl(self, provider: str) -> Impl:
        try:
            return self._impls[provider]
        except KeyError:
            raise KeyError(
                f"op {self.name!r} has no provider {provider!r}; registered: {sorted(self._impls)}"
            ) from None

    # ----------------------------------------------------------------- selection
    def evaluate(
        self, *args: Any, batch_invariant_only: bool | None = None, **kwargs: Any
    ) -> list[tuple[Impl, str | None]]:
        """Every implementation in dispatch order with its rejection (``None`` = eligible)."""
        bi = is_batch_invariant() if batch_invariant_only is None else batch_invariant_only
        platform = platform_of(*args, *kwargs.values())
        return [(impl, impl.rejection(platform, bi, args, kwargs)) for impl in self._sorted]

    def select(self, *args: Any, **kwargs: Any) -> Impl:
        """The implementation that serves this call in the current mode.

        Raises:
            NoBatchInvariantImplError: nothing eligible accepts the arguments.
        """
        bi = is_batch_invariant()
        platform = platform_of(*args, *kwargs.values())
        for impl in self._sorted:
            if impl.rejection(platform, bi, args, kwargs) is None:
                return impl
        raise self._no_impl_error(bi, platform, args, kwargs)

    def _no_impl_error(
        self, bi: bool, platform: PlatformKind, args: tuple, kwargs: dict
    ) -> NoBatchInvariantImplError:
        lines = [
            f"no {'batch-invariant ' if bi else ''}implementation of op {self.name!r} accepts "
            f"{describe_args([*args, *kwargs.values()])} on {platform.value}:"
        ]
        for impl in self._sorted:
            lines.append(f"  - {impl.provider}: {impl.rejection(platform, bi, args, kwargs)}")
        if bi:
            lines.append(
                "Batch-invariant mode never falls back to a batch-variant kernel: install a "
                'provider package for this platform (e.g. `pip install "vllm-bi-plugin[cuda]"`) '
                "or leave the mode."
            )
        return NoBatchInvariantImplError("\n".join(lines))

    def call_selected(self, *args: Any, **kwargs: Any) -> Any:
        """Select and run an implementation directly (no custom-op boundary).

        The choice is remembered per argument layout and mode when every implementation tried
        up to it declared ``layout_only``; a remembered call skips selection and runs what the
        implementation's ``prepare`` returned (its launch plan) or its ``fn``.
        """
        key = None
        memo = self._memo
        if not kwargs and _remembering[0]:
            key = layout_key(is_batch_invariant(), *args)
            found = memo[0].get(key) if key is not None else None
            if found is not None:
                impl, run, _ = found
                if _recorders or logger.isEnabledFor(logging.DEBUG):
                    self._note(impl, args)
                return run(*args)
        return self._select_and_remember(memo, key, args, kwargs)

    def call_into(self, out: torch.Tensor, *args: Any) -> torch.Tensor:
        """:meth:`call_selected` with the result in ``out`` (aten's ``out=`` overloads).

        Written in place when the remembered function can (its ``prepare`` result has
        ``writes_out``: called with ``out=``, it returns ``out`` when it wrote there), else
        copied, ``out`` resized first if its shape differs (as aten does).
        """
        memo = self._memo
        key = layout_key(is_batch_invariant(), *args) if _remembering[0] else None
        found = memo[0].get(key) if key is not None else None
        if found is not None:
            impl, run, writes_out = found
            if _recorders or logger.isEnabledFor(logging.DEBUG):
                self._note(impl, args)
            result = run(*args, out=out) if writes_out else run(*args)
        else:
            result = self._select_and_remember(memo, key, args, {})
        if result is out:
            return out
        if out.shape != result.shape:
            out.resize_(result.shape)
        return out.copy_(result)

    def _select_and_remember(
        self, memo: Memo, key: LayoutKey | None, args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        """Select, call, and remember the choice under ``key`` when that is allowed.

        ``memo`` is the table read before the call: a registration meanwhile replaced it, so a
        choice made under the old registry never lands in the new table.
        """
        impl = self.select(*args, **kwargs)
        result = self.call_impl(impl, *args, **kwargs)
        remembered, rememberable = memo
        if key is not None and impl.provider in rememberable[platform_of(*args)]:
            _remember(remembered, key, impl, args)
        return result

    def remembered_layouts(self) -> int:
        """How many argument layouts have their implementation remembered (tests, ``info``)."""
        return len(self._memo[0])

    def remembered_for(self, *args: Any) -> tuple[Impl, Callable[..., Any]] | None:
        """What serves a call with ``args``' layout in the current mode, if it is remembered."""
        key = layout_key(is_batch_invariant(), *args)
        found = self._memo[0].get(key) if key is not None else None
        return None if found is None else (found[0], found[1])

    def forget_layouts(self) -> None:
        """Forget every remembered layout (the next call of each selects again)."""
        self._memo = ({}, self._memo[1])

    def call_impl(self, impl: Impl, *args: Any, **kwargs: Any) -> Any:
        """Run an implementation the caller already got from :meth:`select`, recorded and logged.

        For callers that inspect the choice first (e.g. to keep another library's kernel when
        only the native reference would serve) without paying for selection twice.
        """
        self._note(impl, args)
        return impl.fn(*args, **kwargs)

    def _note(self, impl: Impl, args: tuple) -> None:
        """Count the call for :func:`recording` and log it at DEBUG."""
        if _recorders:
            for rec in list(_recorders):
                rec.counts[(self.name, impl.provider)] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> %s %s", self.name, impl.provider, describe_args(args))

    # ----------------------------------------------------------------- torch custom op
    def _make_custom_op(self) -> torch._ops.OpOverload:
        """Register ``ir_dispatch::<name>`` with the dispatcher and return its overload.

        The registrations are those ``torch.library.custom_op`` makes (the schema it would infer,
        the ``pt2_compliant`` tag, a fake kernel, its autograd kernel, a
        ``CompositeExplicitAutograd`` kernel that dynamo never traces), made directly on a
        ``torch.library.Library`` fragment: calls skip the ``CustomOpDef`` wrapper, its per-call
        kernel lookups and its aliasing check (:func:`_normalize_outputs` already makes every
        output fresh), about 5 us of an eager CPU call (``bench/bench_dispatch_overhead.py``).
        """
        qualname = f"{NAMESPACE}::{self.name}"
        schema = torch.library.infer_schema(self.native, mutates_args=())
        lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        lib.define(self.name + schema, tags=(torch.Tag.pt2_compliant_tag,))
        overload: torch._ops.OpOverload = getattr(getattr(torch.ops, NAMESPACE), self.name).default
        call, native, normalize = self.call_selected, self.native, _normalize_outputs

        def run(*args: Any, **kwargs: Any) -> Any:
            return normalize(call(*args, **kwargs), args)

        def fake(*args: Any, **kwargs: Any) -> Any:
            return normalize(native(*args, **kwargs), ())  # fake tensors have no storage

        def no_derivative(ctx: Any, *grads: Any) -> Any:
            raise RuntimeError(
                f"{qualname} has no derivative formula: differentiate through bi-train's "
                "autograd functions (bi_train.linear, rms_norm, ...), which call these ops"
            )

        # Dynamo must never trace the kernel (selection happens at run time, not trace time).
        lib.impl(self.name, torch.compiler.disable(run), "CompositeExplicitAutograd")
        torch.library.register_fake(qualname, fake, lib=lib)
        # Like custom_op without a formula: below autograd when no input needs a gradient,
        # else an output whose backward raises.
        torch.library.register_autograd(qualname, no_derivative, lib=lib)
        self._library = lib  # registrations live as long as the library object
        return overload

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.torch_op(*args, **kwargs)

    def __repr__(self) -> str:
        providers = ", ".join(f"{i.provider}({i.priority})" for i in self._sorted)
        return f"IrOp({self.name!r}, has_reduction={self.has_reduction}, impls=[{providers}])"


Remembered = tuple[Impl, Callable[..., Any], bool]
"""A remembered choice: the implementation, what runs the call, whether it can write ``out=``."""


Memo = tuple[dict[LayoutKey, Remembered], dict[PlatformKind, frozenset[str]]]
"""What an op remembers per layout, and which providers may be remembered per platform."""


def _remember(table: dict[LayoutKey, Remembered], key: LayoutKey, impl: Impl, args: tuple) -> None:
    """Keep ``impl`` (and what its ``prepare`` gives) for calls with this layout.

    A ``prepare`` hook that fails leaves the layout to ``fn`` (logged): the call it followed
    already succeeded, and ``fn`` is what selection chose.
    """
    run = None
    if impl.prepare is not None:
        try:
            run = impl.prepare(*args)
        except Exception:
            logger.warning(
                "%s: provider %s's prepare hook failed; calls keep its fn",
                impl.op_name, impl.provider, exc_info=True,
            )  # fmt: skip
    if len(table) < REMEMBERED_LAYOUTS:
        table[key] = (impl, run or impl.fn, bool(getattr(run, "writes_out", False)))


def _rememberable(order: list[Impl]) -> dict[PlatformKind, frozenset[str]]:
    """Per platform, the providers whose selection there depends on the argument layout only.

    Those are the ones where every implementation tried before them (and they themselves)
    runs elsewhere (the devices are in the layout), declared ``layout_only`` or has no
    ``supports_args``.
    """
    table = {}
    for platform in PlatformKind:
        providers = set()
        for impl in order:
            if platform not in impl.platforms:
                continue
            if not (impl.layout_only or impl.supports_args is None):
                break
            providers.add(impl.provider)
        table[platform] = frozenset(providers)
    return table


def _normalize_outputs(result: Any, args: tuple) -> Any:
    """Fresh, contiguous outputs: what the custom-op contract and its fake kernel promise.

    Custom ops may not return views of their inputs, and the real and fake kernels must agree on
    strides (Inductor asserts them), while providers are free to return views or strided results.
    """
    if isinstance(result, tuple):
        return tuple(_normalize_outputs(r, args) for r in result)
    if not isinstance(result, torch.Tensor):
        return result
    if not result.is_contiguous():
        return result.contiguous()
    if args and result.numel():
        storage = result.untyped_storage().data_ptr()
        for a in args:
            if (
                isinstance(a, torch.Tensor)
                and a.numel()
                and a.untyped_storage().data_ptr() == storage
            ):
                return result.clone()
    return result


# --------------------------------------------------------------------- the op table
_OPS: dict[str, IrOp] = {}


def register_op(
    name: str | None = None,
    *,
    has_reduction: bool,
    native_variant_on: Mapping[PlatformKind, str] | None = None,
) -> Callable[[Callable[..., Any]], IrOp]:
    """Declare an op from its native implementation.

    Args:
        name: op name (defaults to the function's name); becomes ``ir_dispatch::<name>``.
        has_reduction: whether an output element sums (or maxes) over several input elements -
            the only way an op can be batch-variant.
        native_variant_on: platforms where the native implementation is known to be
            batch-variant, each with the reason (measured or documented).

    Example:
        >>> @register_op(has_reduction=True, native_variant_on={PlatformKind.CUDA: "split-K"})
        ... def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ...     return torch.mm(a, b)
    """

    def decorator(native: Callable[..., Any]) -> IrOp:
        op_name = name or native.__name__
        if op_name in _OPS:
            raise ValueError(f"op {op_name!r} is already declared")
        op = IrOp(op_name, native, has_reduction=has_reduction, native_variant_on=native_variant_on)
        _OPS[op_name] = op
        return op

    return decorator


def get_op(name: str) -> IrOp:
    """The declared op called ``name``."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op {name!r}; declared ops: {', '.join(sorted(_OPS))}"
        ) from None


def list_ops() -> list[IrOp]:
    """Every declared op, by name."""
    return [_OPS[n] for n in sorted(_OPS)]
