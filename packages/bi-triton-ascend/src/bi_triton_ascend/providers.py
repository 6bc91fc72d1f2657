"""Registers this package's kernels with ir-dispatch as the batch-invariant provider ``triton``.

:func:`register` runs at import of :mod:`bi_triton_ascend` and may run again (plugins load once
per process, tests re-register): registering a provider twice replaces it. Each op gets a small
``supports_args`` predicate (dtype, device, batch-invariant mode); shape errors are left to the
op itself, which raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ir_dispatch import is_batch_invariant
from ir_dispatch import ops as ir_ops

from . import _platform
from ._checks import FLOAT_DTYPES, INDEX_DTYPES

logger = logging.getLogger("bi_triton_ascend")

PROVIDER = "triton"
PRIORITY = 10
#: Whether a ``triton`` module (NVIDIA's or triton-ascend) is importable here.
supported: bool = _platform.triton_available()

_GEMM_NOTE = (
    "fixed fp32 chain per (N, K, dtype): BLOCK_K by dtype, fixed K segments summed in order; "
    "tiles and split-K kernel follow M without changing it"
)
_ROW_NOTE = "one row per reduction, block shape from the row length only"


def _tensor_ok(t: object, name: str) -> bool | str:
    """Device and dtype verdict for one tensor argument."""
    if not isinstance(t, torch.Tensor):
        return f"{name} is not a tensor"
    if t.dtype not in FLOAT_DTYPES:
        return f"{name} dtype {str(t.dtype).removeprefix('torch.')} is not bf16/fp16/fp32"
    return _platform.device_supported(t)


def _verdict(dtype: object = None, **tensors: object) -> bool | str:
    """Mode, tensors (``None`` allowed: optional weight/bias) and output dtype."""
    if not is_batch_invariant():
        return "only used in batch-invariant mode"
    for name, value in tensors.items():
        if value is None:
            continue
        verdict = _tensor_ok(value, name)
        if verdict is not True:
            return verdict
    if dtype is not None and dtype not in FLOAT_DTYPES:
        return f"output dtype {dtype} is not bf16/fp16/fp32"
    return True


def _two_accepts(a: object, b: object) -> bool | str:
    """``mm``/``bmm``/``matmul``: batch-invariant mode; a, b bf16/fp16/fp32 on a Triton device."""
    return _verdict(a=a, b=b)


def _addmm_accepts(
    bias: object, a: object, b: object, beta: float = 1.0, alpha: float = 1.0
) -> bool | str:
    """Batch-invariant mode; bias, a, b bf16/fp16/fp32 on a Triton device."""
    return _verdict(bias=bias, a=a, b=b)


def _linear_accepts(x: object, weight: object, bias: object = None) -> bool | str:
    """Batch-invariant mode; x, weight (bias) bf16/fp16/fp32 on a Triton device."""
    return _verdict(x=x, weight=weight, bias=bias)


def _rms_accepts(x: object, weight: object, epsilon: float) -> bool | str:
    """Batch-invariant mode; x (weight) bf16/fp16/fp32 on a Triton device."""
    return _verdict(x=x, weight=weight)


def _fused_accepts(x: object, residual: object, weight: object, epsilon: float) -> bool | str:
    """Batch-invariant mode; x, residual (weight) bf16/fp16/fp32 on a Triton device."""
    return _verdict(x=x, residual=residual, weight=weight)


def _qk_norm_rope_accepts(
    q: object,
    k: object,
    q_weight: object,
    k_weight: object,
    epsilon: float,
    positions: object,
    cos_sin_cache: object,
) -> bool | str:
    """Batch-invariant mode; bf16/fp16 q on a Triton device, head_dim a power of two <= 512.

    Anything else is declined (the native op, or the two separate ops, serve it); wrong shapes
    that this kernel would take are refused by the op itself with a ``ValueError``.
    """
    verdict = _verdict(q=q, k=k, q_weight=q_weight, k_weight=k_weight)
    if verdict is not True or not isinstance(q, torch.Tensor):  # _verdict checked q's type
        return verdict
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"q dtype {str(q.dtype).removeprefix('torch.')} is not bf16/fp16"
    from .ops.qk_norm_rope import head_dim_problem  # the kernel's own rule (loads Triton)

    return head_dim_problem(q.shape[-1]) or True


def _softmax_accepts(x: object, dim: int, dtype: object = None) -> bool | str:
    """Batch-invariant mode; x and the output dtype bf16/fp16/fp32 on a Triton device."""
    return _verdict(dtype, x=x)


def _mean_accepts(
    x: object, dim: object = None, keepdim: bool = False, dtype: object = None
) -> bool | str:
    """Batch-invariant mode; x and the output dtype bf16/fp16/fp32 on a Triton device.

    Also ``mean_of_squares``'s check (no ``dtype``: its output is always fp32).
    """
    return _verdict(dtype, x=x)


def _token_logprobs_accepts(logits: object, token_ids: object) -> bool | str:
    """Batch-invariant mode; logits bf16/fp16/fp32 on a Triton device, int32/int64 token_ids.

    Other id dtypes are declined, not refused: ir-dispatch's composite serves them.
    """
    verdict = _verdict(logits=logits)
    if verdict is not True:
        return verdict
    if not isinstance(token_ids, torch.Tensor) or token_ids.dtype not in INDEX_DTYPES:
        return "token_ids is not an int32/int64 tensor"
    return True


Entry = tuple[Any, Callable[..., Any], Callable[..., bool | str], str, Callable[..., Any] | None]


def _table() -> list[Entry]:
    """(op, kernel function, argument check, note, launch-plan hook) per op."""
    from . import ops
    from .ops.matmul import prepare_linear, prepare_matmul
    from .ops.mean import prepare_mean, prepare_mean_of_squares
    from .ops.mm import prepare_addmm, prepare_bmm, prepare_mm
    from .ops.rms_norm import prepare_fused_add_rms_norm, prepare_rms_norm
    from .ops.softmax import prepare_log_softmax, prepare_softmax

    return [
        (ir_ops.mm, ops.mm, _two_accepts, _GEMM_NOTE, prepare_mm),
        (ir_ops.addmm, ops.addmm, _addmm_accepts, _GEMM_NOTE, prepare_addmm),
        (ir_ops.bmm, ops.bmm, _two_accepts, _GEMM_NOTE, prepare_bmm),
        (
            ir_ops.matmul,
            ops.matmul,
            _two_accepts,
            _GEMM_NOTE + "; one launch per call",
            prepare_matmul,
        ),
        (
            ir_ops.linear,
            ops.linear,
            _linear_accepts,
            _GEMM_NOTE + "; one launch per call",
            prepare_linear,
        ),
        (ir_ops.rms_norm, ops.rms_norm, _rms_accepts, _ROW_NOTE, prepare_rms_norm),
        (
            ir_ops.fused_add_rms_norm,
            ops.fused_add_rms_norm,
            _fused_accepts,
            _ROW_NOTE,
            prepare_fused_add_rms_norm,
        ),
        (
            ir_ops.qk_norm_rope,
            ops.qk_norm_rope,
            _qk_norm_rope_accepts,
            _ROW_NOTE + "; rms_norm's bits, then fp32 RoPE rounded once, one launch for q and k",
            None,
        ),
        (
            ir_ops.softmax,
            ops.softmax,
            _softmax_accepts,
            _ROW_NOTE + "; long rows in fixed chunks",
            prepare_softmax,
        ),
        (
            ir_ops.log_softmax,
            ops.log_softmax,
            _softmax_accepts,
            _ROW_NOTE + "; long rows chunked",
            prepare_log_softmax,
        ),
        (
            ir_ops.mean,
            ops.mean,
            _mean_accepts,
            "fixed-order sum per row; chunking from length",
            prepare_mean,
        ),
        (
            ir_ops.mean_of_squares,
            ops.mean_of_squares,
            _mean_accepts,  # the same check: x on a Triton device, in batch-invariant mode
            "mean's sums of the fp32 squares, each rounded; x read once",
            prepare_mean_of_squares,
        ),
        (
            ir_ops.token_logprobs,
            ops.token_logprobs,
            _token_logprobs_accepts,
            _ROW_NOTE + "; log_softmax's chunk statistics and combine, only the ids' entries",
            None,
        ),
    ]


def _lowerings() -> dict[str, Callable[..., Any]]:
    """The GEMMs' ``torch.compile`` lowerings, where Inductor can launch them (CUDA)."""
    if _platform.interpreting() or torch.version.cuda is None or torch.version.hip:
        return {}
    if not hasattr(torch.library, "triton_op"):  # torch < 2.6
        return {}
    from .ops.lowered import LOWERINGS

    return LOWERINGS


