"""mm-encoder-ascend: multimodal-encoder varlen attention without per-layer host copies.

Vision encoders (Qwen2.5-VL, Qwen3-VL) run varlen attention over the patches of every image in
each of their 24-32 layers. Kernels that need the sequence lengths on the host get them here
from a per-tensor cache, filled from the host ``cu_seqlens`` vLLM hands over (no copy) or by one
read per forward - never one per layer. Quick tour::

    import mm_encoder_ascend as mea

    attn = mea.MMEncoderAttention(num_heads=16, head_size=72)    # vLLM's constructor
    cu = mea.to_device_cu_seqlens(host_cu, device)               # remembered: no read-back
    out = attn(q, k, v, cu_seqlens=cu)                            # [1, T, 16, 72]
    mea.register_oot()    # in a vLLM plugin: vLLM builds this class for MMEncoderAttention
"""

from . import providers
from ._platform import host_reads
from ._seqlens import (
    ForwardScope,
    HostSeqLens,
    encoder_forward,
    forget,
    host_seq_lens,
    remember_host_cu_seqlens,
    to_device_cu_seqlens,
)
from .layer import EncoderAttentionCore, MMEncoderAttention
from .ops.mm_encoder_attention import mm_encoder_attention
from .vllm_oot import register_oot

__version__ = "0.1.0"


__all__ = [
    "EncoderAttentionCore",
    "ForwardScope",
    "HostSeqLens",
    "MMEncoderAttention",
    "encoder_forward",
    "forget",
    "host_reads",
    "host_seq_lens",
    "mm_encoder_attention",
    "providers",
    "register_oot",
    "remember_host_cu_seqlens",
    "to_device_cu_seqlens",
]
