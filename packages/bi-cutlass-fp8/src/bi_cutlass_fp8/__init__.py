"""bi-cutlass-fp8: a batch-invariant FP8 (e4m3) scaled GEMM built from CUTLASS.

``out = (a @ b) * scale_a * scale_b (+ bias)`` with per-tensor or per-token/per-channel scales
and a bf16/fp16 output, where a token's row gets the same bits alone or inside any batch: the
tile configuration is a function of ``(N, K)`` only. The SM90 kernel is JIT-compiled on first
use (nvcc + the ``nvidia-cutlass`` headers). Importing the package registers two ir-dispatch
providers for ``scaled_mm``: ``cutlass_fp8`` (SM90) and ``dequant_bf16`` (any platform, exact
bf16 dequantization + the batch-invariant bf16 mm)::

    import ir_dispatch as ird
    import bi_cutlass_fp8

    with ird.batch_invariant():
        y = ird.ops.scaled_mm(x_fp8, w_fp8.t(), x_scale, w_scale, torch.bfloat16)
    y = bi_cutlass_fp8.scaled_mm(x_fp8, w_fp8.t(), x_scale, w_scale)   # the kernel itself
"""

from __future__ import annotations

from ._configs import SM90_CONFIGS, TileConfig, select_config
from ._jit import BuildError, get_module
from .ops import plan_scaled_mm, scaled_mm, scaled_mm_dequant
from .providers import CUTLASS_FP8, DEQUANT_BF16, register, unregister

__version__ = "0.1.0"

register()

__all__ = [
    "CUTLASS_FP8",
    "DEQUANT_BF16",
    "SM90_CONFIGS",
    "BuildError",
    "TileConfig",
    "__version__",
    "get_module",
    "plan_scaled_mm",
    "register",
    "scaled_mm",
    "scaled_mm_dequant",
    "select_config",
    "unregister",
]
