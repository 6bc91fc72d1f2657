from __future__ import annotations

import torch

import ir_dispatch as ird
from ir_dispatch import IrOp


def test_explain_lists_every_candidate_and_the_choice(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("variant", batch_invariant=False, priority=50, note="atomics")(
        row_sum_op.native
    )
    row_sum_op.register_impl("invariant", batch_invariant=True, priority=10, note="fixed order")(
        row_sum_op.native
    )
    x = torch.ones(2, 3)

    default = ird.explain(row_sum_op, x, batch_invariant=False)
    assert default.chosen == "variant"
    assert [c.provider for c in default.candidates] == ["variant", "invariant", "native"]

    bi = ird.explain(row_sum_op.name, x, batch_invariant=True)
    assert bi.chosen == "invariant"
    verdicts = {c.provider: c.rejection for c in bi.candidates}
    assert verdicts["variant"] == "batch-variant on cpu: atomics"
    assert verdicts["invariant"] is None
    text = str(bi)
    assert "batch-invariant mode -> invariant" in text
    assert "* invariant" in text


def test_explain_follows_the_active_mode(row_sum_op: IrOp) -> None:
    x = torch.ones(2, 3)
    assert ird.explain(row_sum_op, x).chosen == "native"
    with ird.batch_invariant():
        exp = ird.explain(row_sum_op, x)
    assert exp.chosen is None
    assert "NO IMPLEMENTATION" in str(exp)


def test_explain_does_not_run_the_op(row_sum_op: IrOp) -> None:
    calls: list[int] = []

    @row_sum_op.register_impl("counting", batch_invariant=True)
    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x.sum(-1)

    ird.explain(row_sum_op, torch.ones(2, 2))
    assert calls == []
