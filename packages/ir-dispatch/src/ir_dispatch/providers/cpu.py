"""Registers the batch-invariant CPU implementations with ir-dispatch as provider ``cpu``.

Every op that reduces gets one: ``mm``, ``addmm``, ``bmm``, ``scaled_mm`` (:mod:`.cpu_gemm`:
the vendor GEMM on fixed-shape row chunks) and ``rms_norm``, ``fused_add_rms_norm``,
``softmax``, ``log_softmax``, ``mean`` (:mod:`.cpu_rows`: summation trees fixed by the row
length). ``matmul`` and ``linear`` come from the composite implementations, which reshape onto
``mm``/``addmm``/``bmm``; a direct ``linear`` would only save one registry lookup per call.

:func:`register` runs when ``ir_dispatch`` is imported and may run again (registering a provider
twice replaces it). The implementations serve only in batch-invariant mode, like every other
provider's: the default mode keeps torch's faster batch-variant kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import ops
from ..mode import is_batch_invariant
from ..platform import PlatformKind
from . import cpu_gemm, cpu_rows

PROVIDER = "cpu"
PRIORITY = 10
#: Pure PyTorch: runs wherever torch runs on a CPU.
supported: bool = True

_GEMM_NOTE = (
    f"vendor GEMM only on fixed {cpu_gemm.GEMM_ROWS}-row chunks (zero-padded), rows on the "
    "output's SIMD lanes: same kernel, blocking and K order for every M"
)
_ROW_NOTE = "element-wise summation tree fixed by the row length; amax for maxima"
# Inputs that ``mean``/``softmax`` accept when their ``dtype`` argument converts them to float.
_ANY_REAL = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _tensor_verdict(name: str, t: object, dtypes: tuple[torch.dtype, ...]) -> bool | str:
    if not isinstance(t, torch.Tensor):
        return f"{name} is not a tensor"
    if t.dtype not in dtypes:
        return f"{name} dtype {str(t.dtype).removeprefix('torch.')} is not supported"
    return True


def _verdict(
    dtypes: tuple[torch.dtype, ...] = cpu_gemm.FLOAT_DTYPES, **tensors: object
) -> bool | str:
    """Batch-invariant mode, and every given tensor (``None`` skipped) of a supported dtype."""
    if not is_batch_invariant():
        return "only used in batch-invariant mode"
    for name, value in tensors.items():
        if value is not None:
            verdict = _tensor_verdict(name, value, dtypes)
            if verdict is not True:
                return verdict
    return True


def _mm_accepts(a: object, b: object) -> bool | str:
    """``mm``/``bmm``: batch-invariant mode; a, b fp32/bf16/fp16/fp64."""
    return _verdict(a=a, b=b)


def _addmm_accepts(
    bias: object, a: object, b: object, beta: float = 1.0, alpha: float = 1.0
) -> bool | str:
    """Batch-invariant mode; bias, a, b fp32/bf16/fp16/fp64."""
    return _verdict(bias=bias, a=a, b=b)


def _scaled_mm_accepts(a: object, b: object, *args: object, **kwargs: object) -> bool | str:
    """Batch-invariant mode; a, b float8 (or floating)."""
    return _verdict(cpu_gemm.FP8_DTYPES + cpu_gemm.FLOAT_DTYPES, a=a, b=b)


def _float_or_converted(x: object, dtype: object) -> bool | str:
    """Batch-invariant mode; ``x`` floating, or converted by a floating ``dtype`` argument."""
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return _verdict(x=x, dtypes=cpu_gemm.FLOAT_DTYPES + _ANY_REAL)
    return _verdict(x=x)


def _norm_accepts(x: object, *args: object, **kwargs: object) -> bool | str:
    """``rms_norm``/``fused_add_rms_norm``: batch-invariant mode; x fp32/bf16/fp16/fp64."""
    return _verdict(x=x)


def _softmax_accepts(x: object, dim: object = None, dtype: object = None) -> bool | str:
    """``softmax``/``log_softmax``: batch-invariant mode; x floating or made so by ``dtype``."""
    return _float_or_converted(x, dtype)


def _mean_accepts(
    x: object, dim: object = None, keepdim: object = False, dtype: object = None
) -> bool | str:
    """``mean``: batch-invariant mode; x floating or made so by ``dtype``.

    Also ``mean_of_squares``'s check (no ``dtype``: x must be floating).
    """
    return _float_or_converted(x, dtype)


_TABLE: tuple[tuple[Any, Callable[..., Any], Callable[..., bool | str], str], ...] = (
    (ops.mm, cpu_gemm.mm, _mm_accepts, _GEMM_NOTE),
    (ops.addmm, cpu_gemm.addmm, _addmm_accepts, _GEMM_NOTE),
    (ops.bmm, cpu_gemm.bmm, _mm_accepts, _GEMM_NOTE + "; one product at a time"),
    (
        ops.scaled_mm,
        cpu_gemm.scaled_mm,
        _scaled_mm_accepts,
        "exact fp32 dequantisation; " + _GEMM_NOTE,
    ),
    (ops.rms_norm, cpu_rows.rms_norm, _norm_accepts, _ROW_NOTE),
    (ops.fused_add_rms_norm, cpu_rows.fused_add_rms_norm, _norm_accepts, _ROW_NOTE),
    (ops.softmax, cpu_rows.softmax, _softmax_accepts, _ROW_NOTE),
    (ops.log_softmax, cpu_rows.log_softmax, _softmax_accepts, _ROW_NOTE),
    (ops.mean, cpu_rows.mean, _mean_accepts, _ROW_NOTE),
    (ops.mean_of_squares, cpu_rows.mean_of_squares, _mean_accepts, _ROW_NOTE),
)


def register() -> None:
    """Register (or re-register) provider ``cpu`` for every op in the table, on CPU only."""
    for op, fn, accepts, note in _TABLE:
        op.register_impl(
            PROVIDER,
            batch_invariant=True,
            platforms=[PlatformKind.CPU],
            supports_args=accepts,  # mode and dtypes: a function of the layout
            priority=PRIORITY,
            note=note,
            layout_only=True,
        )(fn)


def registered_ops() -> list[str]:
    """Names of the ops provider ``cpu`` implements."""
    return [op.name for op, *_ in _TABLE]


register()
