"""Kernel launches that skip Triton's per-call argument binding once a kernel is compiled.

Why: at decode sizes our kernels run for 2-5 µs on an H100 while a launch through
``JITFunction.run`` costs 30-60 µs of host time on the lent machines (``host_cost.py``): on
every call Triton binds ~30 arguments, derives each one's specialization (pointer dtype and
16-byte alignment, int width, divisibility by 16, equality to 1), builds a cache key from it
and looks the compiled kernel up. Outside CUDA graphs (eager models, the trainer, prefill
steps above the captured sizes) that host time, not the GPU, sets the speed.

:func:`launch_kernel` keeps its own table of compiled kernels, keyed on a summary of the same
properties computed here (at least as fine as Triton's: two calls with equal keys always get
the same specialization from Triton, so reusing its kernel is exact), and on a hit calls the
compiled kernel's launcher directly, as ``CompiledKernel.__getitem__`` does. A miss goes
through Triton's own path, which compiles (or finds) the kernel that is then kept here. So
do Triton's interpreter, non-CUDA devices (triton-ascend's runtime differs), and any process
with Triton launch hooks (profilers) set.

:class:`PreparedLaunch` serves the launch plans: its kernel, grid, trailing arguments and
options are fixed, so only the device and each tensor's dtype and alignment are looked up, and
the tensors reach the launcher as their addresses (ints), which spares the launcher a driver
call per pointer.

What is not re-checked on a hit: Triton's guard that global values a kernel read at compile
time have not changed (this package's kernels read none), and changes of
``knobs.runtime.debug`` after the first launch. ``BI_TRITON_LAUNCH_CACHE=0`` (read at import)
or :func:`set_enabled` turns the table off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from . import _platform

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1
ENV = "BI_TRITON_LAUNCH_CACHE"  # "0" turns the table off (read at import)
_enabled = [os.environ.get(ENV, "1").strip().lower() not in ("0", "false")]


class _Uncacheable(Exception):
    """An argument whose specialization this module does not model."""


def set_enabled(on: bool) -> None:
    """Turn the launch table on or off (off: every launch goes through ``JITFunction.run``)."""
    if not isinstance(on, bool):
        raise TypeError(f"set_enabled: on must be a bool, got {type(on).__name__}")
    _enabled[0] = on
    _entries.clear()


@contextlib.contextmanager
def table_off() -> Iterator[None]:
    """Every launch in the block goes through Triton's own path (to compare host costs)."""
    was = _enabled[0]
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(was)


def enabled() -> bool:
    """Whether :func:`launch_kernel` uses its table in this process (CUDA, not interpreting, on)."""
    return _enabled[0] and _supported()


@functools.cache
def _supported() -> bool:
    if _platform.interpreting() or torch.version.cuda is None or torch.version.hip:
        return False
    try:
        from triton import knobs  # noqa: F401  (Triton >= 3.4; triton-ascend 3.2 has none)
        from triton.compiler.compiler import CompiledKernel  # noqa: F401
    except ImportError:
        return False
    return True


class _Entry:
    """A compiled kernel's launcher and the trailing arguments (constexprs, defaults).

    ``launch`` is the launcher's C function when the kernel needs no scratch memory (all of
    this package's kernels): calling it skips ``CudaLauncher.__call__``, a Python frame that
    only allocates scratch. Other launchers (another Triton, scratch memory) keep ``run``.
    """

    __slots__ = ("function", "launch", "metadata", "prefix", "run", "tail")

    def __init__(self, compiled: Any, tail: tuple[Any, ...]) -> None:
        self.run = compiled.run
        self.function = compiled.function
        self.metadata = compiled.packed_metadata
        self.tail = tail
        self.launch, self.prefix = _direct_launch(compiled.run)

    def __call__(self, grid: Sequence[int], stream: Any, args: Sequence[Any]) -> None:
        g0, g1, g2 = grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1
        if self.launch is not None:
            self.launch(
                g0, g1, g2, stream, self.function, *self.prefix, self.metadata, None, None, None,
                *args, *self.tail,
            )  # fmt: skip
        else:
            self.run(
                g0, g1, g2, stream, self.function, self.metadata, None, None, None,
                *args, *self.tail,
            )  # fmt: skip


