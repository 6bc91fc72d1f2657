"""bi-triton-ascend: batch-invariant Triton kernels for NVIDIA GPUs, Ascend NPUs and CPU.

Importing the package registers every kernel with ir-dispatch as provider ``triton`` (batch-
invariant, used in batch-invariant mode). The ops can also be called directly::

    import ir_dispatch as ird
    import bi_triton_ascend as bta

    with ird.batch_invariant():
        y = ird.ops.linear(x, w)          # dispatches to bta.linear
    y = bta.linear(x, w)                  # or call the kernel yourself

Without ``triton`` installed the import succeeds and registers nothing (``supported`` is False).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .providers import PROVIDER, register, supported, unregister

__version__ = "0.1.0"

_OPS = (
    "addmm", "bmm", "fused_add_rms_norm", "linear", "log_softmax", "matmul", "mean",
    "mean_of_squares", "mm", "qk_norm_rope", "rms_norm", "softmax", "token_logprobs",
)  # fmt: skip

if TYPE_CHECKING:  # the defining modules (``ops.mean`` is also a submodule's name)
    from .ops.matmul import linear, matmul
    from .ops.mean import mean, mean_of_squares
    from .ops.mm import addmm, bmm, mm
    from .ops.qk_norm_rope import qk_norm_rope
    from .ops.rms_norm import fused_add_rms_norm, rms_norm
    from .ops.softmax import log_softmax, softmax
    from .ops.token_logprobs import token_logprobs


def __getattr__(name: str) -> Any:
    """The ops load Triton, so they are imported on first use (``supported`` says if they can)."""
    if name in _OPS:
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'bi_triton_ascend' has no attribute {name!r}")


register()

__all__ = [
    "PROVIDER",
    "__version__",
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
    "register",
    "rms_norm",
    "softmax",
    "supported",
    "token_logprobs",
    "unregister",
]
