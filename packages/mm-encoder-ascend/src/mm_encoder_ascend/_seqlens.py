"""Host-side sequence lengths, shared by every layer of an encoder forward.

A vision encoder passes the same ``cu_seqlens`` tensor to all of its 24-32 attention layers.
Kernels that need the lengths on the host (Ascend's unpad flash attention, per-sequence SDPA,
the ``max_seqlen`` of varlen flash attention) must not read them back from the device in every
layer: each read is a device-to-host copy that stalls the host until the device has caught up.

Lengths are therefore cached *on the tensor object*: a weak, identity-keyed map from the
``cu_seqlens`` tensor to its host lengths, stamped with the tensor's storage pointer, shape and
(for normal tensors) version counter. Three ways fill it, cheapest first:

1. :func:`remember_host_cu_seqlens` - the caller made the device tensor from host values it
   still has (vLLM 0.32 builds ``cu_seqlens`` in numpy and hands it to
   ``MMEncoderAttention.maybe_recompute_cu_seqlens``, which this package's vLLM class
   overrides). No device-to-host copy at all.
2. The first layer that meets an unknown tensor reads it once (:func:`_platform.read_to_host`);
   the other layers of that forward hit the cache.
3. :func:`encoder_forward` opens a per-forward scope whose entries die with the block, for
   callers that reuse one ``cu_seqlens`` buffer across requests.

Nothing is keyed on a layer index or a global "current lengths": two encoders (or Qwen2.5-VL's
window and full attention, which alternate two ``cu_seqlens`` tensors) never see each other's
lengths, and a new request with other images brings a new tensor (or a new version of the old
one), which misses the cache.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import _platform


@dataclass(frozen=True, eq=False)
class HostSeqLens:
    """Sequence boundaries of one packed batch, on the host.

    Attributes:
        cu: cumulative offsets, ``cu[0] == 0``, non-decreasing; sequence ``i`` is tokens
            ``cu[i]:cu[i+1]``. Repeated offsets (zero-length sequences) are allowed: vLLM pads
            ``cu_seqlens`` that way for CUDA graphs.
        lengths: ``cu[i+1] - cu[i]`` for every sequence, zeros included.
        spans: ``(start, end)`` of every non-empty sequence.
        total: tokens covered, ``cu[-1]``; tokens after it are padding and get zero output.
        max_len: longest sequence (0 if there is none).
        npu_seq_len: int32 CPU tensor of the non-empty lengths, built once and passed to every
            layer's ``_npu_flash_attention_unpad`` call.
    """

    cu: tuple[int, ...]
    lengths: tuple[int, ...] = field(init=False)
    spans: tuple[tuple[int, int], ...] = field(init=False)
    total: int = field(init=False)
    max_len: int = field(init=False)
    npu_seq_len: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cu = self.cu
        if len(cu) < 1:
            raise ValueError("cu_seqlens must have at least one entry (the leading 0), got none")
        if cu[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {cu[0]} (first entries {cu[:4]})")
        lengths = tuple(b - a for a, b in itertools.pairwise(cu))
        if any(n < 0 for n in lengths):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {list(cu[:16])}")
        spans = tuple((a, b) for a, b in itertools.pairwise(cu) if b > a)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "spans", spans)
        object.__setattr__(self, "total", cu[-1])
        object.__setattr__(self, "max_len", max(lengths, default=0))
        npu = torch.tensor([b - a for a, b in spans], dtype=torch.int32)
        object.__setattr__(self, "npu_seq_len", npu)

    @classmethod
    def from_values(cls, values: Sequence[int] | Any) -> HostSeqLens:
        """From host cumulative offsets: a list, a numpy array or a CPU tensor."""
        if isinstance(values, torch.Tensor):
            if values.device.type != "cpu":
                raise ValueError(
                    f"host cu_seqlens must be on the CPU, got a tensor on {values.device}; "
                    "pass the numpy array or list it was made from"
                )
            values = values.tolist()
        elif hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, list | tuple) or any(isinstance(v, list) for v in values):
            raise ValueError(f"cu_seqlens must be 1-D, got {type(values).__name__} {values!r:.80}")
        return cls(tuple(int(v) for v in values))

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def uniform(num_seqs: int, seq_len: int) -> HostSeqLens:
        """``num_seqs`` sequences of ``seq_len`` tokens (``cu_seqlens=None``); cached."""
        return HostSeqLens(
            tuple(range(0, (num_seqs + 1) * seq_len, seq_len)) if seq_len else (0,) * (num_seqs + 1)
        )


def _stamp(t: torch.Tensor) -> tuple[Any, ...]:
    """What must be unchanged for a cached entry to still describe ``t``."""
    # Inference tensors keep no version counter (reading it raises).
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), tuple(t.shape), t.dtype, t.device, version)


def _alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


class _Cache:
    """Weak map: ``cu_seqlens`` tensor -> (stamp, host lengths).

    Looked up by identity first, then by memory (pointer, shape, strides, dtype) for another
    tensor object over the same memory - a compiler may hand a kernel such an alias. A memory
    entry counts only while the tensor it was made for is alive: until then no other tensor
    can own that memory, so equal stamps mean equal values.
    """

    MAX_ALIASES = 64

    def __init__(self) -> None:
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._aliases: dict[tuple[Any, ...], tuple[weakref.ref[torch.Tensor], Any, HostSeqLens]]
        self._aliases = {}
        self._lock = threading.Lock()

    def get(self, t: torch.Tensor) -> HostSeqLens | None:
        stamp = _stamp(t)
        with self._lock:
            entry = self._entries.get(t)
            alias = self._aliases.get(_alias_key(t)) if entry is None else None
        if entry is not None:
            return entry[1] if entry[0] == stamp else None
        if alias is None:
            return None
        owner, owner_stamp, lens = alias[0](), alias[1], alias[2]
        if owner is None or owner_stamp != stamp or _stamp(owner) != owner_stamp:
            return None
        with self._lock:
            self._entries[t] = (stamp, lens)
        return lens

    def put(self, t: torch.Tensor, lens: HostSeqLens) -> None:
        with self._lock:
            stamp = _stamp(t)
            self._entries[t] = (stamp, lens)
            if len(self._aliases) >= self.MAX_ALIASES:
                self._aliases = {k: v for k, v in self._aliases.items() if v[0]() is not None}
            self._aliases[_alias_key(t)] = (weakref.ref(t), stamp, lens)

    def discard(self, t: torch.Tensor) -> None:
        with self._lock:
            self._entries.pop(t, None)
            self._aliases.pop(_alias_key(t), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class ForwardScope:
    """One encoder forward's lengths and counters (see :func:`encoder_forward`).

    Attributes:
        host_reads: ``cu_seqlens`` read back to the host in this scope (device-to-host copies
            on an accelerator).
        hits: look-ups answered without a read.
    """

    host_reads: int = 0
    hits: int = 0
    _cache: _Cache = field(default_factory=_Cache, repr=False)


_GLOBAL = _Cache()
_scope: ContextVar[ForwardScope | None] = ContextVar("mm_encoder_ascend_scope", default=None)


def remember_host_cu_seqlens(cu_seqlens: torch.Tensor, host_cu_seqlens: Any) -> HostSeqLens:
    """Record that device tensor ``cu_seqlens`` holds ``host_cu_seqlens``.

    Call it where the device tensor is made from host values (vLLM's
    ``maybe_recompute_cu_seqlens`` does, through this package's class). Every layer then finds
    the lengths without reading the device. The entry lives as long as the tensor and is
    ignored once the tensor is modified in place (its version counter moves) or re-pointed.

    Args:
        cu_seqlens: the tensor the layers will receive, ``[N + 1]`` int32, any device.
        host_cu_seqlens: the same offsets on the host (numpy array, list or CPU tensor).

    Returns:
        The host lengths, as the layers will see them.
    """
    lens = HostSeqLens.from_values(host_cu_seqlens)
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() != len(lens.cu):
        raise ValueError(
            f"cu_seqlens has shape {tuple(cu_seqlens.shape)} but the host offsets have "
            f"{len(lens.cu)} entries; they must describe the same sequences"
        )
    scope = _scope.get()
    (scope._cache if scope is not None else _GLOBAL).put(cu_seqlens, lens)
    return lens


def to_device_cu_seqlens(host_cu_seqlens: Any, device: torch.device | str) -> torch.Tensor:
    """``host_cu_seqlens`` as a fresh int32 tensor on ``device``, remembered with its values.

    The way to build ``cu_seqlens`` so that no layer ever reads it back: vLLM's hand-over
    (``maybe_recompute_cu_seqlens``) goes through here.
    """
    cu = _platform.to_device_int32(host_cu_seqlens, torch.device(device))
    remember_host_cu_seqlens(cu, host_cu_seqlens)
    return cu


def host_seq_lens(cu_seqlens: torch.Tensor) -> HostSeqLens:
    """The host lengths of ``cu_seqlens``: from the cache, or read once and cached.

    Raises:
        ValueError: ``cu_seqlens`` is not a 1-D integer tensor, or its values are not
            non-decreasing offsets starting at 0.
    """
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            "cu_seqlens must be a 1-D int32/int64 tensor of cumulative offsets, got "
            f"shape {tuple(cu_seqlens.shape)} {cu_seqlens.dtype}"
        )
    scope = _scope.get()
    if scope is not None:
        lens = scope._cache.get(cu_seqlens)
        if lens is not None:
            scope.hits += 1
            return lens
    lens = _GLOBAL.get(cu_seqlens)
    if lens is not None:
        if scope is not None:
            scope.hits += 1
        return lens
    lens = HostSeqLens.from_values(_platform.read_to_host(cu_seqlens))
    if scope is not None:
        scope.host_reads += 1
        scope._cache.put(cu_seqlens, lens)
    else:
        _GLOBAL.put(cu_seqlens, lens)
    return lens


def forget(cu_seqlens: torch.Tensor) -> None:
    """Drop any cached lengths of ``cu_seqlens`` (before refilling a reused buffer in place)."""
    scope = _scope.get()
    if scope is not None:
        scope._cache.discard(cu_seqlens)
    _GLOBAL.discard(cu_seqlens)


@contextmanager
def encoder_forward() -> Iterator[ForwardScope]:
    """Scope one encoder forward: lengths read or remembered inside die with the block.

    Use it around an encoder forward when ``cu_seqlens`` is a buffer refilled in place between
    requests under ``torch.inference_mode`` (inference tensors have no version counter, so the
    cache could not notice the refill). It also counts the forward's host reads.

    Example:
        >>> with encoder_forward() as fwd:
        ...     out = vision_tower(pixels, cu_seqlens)
        >>> assert fwd.host_reads <= 1
    """
    scope = ForwardScope()
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


__all__ = [
    "ForwardScope",
    "HostSeqLens",
    "encoder_forward",
    "forget",
    "host_seq_lens",
    "remember_host_cu_seqlens",
    "to_device_cu_seqlens",
]
