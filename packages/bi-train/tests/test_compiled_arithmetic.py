"""``vllm_compiled()``: SiLU-and-mul as a compiled vLLM computes it (fp32, one rounding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bi_train
from bi_train import _ops


def _gate_up() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(32, 2 * 384, generator=gen) * 3).bfloat16()


def _per_op(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _one_rounding(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return (F.silu(x[..., :d].float()) * x[..., d:].float()).bfloat16()


def test_default_is_the_eager_engines_arithmetic() -> None:
    x = _gate_up()
    assert not bi_train.is_vllm_compiled()
    with bi_train.batch_invariant(), bi_train.recording() as rec:
        out = bi_train.silu_and_mul(x)
    assert torch.equal(out, _per_op(x))
    assert rec.providers()["silu_and_mul"] == ["native"]


def test_inside_vllm_compiled_silu_rounds_once() -> None:
    x = _gate_up()
    assert not torch.equal(_one_rounding(x), _per_op(x))  # the two arithmetics differ here
    with bi_train.vllm_compiled(), bi_train.batch_invariant(), bi_train.recording() as rec:
        assert bi_train.is_vllm_compiled()
        out = bi_train.silu_and_mul(x)
    assert not bi_train.is_vllm_compiled()
    assert torch.equal(out, _one_rounding(x))
    assert rec.providers()["silu_and_mul"] == [_ops.FP32_ACT]


def test_matches_inductor_on_this_machine() -> None:
    """What a compiled vLLM runs: its native SiluAndMul through torch.compile (Inductor)."""
    x = _gate_up()
    compiled = torch.compile(_per_op)(x)
    with bi_train.vllm_compiled(), bi_train.batch_invariant():
        assert torch.equal(bi_train.silu_and_mul(x), compiled)


def test_backward_is_the_same_in_both_modes() -> None:
    x = _gate_up().float().requires_grad_(True)
    grads = []
    for compiled in (False, True):
        with bi_train.vllm_compiled(compiled), bi_train.batch_invariant():
            (bi_train.silu_and_mul(x) ** 2).sum().backward()
        grads.append(x.grad.clone())
        x.grad = None
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_switch_is_refused() -> None:
    with pytest.raises(TypeError, match="on must be a bool"), bi_train.vllm_compiled(1):  # type: ignore[arg-type]
        pass
