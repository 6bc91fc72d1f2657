"""Registers this package's ``scaled_mm`` implementations with ir-dispatch.

Two providers, both batch-invariant:

* ``cutlass_fp8`` (CUDA, priority 20): the CUTLASS SM90 kernel. Its ``supports_args`` accepts
  an SM90 GPU with nvcc and the CUTLASS headers available, e4m3 operands, K and N multiples of
  16 and a column-major ``b``; ``a``, the scales and the bias are made contiguous when they are
  not (a copy changes no values), so their layout never switches the kernel.
* ``dequant_bf16`` (every platform, priority 5, batch-invariant mode only): exact bf16
  dequantization plus the batch-invariant bf16 ``mm`` (:mod:`.ops.dequant`). Priority 5 puts
  it after a platform's own batch-invariant ``scaled_mm`` (ir-dispatch's ``cpu`` provider has
  10): it is the fallback for GPUs without the CUTLASS kernel and for NPUs.

Neither verdict depends on M, so a given weight is always served by the same provider,
whatever the batch size. :func:`register` runs at import of :mod:`bi_cutlass_fp8`, touches no
GPU, and may run again (registering a provider twice replaces it).
"""

from __future__ import annotations

import functools
import logging

import torch

from ir_dispatch import is_batch_invariant
from ir_dispatch import ops as ir_ops

from . import _jit, _platform
from ._checks import ALIGN_BYTES, check_args, check_kernel_sizes, check_weight_layout
from .ops.dequant import scaled_mm_dequant
from .ops.scaled_mm import scaled_mm

logger = logging.getLogger("bi_cutlass_fp8")

CUTLASS_FP8 = "cutlass_fp8"
DEQUANT_BF16 = "dequant_bf16"
CUTLASS_PRIORITY = 20
DEQUANT_PRIORITY = 5
PROVIDERS = (CUTLASS_FP8, DEQUANT_BF16)

_CUTLASS_NOTE = (
    "CUTLASS SM90 swap-AB kernel; tile, cluster and accumulation chosen from (N, K) only, "
    "k-tiles in order into one accumulator, no split-K"
)
_DEQUANT_NOTE = "exact fp8->bf16 dequantization, batch-invariant bf16 mm, fp32 scales per element"


@functools.cache
def toolchain_reason() -> str | None:
    """Why the CUTLASS kernel cannot be built here (no nvcc or headers), or ``None``."""
    try:
        _jit.find_nvcc()
        _jit.cutlass_root()
    except _jit.BuildError as err:
        return str(err)
    return None


def cutlass_supports(
    a: object,
    b: object,
    scale_a: object,
    scale_b: object,
    out_dtype: object,
    bias: object = None,
) -> bool | str:
    """Accept an SM90 GPU with the toolchain, e4m3 operands, K, N % 16 == 0, column-major b.

    ``a``'s layout is not checked: :func:`scaled_mm_cutlass` copies it when needed.
    """
    reason = toolchain_reason()
    if reason is not None:
        return reason
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return "a and b must be tensors"
    try:
        shape = check_args(a, b, scale_a, scale_b, out_dtype, bias)
        check_kernel_sizes(shape)
        check_weight_layout(b, shape)
    except (TypeError, ValueError) as err:
        return str(err)
    return device_verdict(a.device)


def device_verdict(device: torch.device) -> bool | str:
    """``True`` for a CUDA device of SM90, else the reason."""
    if device.type != "cuda":
        return f"the CUTLASS kernel needs CUDA tensors, got {device.type}"
    arch = _platform.sm_version(device)
    if arch != 90:
        return f"the CUTLASS kernel is built for sm90 only, this GPU is sm{arch}"
    return True


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if contiguous and 16-byte aligned, else a contiguous aligned copy."""
    if t.is_contiguous() and t.data_ptr() % ALIGN_BYTES == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def scaled_mm_cutlass(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``cutlass_fp8`` implementation of ``scaled_mm``.

    Calls :func:`~.ops.scaled_mm.scaled_mm` after making ``a``, the scales and the bias
    contiguous and aligned (copies change no values).
    """
    return scaled_mm(
        _kernel_ready(a),
        b,
        _kernel_ready(scale_a),
        _kernel_ready(scale_b),
        out_dtype,
        None if bias is None else _kernel_ready(bias),
    )


def dequant_supports(
    a: object,
    b: object,
    scale_a: object,
    scale_b: object,
    out_dtype: object,
    bias: object = None,
) -> bool | str:
    """Only in batch-invariant mode (elsewhere the native reference is as good); valid args."""
    if not is_batch_invariant():
        return "only used in batch-invariant mode"
    try:
        check_args(a, b, scale_a, scale_b, out_dtype, bias)
    except (TypeError, ValueError) as err:
        return str(err)
    return True


def register() -> list[str]:
    """Register ``cutlass_fp8`` and ``dequant_bf16`` for ``scaled_mm``; safe to call again.

    Returns:
        The provider names registered.
    """
    ir_ops.scaled_mm.register_impl(
        CUTLASS_FP8,
        batch_invariant=True,
        platforms=["cuda"],
        supports_args=cutlass_supports,
        priority=CUTLASS_PRIORITY,
        note=_CUTLASS_NOTE,
    )(scaled_mm_cutlass)
    ir_ops.scaled_mm.register_impl(
        DEQUANT_BF16,
        batch_invariant=True,
        supports_args=dequant_supports,
        priority=DEQUANT_PRIORITY,
        note=_DEQUANT_NOTE,
    )(scaled_mm_dequant)
    logger.debug("bi_cutlass_fp8: registered %s for scaled_mm", ", ".join(PROVIDERS))
    return list(PROVIDERS)


def unregister() -> None:
    """Remove both providers."""
    for provider in PROVIDERS:
        ir_ops.scaled_mm.unregister_impl(provider)
