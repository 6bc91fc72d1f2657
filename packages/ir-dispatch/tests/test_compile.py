from __future__ import annotations

import torch

import ir_dispatch as ird
from ir_dispatch import ops


class Block(torch.nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(hidden, hidden) / hidden**0.5, requires_grad=False)
        self.norm = torch.nn.Parameter(torch.ones(hidden), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ops.rms_norm(x, self.norm, 1e-6)
        h = ops.linear(h, self.w)
        return ops.log_softmax(h, -1)


def _fixed_order_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    rows = [torch.nn.functional.linear(r, weight, bias) for r in x.reshape(-1, x.shape[-1])]
    return torch.stack(rows).reshape(*x.shape[:-1], weight.shape[0])


def test_fullgraph_compile_calls_the_op_in_both_modes() -> None:
    registrations = [
        (ops.linear, "test_fast", False, torch.nn.functional.linear),
        (ops.linear, "test_rows", True, _fixed_order_linear),
        (ops.rms_norm, "test_ref", True, ops.rms_norm.native),
        (ops.log_softmax, "test_ref", True, ops.log_softmax.native),
    ]
    for op, provider, invariant, fn in registrations:
        op.register_impl(
            provider,
            batch_invariant=invariant,
            platforms=["cpu"],
            priority=99 if not invariant else 50,
        )(fn)
    try:
        block = Block()
        compiled = torch.compile(block, fullgraph=True, dynamic=True)
        x = torch.randn(5, 16)
        expected = block(x)
        with ird.recording() as rec:
            torch.testing.assert_close(compiled(x), expected)
            with ird.batch_invariant():
                torch.testing.assert_close(
                    compiled(torch.cat([x, x])), torch.cat([expected, expected])
                )
        # The mode is read at call time inside the op, so one graph serves both modes.
        assert rec.counts[("linear", "test_fast")] == 1
        assert rec.counts[("linear", "test_rows")] == 1
    finally:
        for op, provider, _, _ in registrations:
            op.unregister_impl(provider)


def test_fullgraph_compile_has_no_graph_breaks() -> None:
    from torch._dynamo.utils import counters

    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(Block(), fullgraph=True)
    compiled(torch.randn(3, 16))
    assert counters["graph_break"] == {}