def _direct_launch(launcher: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(C launch function, its arguments before the metadata)``, or ``(None, ())``.

    Triton 3.6's ``CudaLauncher.__call__`` passes ``(grid, stream, function,
    launch_cooperative_grid, launch_pdl, global_scratch, profile_scratch, *args)`` to
    ``self.launch``; scratch is ``None`` when its size is 0. Anything else keeps ``run``.
    """
    try:
        launch = launcher.launch
        if launcher.global_scratch_size or launcher.profile_scratch_size:
            return None, ()
        return launch, (launcher.launch_cooperative_grid, launcher.launch_pdl, None, None)
    except AttributeError:
        return None, ()


_entries: dict[tuple[Any, ...], _Entry] = {}


def _arg_key(arg: Any) -> Any:
    """The properties of one argument that Triton specializes a kernel on (or finer).

    Ints map to distinct small ints (never ``True``/``False``, which equal 1 and 0 as keys):
    1 (Triton makes it a constant), 0 or 16 (divisible by 16) for i32, plus 64 for i64 and
    128 for u64. Pointers: dtype and 16-byte alignment. TMA descriptors (``TensorDescriptor``):
    dtype, block shape, padding and their ints' keys.
    """
    kind = type(arg)
    if kind is int:
        if arg == 1:
            return 1
        spec = 16 if (arg & 15) == 0 else 0
        if _INT32_MIN <= arg <= _INT32_MAX:
            return spec
        return spec + (128 if arg > _INT64_MAX else 64)
    if kind is torch.Tensor or isinstance(arg, torch.Tensor):
        return (arg.dtype, (arg.data_ptr() & 15) == 0)
    if kind is float or kind is bool or arg is None:
        return kind
    if kind.__name__ == "TensorDescriptor" and kind.__module__.startswith("triton."):
        # Triton specializes a host descriptor on its dtype and block shape; its shape and
        # strides are keyed as ints too (finer than needed, never coarser).
        sizes = tuple(map(_arg_key, (*arg.shape, *arg.strides)))
        return (arg.base.dtype, tuple(arg.block_shape), arg.padding, sizes)
    raise _Uncacheable


def _tail(kernel: Any, n_args: int, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Values of the parameters after the positional ones, in signature order."""
    values = []
    for param in kernel.params[n_args:]:
        if param.name in kwargs:
            values.append(kwargs[param.name])
        else:
            values.append(param.default)
    return tuple(values)


def _hooks_set() -> bool:
    runtime = _runtime_knobs()
    return _hook_active(runtime.launch_enter_hook) or _hook_active(runtime.launch_exit_hook)


def _hook_active(hook: Any) -> bool:
    """Triton 3.6 keeps launch hooks in a ``HookChain`` (never ``None``; empty = no hook)."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else True


@functools.cache
def _runtime_knobs() -> Any:
    from triton import knobs

    return knobs.runtime


@functools.cache
def _driver_calls() -> tuple[Any, Any]:
    """Triton's current-device and current-stream functions (what ``JITFunction.run`` asks).

    The device one is ``torch.cuda.current_device``, whose Python wrapper only makes sure CUDA
    is initialized: it is, once a CUDA tensor exists, so torch's C function is asked directly.
    """
    from triton.runtime import driver

    get_device = driver.active.get_current_device
    if get_device is torch.cuda.current_device:
        get_device = getattr(torch._C, "_cuda_getDevice", get_device)
    return get_device, driver.active.get_current_stream


class Launcher(Protocol):
    """What launches a kernel: :func:`launch_kernel`, or a traced launch in a lowering."""

    def __call__(self, kernel: Any, grid: Sequence[int], *args: Any, **kwargs: Any) -> None: ...


def launch_kernel(kernel: Any, grid: Sequence[int], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, through the table when it can serve the call.

    Args:
        kernel: a ``@triton.jit`` function.
        grid: the launch grid, 1 to 3 ints.
        args: the kernel's leading parameters, positionally (tensors, ints, floats, bools).
        kwargs: the remaining parameters by name (constexprs: hashable values, never tensors)
            and launch options (``num_warps``, ``num_stages``).
    """
    if not (_enabled[0] and _supported()) or _hooks_set():
        kernel[grid](*args, **kwargs)
        return
    get_device, get_stream = _driver_calls()
    device = get_device()
    try:
        key = (kernel, device, *kwargs.items(), *map(_arg_key, args))
        entry = _entries.get(key)
    except (_Uncacheable, TypeError):  # an unmodelled argument, or an unhashable constexpr
        kernel[grid](*args, **kwargs)
        return
    if entry is None:
        _first_launch(key, kernel, grid, args, kwargs)
        return
    entry(grid, get_stream(device), args)


