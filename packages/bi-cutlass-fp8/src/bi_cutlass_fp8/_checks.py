"""Argument checks of ``scaled_mm``, shared by the CUTLASS kernel and the dequant fallback.

Every check names the argument, what was expected and what arrived. None of them looks at M
beyond the consistency of ``scale_a``'s shape with ``a``, so a provider's accept/decline
verdict never changes with the batch size (which would break batch invariance by switching
kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)
# TMA needs 16-byte aligned global addresses and strides; 16 fp8 elements = 16 bytes, and 16
# also keeps every bf16/fp16 output row stride a multiple of 16 bytes (N % 8 would do).
ALIGN_ELEMS = 16
ALIGN_BYTES = 16


@dataclass(frozen=True)
class GemmShape:
    """The validated problem: sizes and scale granularity."""

    m: int
    n: int
    k: int
    scale_a_per_token: bool
    scale_b_per_channel: bool


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"scaled_mm: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_args(
    a: object,
    b: object,
    scale_a: object,
    scale_b: object,
    out_dtype: object,
    bias: object = None,
) -> GemmShape:
    """Dtypes, ranks, shapes, scale shapes and devices (no layout requirements).

    Raises:
        TypeError: a non-tensor, or a dtype other than the one expected.
        ValueError: a shape or device mismatch.
    """
    a = _require_tensor("a", a)
    b = _require_tensor("b", b)
    scale_a = _require_tensor("scale_a", scale_a)
    scale_b = _require_tensor("scale_b", scale_b)
    if a.dtype != FP8:
        raise TypeError(f"scaled_mm: a must be float8_e4m3fn, got {_name(a.dtype)}")
    if b.dtype != FP8:
        raise TypeError(f"scaled_mm: b must be float8_e4m3fn, got {_name(b.dtype)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(
            f"scaled_mm: out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}"
        )
    if a.dim() != 2:
        raise ValueError(f"scaled_mm: a must be 2-D [M, K], got shape {_shape(a)}")
    if b.dim() != 2:
        raise ValueError(f"scaled_mm: b must be 2-D [K, N], got shape {_shape(b)}")
    m, k = a.shape
    k_b, n = b.shape
    if k_b != k:
        raise ValueError(
            f"scaled_mm: b must be [K, N] with K = a.shape[1] = {k}, got b of shape {_shape(b)}"
        )
    device = a.device
    for name, t in (("b", b), ("scale_a", scale_a), ("scale_b", scale_b)):
        if t.device != device:
            raise ValueError(f"scaled_mm: {name} is on {t.device}, a is on {device}")
    for name, s in (("scale_a", scale_a), ("scale_b", scale_b)):
        if s.dtype != torch.float32:
            raise TypeError(f"scaled_mm: {name} must be float32, got {_name(s.dtype)}")
    per_token = _scale_a_kind(scale_a, m)
    per_channel = _scale_b_kind(scale_b, n)
    if bias is not None:
        bias = _require_tensor("bias", bias)
        if bias.dtype != out_dtype:
            raise TypeError(
                f"scaled_mm: bias must have out_dtype {_name(out_dtype)}, got {_name(bias.dtype)}"
            )
        if tuple(bias.shape) != (n,):
            raise ValueError(f"scaled_mm: bias must be [N] = [{n}], got shape {_shape(bias)}")
        if bias.device != device:
            raise ValueError(f"scaled_mm: bias is on {bias.device}, a is on {device}")
    return GemmShape(m=m, n=n, k=k, scale_a_per_token=per_token, scale_b_per_channel=per_channel)


def _scale_a_kind(scale_a: torch.Tensor, m: int) -> bool:
    """Whether ``scale_a`` is per-token (``[M, 1]``, or ``[M]``) rather than per-tensor."""
    if scale_a.numel() == 1 and scale_a.dim() <= 2:
        return False
    if tuple(scale_a.shape) in ((m, 1), (m,)):
        return True
    raise ValueError(
        f"scaled_mm: scale_a must be per-tensor ([], [1] or [1, 1]) or per-token [M, 1] = "
        f"[{m}, 1], got shape {_shape(scale_a)}"
    )


def _scale_b_kind(scale_b: torch.Tensor, n: int) -> bool:
    """Whether ``scale_b`` is per-channel rather than per-tensor.

    Per-channel is ``[1, N]`` (ir-dispatch's form), or ``[N, 1]``/``[N]`` (how vLLM stores
    channel-wise weight scales): one scale per output column either way.
    """
    if scale_b.numel() == 1 and scale_b.dim() <= 2:
        return False
    if tuple(scale_b.shape) in ((1, n), (n, 1), (n,)):
        return True
    raise ValueError(
        f"scaled_mm: scale_b must be per-tensor ([], [1] or [1, 1]) or per-channel [1, N] = "
        f"[1, {n}], got shape {_shape(scale_b)}"
    )


def check_kernel_layout(a: torch.Tensor, b: torch.Tensor, shape: GemmShape) -> None:
    """What the CUTLASS kernel needs beyond :func:`check_args`: alignment and operand layout.

    See :func:`check_kernel_sizes`, :func:`check_weight_layout` and
    :func:`check_activation_layout`.

    Raises:
        ValueError: naming the argument and the layout that arrived.
    """
    check_kernel_sizes(shape)
    check_weight_layout(b, shape)
    check_activation_layout(a, shape)


def check_kernel_sizes(shape: GemmShape) -> None:
    """``K`` and ``N`` must be multiples of 16 (16-byte TMA rows of fp8 and of the output)."""
    if shape.k % ALIGN_ELEMS:
        raise ValueError(f"scaled_mm: K must be a multiple of {ALIGN_ELEMS}, got K={shape.k}")
    if shape.n % ALIGN_ELEMS:
        raise ValueError(f"scaled_mm: N must be a multiple of {ALIGN_ELEMS}, got N={shape.n}")


def check_weight_layout(b: torch.Tensor, shape: GemmShape) -> None:
    """Require a column-major ``b``: strides ``(1, ldb)``, ldb % 16 == 0, aligned pointer.

    That is ``weight.t()`` of a row-major ``[N, K]`` weight, the convention of
    ``torch._scaled_mm``.
    """
    if b.stride(0) != 1 or b.stride(1) < shape.k or b.stride(1) % ALIGN_ELEMS:
        raise ValueError(
            "scaled_mm: b must be column-major: a [K, N] view with strides (1, ldb), "
            f"ldb >= K and a multiple of {ALIGN_ELEMS} (pass weight.t() of a row-major [N, K] "
            f"weight, as for torch._scaled_mm); got strides {tuple(b.stride())}"
        )
    _check_pointer("b", b)


def check_activation_layout(a: torch.Tensor, shape: GemmShape) -> None:
    """Require a row-major ``a``: strides ``(lda, 1)``, lda % 16 == 0, aligned pointer."""
    if shape.m == 0:
        return
    if a.stride(1) != 1 or a.stride(0) < shape.k or a.stride(0) % ALIGN_ELEMS:
        raise ValueError(
            f"scaled_mm: a must be row-major: strides (lda, 1) with lda >= K and a multiple of "
            f"{ALIGN_ELEMS}; got strides {tuple(a.stride())} (call a.contiguous())"
        )
    _check_pointer("a", a)


def _check_pointer(name: str, t: torch.Tensor) -> None:
    if t.device.type != "meta" and t.data_ptr() % ALIGN_BYTES:
        raise ValueError(
            f"scaled_mm: {name}'s data pointer must be {ALIGN_BYTES}-byte aligned "
            f"(its storage offset {t.storage_offset()} breaks it)"
        )


def check_vector_layout(
    scale_a: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Scale vectors and bias must be contiguous with 16-byte aligned data.

    Raises:
        ValueError: naming the argument.
    """
    for name, t in (("scale_a", scale_a), ("scale_b", scale_b), ("bias", bias)):
        if t is None or (t.numel() == 1 and name != "bias"):
            continue
        if not t.is_contiguous():
            raise ValueError(
                f"scaled_mm: {name} must be contiguous, got strides {tuple(t.stride())}"
            )
        if t.data_ptr() % ALIGN_BYTES:
            raise ValueError(f"scaled_mm: {name}'s data pointer must be {ALIGN_BYTES}-byte aligned")
