"""Shared test helpers: FP8 tensor factories, reference products, shapes and the SM90 gate."""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn

# Weight shapes (N, K) of the invariance tests: two generic ones and Qwen3-8B's linear layers.
GENERIC_SHAPES = {"n1024_k2048": (1024, 2048), "n4608_k4096": (4608, 4096)}
QWEN3_8B = {
    "qwen3_8b_qkv": (6144, 4096),
    "qwen3_8b_o": (4096, 4096),
    "qwen3_8b_gate_up": (24576, 4096),
    "qwen3_8b_down": (4096, 12288),
}
# Batch sizes straddling the token tiles (16, 64) and the 256 mark.
GPU_BATCHES = (1, 16, 17, 32, 64, 65, 256, 257)


def sm90_skip_reason() -> str | None:
    """Why the CUTLASS kernel cannot run here, or ``None`` on an SM90 GPU."""
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return "needs an NVIDIA SM90 GPU (H100/H200); torch sees no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        return f"needs an NVIDIA SM90 GPU (H100/H200); this GPU is sm{major}{minor}"
    return None


def random_fp8(*shape: int, device: str | torch.device = "cpu", scale: float = 1.0) -> torch.Tensor:
    """Normal samples times ``scale``, saturated to e4m3's range and rounded to e4m3."""
    x = torch.randn(*shape, device=device) * scale
    return x.clamp(-448.0, 448.0).to(FP8)


def small_int_fp8(*shape: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Integers in [-2, 2]: products and short sums are exact in every accumulator."""
    return torch.randint(-2, 3, shape, device=device).to(torch.float32).to(FP8)


def weight_t(
    n: int, k: int, device: str | torch.device = "cpu", scale: float = 1.0
) -> torch.Tensor:
    """A row-major ``[N, K]`` FP8 weight returned as the column-major ``[K, N]`` view ``w.t()``."""
    return random_fp8(n, k, device=device, scale=scale).t()


def reference(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact product of the dequantized inputs in float64 (``[M, N]``)."""
    sa = scale_a.double().reshape(-1, 1) if scale_a.numel() > 1 else scale_a.double().reshape(())
    sb = scale_b.double().reshape(1, -1) if scale_b.numel() > 1 else scale_b.double().reshape(())
    out = (a.double() @ b.double()) * sa * sb
    return out if bias is None else out + bias.double()


def magnitude(
    a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor
) -> torch.Tensor:
    """``(|a| @ |b|) * |scale_a| * |scale_b|`` in float64: the scale of accumulation error."""
    return reference(a.double().abs(), b.double().abs(), scale_a.abs(), scale_b.abs())