def register() -> list[str]:
    """Register every op's ``triton`` implementation; safe to call repeatedly.

    Returns:
        The names of the ops registered (empty when Triton is not installed).
    """
    if not supported:
        logger.debug("bi_triton_ascend: triton is not importable; nothing registered")
        return []
    names = []
    lowerings = _lowerings()
    for op, fn, accepts, note, prepare in _table():
        op.register_impl(
            PROVIDER,
            batch_invariant=True,
            platforms=_platform.supported_platforms(),
            supports_args=accepts,  # mode, dtypes, devices, shapes: a function of the layout
            priority=PRIORITY,
            note=note,
            layout_only=True,
            prepare=prepare,
            lowering=lowerings.get(op.name),
        )(fn)
        names.append(op.name)
    return names


def unregister() -> None:
    """Remove every ``triton`` implementation this package registered."""
    for op in (
        ir_ops.mm, ir_ops.addmm, ir_ops.bmm, ir_ops.matmul, ir_ops.linear, ir_ops.rms_norm,
        ir_ops.fused_add_rms_norm, ir_ops.qk_norm_rope, ir_ops.softmax, ir_ops.log_softmax,
        ir_ops.mean, ir_ops.mean_of_squares, ir_ops.token_logprobs,
    ):  # fmt: skip
        op.unregister_impl(PROVIDER)
