"""The only module of this package that touches ``torch_npu`` or probes device capabilities.

Everything device-specific the kernels need is answered here: the Ascend unpad flash-attention
call (``torch_npu`` is imported through :mod:`ir_dispatch.platform`'s guarded import, only when
that kernel is about to run), the head size that kernel wants, torch's CUDA varlen flash
attention op and which of its keywords this torch accepts, and the one place where ``cu_seqlens``
is read back to the host - so that host reads can be counted, and never happen by accident
elsewhere.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from ir_dispatch import platform as ird_platform
from ir_dispatch.platform import PlatformKind

# ``_npu_flash_attention_unpad`` takes head sizes up to 64 as they are and wants 128 for
# anything strictly between 64 and 128 (vllm-ascend pads the same range).
NPU_PAD_MIN = 64
NPU_PAD_TO = 128

_reads_lock = threading.Lock()
_host_reads = 0
_read_hooks: list[Callable[[torch.Tensor], None]] = []


def torch_npu() -> ModuleType:
    """The ``torch_npu`` module, imported on first use.

    A module already in ``sys.modules`` is used as it is (tests install a fake there). Otherwise
    the import goes through ``ir_dispatch.platform``, which tolerates hosts without CANN.

    Raises:
        ImportError: ``torch_npu`` is not installed or cannot be imported here.
    """
    module = sys.modules.get("torch_npu")
    if module is not None:
        return module
    if not ird_platform._import_torch_npu():
        raise ImportError(
            "the NPU provider of mm_encoder_attention needs torch_npu (with Ascend CANN); "
            "install torch-npu for your torch, or run on another platform"
        )
    return importlib.import_module("torch_npu")


def npu_available() -> bool | str:
    """``True`` if ``torch_npu`` is importable, else the reason (for ``supports_args``)."""
    if "torch_npu" in sys.modules:
        return True
    return True if ird_platform._import_torch_npu() else "torch_npu is not importable here"


@functools.cache
def npu_kernel_head_size(head_size: int) -> int:
    """The head size ``_npu_flash_attention_unpad`` is called with for ``head_size``.

    Sizes strictly between 64 and 128 are zero-padded to 128 (zeros add nothing to ``q . k``
    and produce zero output columns that are sliced off); every other size is used as is.
    Cached, so each layer decides once, in its ``__init__``.
    """
    if head_size <= 0:
        raise ValueError(f"head_size must be positive, got {head_size}")
    return NPU_PAD_TO if NPU_PAD_MIN < head_size < NPU_PAD_TO else head_size


def npu_flash_attention_unpad(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_len: torch.Tensor,
    scale_value: float,
    num_heads: int,
    num_kv_heads: int,
    out: torch.Tensor,
) -> None:
    """Call ``torch_npu._npu_flash_attention_unpad`` (writes ``out`` in place).

    Args:
        query: ``[T, num_heads, D]`` contiguous, ``D`` from :func:`npu_kernel_head_size`.
        key: ``[T, num_kv_heads, D]`` contiguous.
        value: ``[T, num_kv_heads, D]`` contiguous.
        seq_len: host (CPU) int32 lengths, one per sequence, summing to ``T``.
        scale_value: softmax scale, from the *unpadded* head size.
        num_heads: query heads.
        num_kv_heads: key/value heads (fewer for GQA/MQA).
        out: ``[T, num_heads, D]`` output buffer.
    """
    torch_npu()._npu_flash_attention_unpad(
        query=query,
        key=key,
        value=value,
        seq_len=seq_len,
        scale_value=scale_value,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        out=out,
    )


@functools.cache
def _flash_forward() -> tuple[Any | None, frozenset[str]]:
    """``aten::_flash_attention_forward`` and its argument names, or ``None`` if absent."""
    packet = getattr(torch.ops.aten, "_flash_attention_forward", None)
    try:
        overload = packet.default  # type: ignore[union-attr]
        names = frozenset(a.name for a in overload._schema.arguments)
    except (AttributeError, RuntimeError):
        return None, frozenset()
    return overload, names


def varlen_attention_available() -> bool | str:
    """``True`` if this torch has the varlen flash-attention op, else why not."""
    op, names = _flash_forward()
    if op is None or "scale" not in names:
        return "this torch has no aten::_flash_attention_forward with a scale argument"
    return True


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


def flash_capable(device: torch.device) -> bool | str:
    """``True`` if ``device`` runs flash attention 2 (an sm80+ NVIDIA GPU), else why not."""
    if device.type != "cuda" or torch.version.hip:
        return f"flash attention needs an NVIDIA GPU, got {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _capability(index)
    return True if cap >= (8, 0) else f"flash attention needs sm80 or newer, got sm{cap[0]}{cap[1]}"


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    scale: float,
) -> torch.Tensor:
    """Flash attention 2 over packed ``[T, H, D]`` tensors with varlen offsets (CUDA).

    The aten op behind ``torch.nn.attention.varlen.varlen_attn``, called directly: one kernel,
    no Python custom-op wrapper per layer. Key/value may have fewer heads (GQA/MQA: flash
    attention maps query head ``h`` to key/value head ``h // (Hq / Hkv)``). Passes
    ``num_splits=1`` where this torch accepts it, so no sequence's keys are ever split into
    partial softmaxes merged afterwards (flash attention only splits for decoding anyway).
    """
    op, names = _flash_forward()
    if op is None:
        raise RuntimeError(str(varlen_attention_available()))
    kwargs: dict[str, Any] = {"scale": scale}
    if "num_splits" in names:
        kwargs["num_splits"] = 1
    out = op(
        query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, False, False, **kwargs
    )
    result: torch.Tensor = out[0]
    return result


def read_to_host(cu_seqlens: torch.Tensor) -> list[int]:
    """Read ``cu_seqlens`` into a Python list: the package's only device-to-host transfer.

    On an accelerator this is a device-to-host copy and a stream synchronisation; on CPU a
    plain read. Every call is counted (:func:`host_reads`) and reported to the hooks, so tests
    and benchmarks can prove how many happen per encoder forward.
    """
    global _host_reads
    with _reads_lock:
        _host_reads += 1
        hooks = list(_read_hooks)
    for hook in hooks:
        hook(cu_seqlens)
    values: list[int] = cu_seqlens.tolist()
    return values


def host_reads() -> int:
    """How many times :func:`read_to_host` ran in this process."""
    return _host_reads


def add_read_hook(hook: Callable[[torch.Tensor], None]) -> Callable[[], None]:
    """Call ``hook(cu_seqlens)`` on every host read; returns a function that removes it."""
    with _reads_lock:
        _read_hooks.append(hook)

    def remove() -> None:
        with _reads_lock:
            if hook in _read_hooks:
                _read_hooks.remove(hook)

    return remove


def to_device_int32(values: Any, device: torch.device) -> torch.Tensor:
    """A fresh int32 copy of host ``values`` (numpy array, list, CPU tensor) on ``device``.

    On accelerators the copy goes from pinned memory without blocking the host (the caching
    host allocator keeps the staging buffer alive until the copy has run).
    """
    if isinstance(values, torch.Tensor):
        host = values.detach().to("cpu", torch.int32).clone()
    else:
        host = torch.tensor(values, dtype=torch.int32)
    if device.type == "cpu":
        return host
    try:
        host = host.pin_memory()
    except RuntimeError:  # no runtime to pin with: a blocking copy is still correct
        return host.to(device)
    return host.to(device, non_blocking=True)


def platform_kind() -> PlatformKind:
    """This process's platform, from ``ir_dispatch``'s detection."""
    return ird_platform.current_platform().kind


__all__ = [
    "NPU_PAD_MIN",
    "NPU_PAD_TO",
    "add_read_hook",
    "flash_capable",
    "host_reads",
    "npu_available",
    "npu_flash_attention_unpad",
    "npu_kernel_head_size",
    "platform_kind",
    "read_to_host",
    "to_device_int32",
    "torch_npu",
    "varlen_attention",
    "varlen_attention_available",
]
