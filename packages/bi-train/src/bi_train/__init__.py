"""bi-train: the trainer side of on-policy RL.

It runs the kernels the vLLM plugin runs (through the one ``batch_invariant()`` mode that
ir-dispatch owns) and adds deterministic backward passes, so the trainer's logprobs equal the
rollout's bit for bit. Ops: ``linear``, ``rms_norm``, ``fused_add_rms_norm``,
``rotary_embedding`` (vLLM's table and order), ``silu_and_mul``, packed ``varlen_attention``
and ``token_logprobs``; :func:`patch_qwen3` runs a ``transformers`` Qwen3 on them (padded or
packed batches). Verified on CPU only (see README).
"""

from ir_dispatch import batch_invariant, is_batch_invariant, recording

from . import _vllm_cpu  # noqa: F401  (registers vLLM's CPU kernels where vLLM is installed)
from ._ops import is_vllm_compiled, vllm_compiled
from .attention import ATTN_IMPLEMENTATION, register_transformers_attention, varlen_attention
from .autograd import fused_add_rms_norm, linear, log_softmax_fp32, rms_norm
from .elementwise import cos_sin_cache, rotary_embedding, silu_and_mul
from .layout import PackedLayout, packed_layout
from .logprobs import token_logprobs
from .qwen3 import Qwen3Patch, apply_qwen3_hooks, patch_qwen3

__version__ = "0.2.0"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "PackedLayout",
    "Qwen3Patch",
    "apply_qwen3_hooks",
    "batch_invariant",
    "cos_sin_cache",
    "fused_add_rms_norm",
    "is_batch_invariant",
    "is_vllm_compiled",
    "linear",
    "log_softmax_fp32",
    "packed_layout",
    "patch_qwen3",
    "recording",
    "register_transformers_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "token_logprobs",
    "varlen_attention",
    "vllm_compiled",
]
