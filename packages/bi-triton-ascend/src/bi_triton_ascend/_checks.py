"""Argument checks of the ops and attention: bad input raises naming argument, want and got.

One module for both so a dtype, tensor or device mismatch reads the same from every entry point.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``: dtype names as users write them."""
    return str(dtype).removeprefix("torch.")


def check_tensor(op: str, name: str, t: object) -> torch.Tensor:
    """``t`` as a tensor, or ``TypeError`` naming ``op``'s argument ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(
    op: str, name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
) -> None:
    """``t`` must have one of ``dtypes`` (default bf16, fp16 or fp32; or :data:`INDEX_DTYPES`)."""
    if t.dtype not in dtypes:
        allowed = ", ".join(dtype_name(d) for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype {allowed}; got {dtype_name(t.dtype)}")


def check_same(op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    """``t`` must share ``ref``'s dtype and device."""
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{op}: {name} must have the dtype of {ref_name} ({dtype_name(ref.dtype)}); "
            f"got {dtype_name(t.dtype)}"
        )
    check_same_device(op, ref_name, ref, name, t)


def check_same_device(
    op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor
) -> None:
    """``t`` must be on ``ref``'s device (index tensors keep their own dtype)."""
    if t.device != ref.device:
        raise ValueError(
            f"{op}: {name} must be on {ref_name}'s device {ref.device}; got {t.device}"
        )


def check_dim(op: str, name: str, t: torch.Tensor, dims: int | tuple[int, ...]) -> None:
    """``t`` must have ``dims`` dimensions (one count or a tuple of allowed counts)."""
    allowed = (dims,) if isinstance(dims, int) else dims
    if t.dim() not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{op}: {name} must be {want}; got shape {tuple(t.shape)}")


def check_out_dtype(op: str, dtype: object) -> torch.dtype | None:
    """A requested output dtype: ``None`` or one of :data:`FLOAT_DTYPES`."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        allowed = ", ".join(dtype_name(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{op}: dtype must be None or one of {allowed}; got {dtype!r}")
    return dtype


def normalize_dim(op: str, dim: int, ndim: int) -> int:
    """``dim`` in ``[0, ndim)``; a 0-D tensor accepts 0 and -1 (like torch)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"{op}: dim must be an int; got {type(dim).__name__}")
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise ValueError(f"{op}: dim must be in [{-size}, {size - 1}]; got {dim}")
    return dim % size
