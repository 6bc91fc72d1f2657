"""The ops: the CUTLASS kernel and the exact-dequantization fallback."""

from .dequant import scaled_mm_dequant
from .scaled_mm import Plan, plan_scaled_mm, scaled_mm, scaled_mm_with_config

__all__ = ["Plan", "plan_scaled_mm", "scaled_mm", "scaled_mm_dequant", "scaled_mm_with_config"]
