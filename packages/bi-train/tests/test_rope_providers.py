"""RoPE providers: vLLM's GPU arithmetic (fp32, one rounding) vs the per-op native reference."""

from __future__ import annotations

import torch

from bi_train import _ops


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 4, 128, generator=gen) * 2).bfloat16()
    angles = torch.rand(64, 64, generator=gen) * 100
    return x, angles.cos().bfloat16(), angles.sin().bfloat16()


def test_fp32_provider_rounds_once() -> None:
    x, cos, sin = _inputs()
    got = _ops.fp32_rotary_embedding(x, cos, sin)
    x1, x2 = x.double().chunk(2, -1)
    c, s = cos.double()[:, None], sin.double()[:, None]
    exact = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    # One rounding of (nearly) the exact value: within half a bf16 ulp plus fp32 noise.
    ulp = torch.finfo(torch.bfloat16).eps * exact.abs().clamp(min=1e-30)
    assert bool(((got.double() - exact).abs() <= ulp).all())


def test_fp32_provider_differs_from_the_per_op_native() -> None:
    """The two arithmetics are not interchangeable (H200: 165287 of 614400 outputs differed)."""
    x, cos, sin = _inputs()
    per_op = _ops._rotary_embedding(x, cos, sin)  # the native reference
    assert not torch.equal(_ops.fp32_rotary_embedding(x, cos, sin), per_op)


def test_fp32_provider_is_registered_for_gpus_only() -> None:
    impl = next(i for i in _ops.rotary_embedding.impls if i.provider == _ops.FP32_ROPE)
    assert impl.batch_invariant
    assert {p.value for p in impl.platforms} == {"cuda", "rocm"}
    assert impl.priority > 0  # the native reference has priority 0
