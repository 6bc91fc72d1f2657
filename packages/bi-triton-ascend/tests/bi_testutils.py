"""Shared test helpers: the per-dtype tolerance table, references, probe-row batches."""

from __future__ import annotations

import torch

from bi_triton_ascend import _platform

DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Max |out - ref| / max |ref| against a float64 reference of the same (rounded) inputs.
# fp32: fp32 accumulation over K <= a few hundred. fp16: one output rounding (2^-11) plus
# accumulation. bf16: one output rounding (2^-9), doubled in the interpreter, whose fp32->bf16
# cast truncates instead of rounding to nearest (Triton 3.6 `_convert_float`).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# Batch sizes straddling the tile and kernel switches. The interpreter tiles switch at 16
# (split-K kernel -> persistent), 32 and 64 (BLOCK_M); real GPUs get the full list.
CPU_BATCHES = (1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65)
GPU_BATCHES = (*range(1, 258), 1000)


def batches() -> tuple[int, ...]:
    return CPU_BATCHES if _platform.interpreting() else GPU_BATCHES


def assert_accurate(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """``out`` within the dtype's tolerance of the float64 ``ref`` (shapes equal, no NaN)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert not torch.isnan(out).any(), "NaN in output"
    inf = torch.isinf(ref)
    assert torch.equal(out.double()[inf], ref[inf]), "infinities differ from the reference"
    finite = ~inf
    if not finite.any():
        return
    got, want = out.double()[finite], ref[finite]
    scale = want.abs().max().clamp_min(1e-30)
    err = ((got - want).abs().max() / scale).item()
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]:g} ({dtype})"


def probe_positions(m: int) -> list[int]:
    """Front, middle and back of a batch of ``m`` rows (deduplicated, in order)."""
    return sorted({0, m // 2, m - 1})


def with_probe(probe: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` random rows like ``probe [1, ...]``, with ``probe`` at every probe position."""
    batch = torch.randn(m, *probe.shape[1:], device=probe.device).to(probe.dtype)
    for p in probe_positions(m):
        batch[p] = probe[0]
    return batch


def rand(*shape: int, dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=device) * scale).to(dtype)
