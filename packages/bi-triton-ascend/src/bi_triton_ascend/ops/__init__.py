"""Batch-invariant Triton ops: one module per op family (kernel -> launch helper -> function)."""

from .matmul import linear, matmul
from .mean import mean, mean_of_squares
from .mm import addmm, bmm, mm
from .qk_norm_rope import qk_norm_rope
from .rms_norm import fused_add_rms_norm, rms_norm
from .softmax import log_softmax, softmax
from .token_logprobs import token_logprobs

__all__ = [
    "addmm",
    "bmm",
    "fused_add_rms_norm",
    "linear",
    "log_softmax",
    "matmul",
    "mean",
    "mean_of_squares",
    "mm",
    "qk_norm_rope",
    "rms_norm",
    "softmax",
    "token_logprobs",
]
