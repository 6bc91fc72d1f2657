"""GEMMs and row reductions as ``torch.compile`` traces them: ``triton_op``s Inductor launches.

The eager ops run a launch plan from Python at every call, and under ``torch.compile`` they are
reached the same way, through Inductor's extern ATen call and the aten overrides. ir-dispatch's
lowering pass (:mod:`ir_dispatch.lowering`) puts these functions in compiled graphs instead:
each folds its arguments as its eager op does (the same helpers) and calls
``bi_triton::batched_gemm``, a ``torch.library.triton_op`` whose launch comes from the same
:func:`~.gemm.describe`. Inductor traces through it and launches the kernel from its own
generated code, with the kernel, chain, tiles and arguments of the eager call: the same bits
(``tests/test_lowered.py``: called directly everywhere, compiled on a GPU).

Inductor gives a Triton kernel's inputs the exact strides they had when traced, which the
launch's stride arguments assume. Functionalization copies every tensor a kernel may write
before the launch (and back after, for a graph input); torch finds those by reading the
kernel's TTIR, and through the K loop's carried pointers it counts the GEMM's inputs as
written too, which would copy every weight at every call. :func:`declare_kernel_writes` tells
it what the two GEMM kernels write: the output, and the partials and counters of a split.

The row reductions work the same way: ``bi_triton::mean`` (and ``bi_triton::mean_of_squares``,
which the pass puts where a graph takes ``x.float().pow(2).mean(...)``) and
``bi_triton::softmax`` (with ``log``) lay their rows out with the eager ops' helpers
(:func:`~.mean.mean_rows`, :func:`~.softmax.softmax_rows`) and launch through the eager ops'
own ``_launch`` with a launcher that traces. ir-dispatch's pass uses them while its reduction
routing is on (the default; ``IR_DISPATCH_LOWER_REDUCTIONS=0`` turns it off).

Registered as lowerings on CUDA only: Inductor launches user Triton kernels on GPUs, and
Triton's interpreter runs the same body here when the op is called directly.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch

from .gemm import _gemm_persistent_kernel, _gemm_split_kernel, describe
from .matmul import linear_operands, matmul_operands
from .mean import _chunk_mean_kernel, _chunk_sum_kernel, _mean_rows_kernel, mean_rows
from .mean import _launch as _launch_mean_rows
from .softmax import _chunk_stats_kernel, _chunk_write_kernel, _softmax_row_kernel, softmax_rows
from .softmax import _launch as _launch_softmax_rows


def launch_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    alpha: float,
    beta: float,
    wrap: Callable[[Any], Any],
) -> torch.Tensor:
    """:func:`~.gemm.batched_gemm` with each kernel passed through ``wrap`` before its launch.

    ``wrap`` is ``wrap_triton`` inside the ``triton_op``; tests pass the identity to run the
    same body in Triton's interpreter. Fresh partials and zeroed split-K counters come from
    ``torch.empty``/``torch.zeros`` (a traced graph owns its buffers), where the eager path
    reuses a per-stream counter pool that its kernels leave zeroed.
    """
    launch = describe(a, b, bias, alpha, beta)
    out = torch.empty(launch.out_shape, dtype=launch.out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    bias_arg = bias if launch.has_bias and bias is not None else out
    if not launch.split_kernel:
        wrap(_gemm_persistent_kernel)[launch.grid](
            a, b, out, bias_arg, *launch.ints, **launch.options
        )
        return out
    if launch.partials:
        part = torch.empty(launch.partials, dtype=torch.float32, device=a.device)
        counters = torch.zeros(launch.tiles, dtype=torch.int32, device=a.device)
    else:
        part, counters = out, out  # never touched
    wrap(_gemm_split_kernel)[launch.grid](
        a, b, out, bias_arg, part, counters, *launch.ints, **launch.options
    )
    return out


def traced_launcher(wrap: Callable[[Any], Any]) -> Any:
    """A :class:`~.._launch_cache.Launcher` that launches ``wrap(kernel)[grid](...)``."""

    def launch(kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
        wrap(kernel)[grid](*args, **kwargs)

    return launch


def launch_mean(
    x: torch.Tensor,
    dim: list[int] | None,
    keepdim: bool,
    dtype: torch.dtype | None,
    wrap: Callable[[Any], Any],
    square: bool = False,
) -> torch.Tensor:
    """:func:`~.mean.mean`'s launch with each kernel passed through ``wrap`` (no plan kept).

    ``square`` (with ``dtype`` fp32): :func:`~.mean.mean_of_squares`'s.
    """
    rows = mean_rows(x, dim, keepdim, dtype)
    if rows.x2 is not None:
        _launch_mean_rows(rows.x2, rows.out, rows.round_to, traced_launcher(wrap), square=square)
    return rows.out.view(rows.shape)


def launch_softmax(
    x: torch.Tensor, dim: int, dtype: torch.dtype | None, log: bool, wrap: Callable[[Any], Any]
) -> torch.Tensor:
    """:func:`~.softmax.softmax`'s (``log``: ``log_softmax``'s) launch through ``wrap``."""
    op = "log_softmax" if log else "softmax"
    rows = softmax_rows(op, x, dim, dtype)
    if rows.x2 is not None:
        _launch_softmax_rows(rows.x2, rows.out2, log, rows.round_to, traced_launcher(wrap))
    return rows.result()


def _python_function(kernel: Any) -> Any:
    """The Python function under a Triton kernel object.

    Unwraps ``JITFunction`` and the one-config ``Autotuner`` torch puts around a kernel launched
    with ``num_warps``/``num_stages``.
    """
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel


def _written(kernel: Any, args: dict[str, Any]) -> list[str] | None:
    """The pointer arguments one of our kernels writes (of those passed); ``None`` for others.

    ``args`` holds the launch's arguments and constexprs by name.
    """
    fn = _python_function(kernel)
    if fn is _python_function(_gemm_split_kernel):
        written = ["c_ptr", "part_ptr", "count_ptr"] if args.get("SPLIT") else ["c_ptr"]
    else:
        found = _kernel_writes().get(fn)
        if found is None:
            return None
        written = found
    return [name for name in written if name in args]


@functools.cache
def _kernel_writes() -> dict[Any, list[str]]:
    """This package's kernels (their Python functions) -> the pointers each writes.

    The split GEMM kernel, whose writes depend on ``SPLIT``, is :func:`_written`'s own case.
    """
    kernels = {
        _gemm_persistent_kernel: ["c_ptr"],
        _mean_rows_kernel: ["out_ptr"],
        _chunk_sum_kernel: ["part_ptr"],
        _chunk_mean_kernel: ["out_ptr"],
        _softmax_row_kernel: ["out_ptr"],
        _chunk_stats_kernel: ["stats_ptr"],
        _chunk_write_kernel: ["out_ptr"],
    }
    return {_python_function(kernel): written for kernel, written in kernels.items()}


def declare_kernel_writes() -> bool:
    """Make torch's functionalization see only what our kernels write; whether it could.

    The kernels: the GEMMs and the row reductions (:func:`_written`).

    Wraps ``torch._higher_order_ops.triton_kernel_wrap``'s ``identify_mutated_tensors`` (torch
    up to 2.12) or ``get_mutated_tensors`` (later): other kernels keep torch's own analysis.
    Without either, inputs are copied around each launch (correct, slower).
    """
    try:
        from torch._higher_order_ops import triton_kernel_wrap as wrap
    except ImportError:
        return False
    identify = getattr(wrap, "identify_mutated_tensors", None)
    if identify is not None and not getattr(identify, "_bi_triton", False):

        def identify_mutated_tensors(kernel: Any, kwargs: dict[str, Any], *rest: Any) -> Any:
            written = _written(kernel, kwargs)
            return identify(kernel, kwargs, *rest) if written is None else written

        identify_mutated_tensors._bi_triton = True  # type: ignore[attr-defined]
        setattr(wrap, "identify_mutated_tensors", identify_mutated_tensors)  # noqa: B010
    get = getattr(wrap, "get_mutated_tensors", None)
    table = getattr(wrap, "kernel_side_table", None)
    if get is not None and table is not None and not getattr(get, "_bi_triton", False):

        def get_mutated_tensors(
            kernel_idx: int, constant_args_idx: int, kwargs: dict[str, Any], *rest: Any
        ) -> Any:
            constants = table.get_constant_args(constant_args_idx)
            written = _written(table.get_kernel(kernel_idx), {**kwargs, **constants})
            if written is None:
                return get(kernel_idx, constant_args_idx, kwargs, *rest)
            return [name for name in written if isinstance(kwargs.get(name), torch.Tensor)]

        get_mutated_tensors._bi_triton = True  # type: ignore[attr-defined]
        setattr(wrap, "get_mutated_tensors", get_mutated_tensors)  # noqa: B010
    return identify is not None or get is not None


@functools.cache
def batched_gemm_op() -> Any:
    """The ``bi_triton::batched_gemm`` op, defined on first use (with the writes declared)."""
    from torch.library import triton_op, wrap_triton

    declare_kernel_writes()

    @triton_op("bi_triton::batched_gemm", mutates_args=())
    def batched_gemm(
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None,
        alpha: float,
        beta: float,
    ) -> torch.Tensor:
        return launch_gemm(a, b, bias, alpha, beta, wrap_triton)

    return batched_gemm


@functools.cache
def mean_op() -> Any:
    """The ``bi_triton::mean`` op, defined on first use (with the writes declared)."""
    from torch.library import triton_op, wrap_triton

    declare_kernel_writes()

    @triton_op("bi_triton::mean", mutates_args=())
    def mean(
        x: torch.Tensor, dim: list[int] | None, keepdim: bool, dtype: torch.dtype | None
    ) -> torch.Tensor:
        return launch_mean(x, dim, keepdim, dtype, wrap_triton)

    return mean


@functools.cache
def mean_of_squares_op() -> Any:
    """The ``bi_triton::mean_of_squares`` op, defined on first use (with the writes declared)."""
    from torch.library import triton_op, wrap_triton

    declare_kernel_writes()

    @triton_op("bi_triton::mean_of_squares", mutates_args=())
    def mean_of_squares(x: torch.Tensor, dim: list[int] | None, keepdim: bool) -> torch.Tensor:
        return launch_mean(x, dim, keepdim, torch.float32, wrap_triton, square=True)

    return mean_of_squares


@functools.cache
def softmax_op() -> Any:
    """The ``bi_triton::softmax`` op (``log``: log_softmax), defined on first use."""
    from torch.library import triton_op, wrap_triton

    declare_kernel_writes()

    @triton_op("bi_triton::softmax", mutates_args=())
    def softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None, log: bool) -> torch.Tensor:
        return launch_softmax(x, dim, dtype, log, wrap_triton)

    return softmax


def lowered_mean(
    x: torch.Tensor,
    dim: list[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``mean`` for compiled graphs."""
    return mean_op()(x, dim, keepdim, dtype)  # type: ignore[no-any-return]


