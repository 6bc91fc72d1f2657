"""The op this package declares, ``mm_encoder_attention``, and its kernels."""

from .mm_encoder_attention import attend_per_sequence, mm_encoder_attention
from .mm_encoder_attention_npu import attend_npu_unpad
from .mm_encoder_attention_varlen import attend_varlen

__all__ = ["attend_npu_unpad", "attend_per_sequence", "attend_varlen", "mm_encoder_attention"]
