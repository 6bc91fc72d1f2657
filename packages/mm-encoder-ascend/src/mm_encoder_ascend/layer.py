"""``MMEncoderAttention``: a drop-in for vLLM's multimodal-encoder attention layer.

Same constructor ``(num_heads, head_size, scale=None, num_kv_heads=None, prefix="")`` and
forward ``(query, key, value, cu_seqlens=None, max_seqlen=None, sequence_lengths=None)`` as
vLLM 0.32's layer, same input and output shapes (3-D ``[B, S, H*D]`` in and out, or 4-D
``[B, S, H, D]`` in and out). The layer only reshapes and dispatches: the attention itself is
the ir-dispatch op ``mm_encoder_attention``, whose providers take the host lengths from the
per-tensor cache in :mod:`mm_encoder_ascend._seqlens`.

:class:`EncoderAttentionCore` holds the logic so that the vLLM subclass built by
:func:`mm_encoder_ascend.register_oot` shares it without this module importing vLLM.
"""

from __future__ import annotations

import torch

from ir_dispatch import Impl

from . import _platform
from .ops.mm_encoder_attention import mm_encoder_attention


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class EncoderAttentionCore:
    """Configuration and forward of the encoder attention, shared by both layer classes.

    Everything that does not depend on the inputs is settled in :meth:`_configure`: the scale,
    the head size the NPU kernel gets (64 < D < 128 padded to 128) and a pinned provider.
    """

    num_heads: int
    head_size: int
    num_kv_heads: int
    num_queries_per_kv: int
    scale: float
    layer_name: str
    npu_kernel_head_size: int
    _pinned: Impl | None

    def _configure(
        self,
        num_heads: int,
        head_size: int,
        scale: float | None,
        num_kv_heads: int | None,
        prefix: str,
        provider: str | None,
    ) -> None:
        self.num_heads = _positive_int("num_heads", num_heads)
        self.head_size = _positive_int("head_size", head_size)
        kv = num_heads if num_kv_heads is None else _positive_int("num_kv_heads", num_kv_heads)
        if num_heads % kv:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({kv})")
        self.num_kv_heads = kv
        self.num_queries_per_kv = num_heads // kv
        if scale is not None and not isinstance(scale, int | float):
            raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
        self.scale = float(head_size**-0.5 if scale is None else scale)
        self.layer_name = prefix
        self.npu_kernel_head_size = _platform.npu_kernel_head_size(head_size)
        self._pinned = None
        if provider is not None:
            try:
                self._pinned = mm_encoder_attention.impl(provider)
            except KeyError as exc:
                raise ValueError(str(exc.args[0])) from None

    def _to_4d(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        dim = query.dim()
        if dim not in (3, 4) or key.dim() != dim or value.dim() != dim:
            raise ValueError(
                "query, key and value must all be 3-D [B, S, H*D] or all 4-D [B, S, H, D], got "
                f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        heads = (
            ("query", query, self.num_heads),
            ("key", key, self.num_kv_heads),
            ("value", value, self.num_kv_heads),
        )
        out = []
        for name, t, h in heads:
            want = (h * self.head_size,) if dim == 3 else (h, self.head_size)
            if tuple(t.shape[2:]) != want:
                raise ValueError(
                    f"{name} must end in {want} ({h} heads of {self.head_size}), got shape "
                    f"{tuple(t.shape)}"
                )
            out.append(t.unflatten(2, (h, self.head_size)) if dim == 3 else t)
        return out[0], out[1], out[2], dim == 3

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
    ) -> torch.Tensor:
        q, k, v, flat = self._to_4d(query, key, value)
        if self._pinned is not None:
            verdict = (
                self._pinned.supports_args(q, k, v, cu_seqlens, self.scale)
                if (self._pinned.supports_args is not None)
                else True
            )
            if verdict is not True:
                raise ValueError(f"provider {self._pinned.provider!r} declines: {verdict}")
            out = self._pinned.fn(q, k, v, cu_seqlens, self.scale)
        elif torch.compiler.is_compiling():
            # Opaque to the compiler: the provider and the host lengths are chosen at run time.
            out = mm_encoder_attention(q, k, v, cu_seqlens, self.scale)
        else:
            # Eager: skip the custom-op boundary (tens of microseconds per layer).
            out = mm_encoder_attention.call_selected(q, k, v, cu_seqlens, self.scale)
        return out.flatten(2) if flat else out

    def extra_repr(self) -> str:
        pinned = f", provider={self._pinned.provider}" if self._pinned is not None else ""
        return (
            f"num_heads={self.num_heads}, head_size={self.head_size}, "
            f"num_kv_heads={self.num_kv_heads}, scale={self.scale:.6g}{pinned}"
        )


class MMEncoderAttention(EncoderAttentionCore, torch.nn.Module):
    """Multimodal-encoder attention without per-layer host copies (no vLLM needed).

    Args:
        num_heads: query heads (per tensor-parallel partition).
        head_size: size of each head.
        scale: softmax scale; ``head_size ** -0.5`` if ``None``. Computed once here.
        num_kv_heads: key/value heads (``num_heads`` if ``None``); fewer for GQA/MQA.
        prefix: the layer's name, kept as ``layer_name``.
        provider: pin one provider of ``mm_encoder_attention`` (``npu``, ``varlen``,
            ``per_sequence``, ``native``) instead of dispatching; for tests and benchmarks.

    Example:
        >>> attn = MMEncoderAttention(16, 72)
        >>> out = attn(q, k, v, cu_seqlens=cu)     # q [1, T, 16, 72] -> out [1, T, 16, 72]
    """

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float | None = None,
        num_kv_heads: int | None = None,
        prefix: str = "",
        *,
        provider: str | None = None,
    ) -> None:
        super().__init__()
        self._configure(num_heads, head_size, scale, num_kv_heads, prefix, provider)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: torch.Tensor | None = None,
        sequence_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of each sequence over itself.

        Args:
            query: ``[B, S, num_heads * head_size]`` or ``[B, S, num_heads, head_size]``.
            key: ``[B, S_kv, num_kv_heads * head_size]`` or ``[B, S_kv, num_kv_heads,
                head_size]``.
            value: like ``key``.
            cu_seqlens: ``[N + 1]`` int32 offsets of the ``B * S`` packed tokens; ``None``
                makes every batch row one sequence.
            max_seqlen: accepted for vLLM compatibility and ignored (the host lengths give it).
            sequence_lengths: accepted for vLLM compatibility (FlashInfer's) and ignored.

        Returns:
            ``query``'s shape.
        """
        return self._attend(query, key, value, cu_seqlens)


__all__ = ["EncoderAttentionCore", "MMEncoderAttention"]
