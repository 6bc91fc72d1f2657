"""bi-train: the trainer side of on-policy RL.

It runs the kernels the vLLM plugin runs (through the one ``batch_invariant()`` mode that
ir-dispatch owns) and adds deterministic backward passes, so the trainer's logprobs equal the
rollout's bit for bit. Status: linear, RMSNorm and logprobs have backward passes; RoPE,
SiLU-and-mul, attention and the ``transformers`` Qwen3 hooks are not built yet.
"""

from ir_dispatch import batch_invariant, is_batch_invariant

from .autograd import linear, log_softmax_fp32, rms_norm
from .logprobs import token_logprobs

__version__ = "0.1.0"

__all__ = [
    "batch_invariant",
    "is_batch_invariant",
    "linear",
    "log_softmax_fp32",
    "rms_norm",
    "token_logprobs",
]
