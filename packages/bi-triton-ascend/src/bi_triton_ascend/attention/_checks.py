"""Argument checks of the attention entry points: raise naming the argument, want and got."""

from __future__ import annotations

import torch

from .._checks import check_dim, check_float, check_same, check_tensor
from .._checks import dtype_name as _name
from .config import MAX_HEAD_SIZE, SUPPORTED_DTYPES

INDEX_DTYPES = (torch.int32, torch.int64)
MODES = ("auto", "split", "fused")


def tensor(op: str, name: str, t: object, dims: int) -> torch.Tensor:
    """``t`` as a ``dims``-D tensor, else ``TypeError``/``ValueError`` naming ``name``."""
    checked = check_tensor(op, name, t)
    check_dim(op, name, checked, dims)
    return checked


def float_like(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must be a supported float dtype equal to ``ref``'s, on ``ref``'s device."""
    check_float(op, name, t, SUPPORTED_DTYPES)
    check_same(op, ref_name, ref, name, t)


def index(op: str, name: str, t: torch.Tensor, length: int | None, device: torch.device) -> None:
    """An int32/int64 index tensor on ``device`` with ``length`` entries (if given)."""
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: {name} must be int32 or int64; got {_name(t.dtype)}")
    if t.device != device:
        raise ValueError(f"{op}: {name} must be on the query's device {device}; got {t.device}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{op}: {name} must have {length} entries; got shape {tuple(t.shape)}")


def heads(op: str, num_heads: int, num_kv_heads: int, head_size: int, kv_head_size: int) -> None:
    """GQA: query heads a multiple of KV heads; equal head sizes up to :data:`MAX_HEAD_SIZE`."""
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"{op}: the query's {num_heads} heads must be a multiple of the cache's "
            f"{num_kv_heads} KV heads"
        )
    if kv_head_size != head_size:
        raise ValueError(
            f"{op}: key/value head size must equal the query's {head_size}; got {kv_head_size}"
        )
    if not 1 <= head_size <= MAX_HEAD_SIZE:
        raise ValueError(f"{op}: head size must be in [1, {MAX_HEAD_SIZE}]; got {head_size}")


def options(
    op: str,
    scale: object,
    sliding_window: object,
    causal: object,
    max_seq_len: object,
    mode: object,
) -> None:
    """The scalar options shared by the entry points."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a float; got {type(scale).__name__}")
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool; got {type(causal).__name__}")
    if sliding_window is not None:
        if isinstance(sliding_window, bool) or not isinstance(sliding_window, int):
            raise TypeError(
                f"{op}: sliding_window must be None or an int; got {type(sliding_window).__name__}"
            )
        if sliding_window < 1:
            raise ValueError(f"{op}: sliding_window must be >= 1 keys; got {sliding_window}")
        if not causal:
            raise ValueError(f"{op}: sliding_window needs causal=True")
    if max_seq_len is not None and (
        isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 0
    ):
        raise ValueError(f"{op}: max_seq_len must be None or an int >= 0; got {max_seq_len!r}")
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {', '.join(MODES)}; got {mode!r}")


def out_dtype(op: str, dtype: object) -> None:
    """``None`` or a supported float dtype."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        allowed = ", ".join(_name(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"{op}: out_dtype must be None or one of {allowed}; got {dtype!r}")
