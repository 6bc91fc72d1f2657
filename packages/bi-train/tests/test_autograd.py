from __future__ import annotations

import pytest
import torch

import bi_train
import ir_dispatch as ird


def _cpu_provider_present() -> bool:
    return any(
        i.provider != "native" and i.is_batch_invariant_on(ird.PlatformKind.CPU)
        for i in ird.ops.mm.impls
    )


def _step(seed: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    x = torch.randn(6, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(48, 32, dtype=torch.float64, requires_grad=True)
    nw = torch.rand(48, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 48, (6,))
    h = bi_train.rms_norm(bi_train.linear(x, w), nw, 1e-6)
    loss = -bi_train.token_logprobs(h, targets).sum()
    loss.backward()
    return loss.detach(), x.grad, w.grad, nw.grad  # type: ignore[return-value]


def _reference_step(seed: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    x = torch.randn(6, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(48, 32, dtype=torch.float64, requires_grad=True)
    nw = torch.rand(48, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 48, (6,))
    h = x @ w.t()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * nw
    loss = -torch.log_softmax(h, -1).gather(-1, targets[:, None]).sum()
    loss.backward()
    return loss.detach(), x.grad, w.grad, nw.grad  # type: ignore[return-value]


def test_gradients_match_a_float64_autograd_reference() -> None:
    for got, want in zip(_step(0), _reference_step(0), strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-5)


def test_two_runs_are_bitwise_equal() -> None:
    for a, b in zip(_step(3), _step(3), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(
    not _cpu_provider_present(), reason="needs ir-dispatch's batch-invariant CPU provider"
)
def test_forward_is_the_dispatched_op_bitwise_in_batch_invariant_mode() -> None:
    torch.manual_seed(1)
    x = torch.randn(9, 64, dtype=torch.bfloat16)
    w = torch.randn(32, 64, dtype=torch.bfloat16)
    with bi_train.batch_invariant():
        assert torch.equal(bi_train.linear(x, w), ird.ops.linear(x, w))
        alone = bi_train.linear(x[:1], w)
        assert torch.equal(alone, bi_train.linear(x, w)[:1])


def test_token_logprobs_modes_and_errors() -> None:
    logits = torch.randn(2, 3, 10)
    ids = torch.randint(0, 10, (2, 3))
    raw = bi_train.token_logprobs(logits, ids)
    torch.testing.assert_close(
        raw, torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    )
    hot = bi_train.token_logprobs(logits, ids, temperature=0.5, mode="processed_logprobs")
    torch.testing.assert_close(
        hot, torch.log_softmax(logits / 0.5, -1).gather(-1, ids[..., None])[..., 0]
    )
    with pytest.raises(ValueError, match="token_ids shape"):
        bi_train.token_logprobs(logits, ids[:, :2])
    with pytest.raises(ValueError, match="mode must be"):
        bi_train.token_logprobs(logits, ids, mode="bogus")  # type: ignore[arg-type]
