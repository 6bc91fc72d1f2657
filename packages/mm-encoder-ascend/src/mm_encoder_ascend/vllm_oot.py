"""Registration with vLLM as the out-of-tree ``MMEncoderAttention`` (vLLM is optional).

vLLM 0.32 builds each vision encoder's ``cu_seqlens`` in numpy and turns it into a device
tensor through two classmethods of ``MMEncoderAttention`` that defer to the out-of-tree class
when one is registered: ``maybe_compute_seq_lens`` and ``maybe_recompute_cu_seqlens``. The
class registered here overrides the second to remember the host offsets against the device
tensor it returns (:func:`mm_encoder_ascend.remember_host_cu_seqlens`), so no layer ever reads
``cu_seqlens`` back; models that make ``cu_seqlens`` some other way cost one read per forward.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from ._seqlens import to_device_cu_seqlens
from .layer import EncoderAttentionCore

logger = logging.getLogger("mm_encoder_ascend")

UPSTREAM_MODULE = "vllm.model_executor.layers.attention.mm_encoder_attention"
CUSTOM_OP_MODULE = "vllm.model_executor.custom_op"
OOT_NAME = "MMEncoderAttention"
_MARK = "_mm_encoder_ascend_oot"

_registered: type | None = None


def _build_class(upstream: Any) -> type:
    """Subclass vLLM's layer (instances must be ``isinstance`` of it for ``__init__`` to run)."""

    class VllmMMEncoderAttention(EncoderAttentionCore, upstream):  # type: ignore[misc, valid-type]
        """vLLM's ``MMEncoderAttention`` with this package's forward and host-lengths hand-over."""

        def __init__(
            self,
            num_heads: int,
            head_size: int,
            scale: float | None = None,
            num_kv_heads: int | None = None,
            prefix: str = "",
        ) -> None:
            upstream.__init__(self, num_heads, head_size, scale, num_kv_heads, prefix)
            if getattr(self, "fp8_enabled", False):
                raise ValueError(
                    "mm_encoder_attn_dtype='fp8' is not supported by mm-encoder-ascend's "
                    "MMEncoderAttention; leave the encoder attention in the model dtype"
                )
            self._configure(num_heads, head_size, scale, num_kv_heads, prefix, None)

        @classmethod
        def maybe_compute_seq_lens(
            cls, attn_backend: Any, cu_seqlens: Any, device: torch.device
        ) -> torch.Tensor | None:
            """No device ``sequence_lengths``: the kernels take host lengths from the cache."""
            return None

        @classmethod
        def maybe_recompute_cu_seqlens(
            cls,
            attn_backend: Any,
            cu_seqlens: Any,
            hidden_size: int,
            tp_size: int,
            device: torch.device,
            fp8_padded_hidden_size: int | None = None,
        ) -> torch.Tensor:
            """The plain offsets on ``device``, remembered with their host values."""
            return to_device_cu_seqlens(cu_seqlens, device)

        def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            cu_seqlens: torch.Tensor | None = None,
            max_seqlen: torch.Tensor | None = None,
            sequence_lengths: torch.Tensor | None = None,
        ) -> torch.Tensor:
            return self._attend(query, key, value, cu_seqlens)

        # CustomOp picks one of these per platform; all of them are this package's forward.
        forward_native = forward_cuda = forward_hip = forward_cpu = forward
        forward_xpu = forward_tpu = forward_oot = forward

    setattr(VllmMMEncoderAttention, _MARK, True)
    return VllmMMEncoderAttention


def register_oot(*, replace: bool = True) -> type | None:
    """Register this package's layer as vLLM's out-of-tree ``MMEncoderAttention``.

    Safe to call more than once (plugins may load twice). Without vLLM it does nothing.

    Args:
        replace: if another out-of-tree class (vllm-ascend's, say) is registered already,
            replace it (logged as a warning); with ``False``, raise instead.

    Returns:
        The registered class, or ``None`` when vLLM is not importable.

    Raises:
        RuntimeError: another class is registered and ``replace`` is ``False``.
    """
    global _registered
    try:
        upstream_module = importlib.import_module(UPSTREAM_MODULE)
        custom_op = importlib.import_module(CUSTOM_OP_MODULE)
    except ImportError as exc:
        logger.debug("vLLM not importable (%s): MMEncoderAttention not registered", exc)
        return None
    registry: dict[str, type] = custom_op.op_registry_oot
    current = registry.get(OOT_NAME)
    if current is not None and getattr(current, _MARK, False):
        return current
    upstream = upstream_module.MMEncoderAttention
    cls = _registered if _registered is not None and issubclass(_registered, upstream) else None
    cls = cls or _build_class(upstream)
    if current is not None:
        where = f"{current.__module__}.{current.__qualname__}"
        if not replace:
            raise RuntimeError(
                f"vLLM already has an out-of-tree {OOT_NAME}: {where}; call "
                "register_oot(replace=True) to use mm-encoder-ascend's instead"
            )
        logger.warning("replacing out-of-tree %s %s with mm-encoder-ascend's", OOT_NAME, where)
        del registry[OOT_NAME]
    upstream.register_oot(cls, name=OOT_NAME)
    _registered = cls
    return cls


__all__ = ["register_oot"]