def _first_launch(
    key: tuple[Any, ...], kernel: Any, grid: Sequence[int], args: tuple, kwargs: dict[str, Any]
) -> _Entry | None:
    """Launch through Triton (compiling if needed); keep and return the compiled kernel's entry.

    ``None`` when it cannot be kept (pre-run hooks, tensor keyword arguments, another launcher).
    """
    compiled = kernel[grid](*args, **kwargs)
    if compiled is None or kernel.pre_run_hooks:
        return None
    if hasattr(compiled, "result"):  # Triton's asynchronous compile mode
        compiled = compiled.result()
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None  # tensors are keyed by identity: never worth a table entry
    if getattr(compiled, "packed_metadata", None) is None:
        return None
    entry = _Entry(compiled, _tail(kernel, len(args), kwargs))
    _entries[key] = entry
    return entry


class PreparedLaunch:
    """One kernel with its grid, trailing arguments and options fixed; called with tensors.

    Launch plans replay the same launch with new tensors at every step. Everything but the
    tensors is fixed here, so the table key of a call reduces to the device and each tensor's
    dtype and 16-byte alignment (the only properties of a pointer Triton specializes on), and
    a hit goes straight to the compiled kernel. Anything the table does not serve (interpreter,
    NPU, hooks, table off) goes through :func:`launch_kernel`.
    """

    __slots__ = ("_entries", "grid", "kernel", "options", "trailing")

    def __init__(
        self, kernel: Any, grid: Sequence[int], trailing: Sequence[Any], options: dict[str, Any]
    ) -> None:
        self.kernel = kernel
        self.grid = tuple(grid)
        self.trailing = tuple(trailing)  # the arguments after the tensors, in kernel order
        self.options = options  # constexprs and launch options, by name
        self._entries: dict[tuple[Any, ...], _Entry] = {}

    def __call__(self, *tensors: torch.Tensor) -> None:
        """``kernel[grid](*tensors, *trailing, **options)``."""
        if not (_enabled[0] and _supported()) or _hooks_set():
            self.kernel[self.grid](*tensors, *self.trailing, **self.options)
            return
        get_device, get_stream = _driver_calls()
        device = get_device()
        pointers = [t.data_ptr() for t in tensors]
        key = (device, *[(t.dtype, not p & 15) for t, p in zip(tensors, pointers, strict=True)])
        entry = self._entries.get(key)
        if entry is None:
            entry = self._first(key, device, (*tensors, *self.trailing))
            if entry is None:
                return
        # Pointers as ints: for a tensor the launcher would call ``data_ptr()`` again and ask
        # the driver whether the address is device memory (``cuPointerGetAttribute``), per
        # tensor and launch; a plan's tensors were checked when its first launch compiled.
        entry(self.grid, get_stream(device), (*pointers, *self.trailing))

    def _first(self, key: tuple[Any, ...], device: Any, args: tuple[Any, ...]) -> _Entry | None:
        """Launch through :func:`launch_kernel` now; the table's entry for later calls.

        Returns ``None`` after launching (the call is done); later calls find the entry.
        """
        try:
            table_key = (self.kernel, device, *self.options.items(), *map(_arg_key, args))
            found = _entries.get(table_key)
        except (_Uncacheable, TypeError):
            self.kernel[self.grid](*args, **self.options)
            return None
        if found is None:
            found = _first_launch(table_key, self.kernel, self.grid, args, self.options)
            if found is not None and len(self._entries) < _PREPARED_LIMIT:
                self._entries[key] = found
            return None
        if len(self._entries) < _PREPARED_LIMIT:
            self._entries[key] = found
        return found


_PREPARED_LIMIT = 64  # (device, alignment) combinations kept per prepared launch


def cached_kernels() -> int:
    """How many (kernel, specialization) entries the table holds (for tests and ``info``)."""
    return len(_entries)


__all__ = [
    "ENV", "Launcher", "PreparedLaunch", "cached_kernels", "enabled", "launch_kernel",
    "set_enabled", "table_off",
]  # fmt: skip
