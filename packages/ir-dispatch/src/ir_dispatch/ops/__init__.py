"""The standard ops every provider package implements.

Each is an :class:`~ir_dispatch.registry.IrOp`: call it like the torch function it mirrors.
"""

from . import composite as _composite  # noqa: F401  (registers the composite impls)
from .collectives import all_reduce
from .linalg import addmm, bmm, linear, matmul, mm, scaled_mm
from .norm import fused_add_rms_norm, qk_norm_rope, rms_norm
from .reduce import log_softmax, mean, mean_of_squares, softmax, token_logprobs

__all__ = [
    "addmm",
    "all_reduce",
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
    "scaled_mm",
    "softmax",
    "token_logprobs",
]