def lowered_mean_of_squares(
    x: torch.Tensor, dim: list[int] | None = None, keepdim: bool = False
) -> torch.Tensor:
    """``mean_of_squares`` for compiled graphs."""
    return mean_of_squares_op()(x, dim, keepdim)  # type: ignore[no-any-return]


def lowered_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``softmax`` for compiled graphs."""
    return softmax_op()(x, dim, dtype, False)  # type: ignore[no-any-return]


def lowered_log_softmax(
    x: torch.Tensor, dim: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``log_softmax`` for compiled graphs."""
    return softmax_op()(x, dim, dtype, True)  # type: ignore[no-any-return]


def lowered_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mm`` for compiled graphs."""
    return batched_gemm_op()(a.unsqueeze(0), b.unsqueeze(0), None, 1.0, 1.0)[0]


def lowered_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``bmm`` for compiled graphs."""
    return batched_gemm_op()(a, b, None, 1.0, 1.0)  # type: ignore[no-any-return]


def lowered_addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """``addmm`` for compiled graphs."""
    bias3 = bias.expand(a.shape[0], b.shape[1]).unsqueeze(0)
    return batched_gemm_op()(a.unsqueeze(0), b.unsqueeze(0), bias3, alpha, beta)[0]


def lowered_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``matmul`` for compiled graphs."""
    a3, b3, finish = matmul_operands(a, b)
    return finish(batched_gemm_op()(a3, b3, None, 1.0, 1.0))


def lowered_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear`` for compiled graphs."""
    a3, b3, bias3, finish = linear_operands(x, weight, bias)
    return finish(batched_gemm_op()(a3, b3, bias3, 1.0, 1.0))


LOWERINGS: dict[str, Callable[..., torch.Tensor]] = {
    "mm": lowered_mm,
    "bmm": lowered_bmm,
    "addmm": lowered_addmm,
    "matmul": lowered_matmul,
    "linear": lowered_linear,
    "mean": lowered_mean,
    "mean_of_squares": lowered_mean_of_squares,
    "softmax": lowered_softmax,
    "log_softmax": lowered_log_softmax,
}
"""Registry op name -> its lowering (registered on CUDA by :mod:`..providers`)."""
