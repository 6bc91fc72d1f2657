"""Selection remembered per argument layout: only where every check tried is layout-only, and
forgotten whenever the registry changes; ``prepare`` supplies what serves later calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import IrOp


class _Counting:
    """A support check that counts its calls and accepts fp32 only."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> bool | str:
        self.calls += 1
        return x.dtype == torch.float32 or "fp32 only"


def _invariant_sum(x: torch.Tensor) -> torch.Tensor:
    return x.double().sum(dim=-1).to(x.dtype)


def _register_fast(op: IrOp, **options: Any) -> None:
    """Provider ``fast``: priority 20, layout-only, serving :func:`_invariant_sum`."""
    op.register_impl("fast", batch_invariant=True, priority=20, layout_only=True, **options)(
        _invariant_sum
    )


def test_layout_only_choice_is_remembered_per_layout_and_mode(row_sum_op: IrOp) -> None:
    check = _Counting()
    _register_fast(row_sum_op, supports_args=check)
    x = torch.randn(3, 5)
    with ird.batch_invariant():
        for _ in range(3):
            torch.testing.assert_close(row_sum_op.call_selected(x), x.sum(-1))
        row_sum_op.call_selected(torch.randn(3, 5))  # new data, same layout
        assert check.calls == 1
        row_sum_op.call_selected(torch.randn(4, 5))  # another shape
        row_sum_op.call_selected(x.t().contiguous().t())  # other strides
        assert check.calls == 3
    row_sum_op.call_selected(x)  # default mode is another key
    assert check.calls == 4
    assert row_sum_op.remembered_layouts() == 4


def test_the_remembered_choice_gives_the_same_rejections(row_sum_op: IrOp) -> None:
    """A layout the check declined keeps being declined: bad input never slips through."""
    _register_fast(row_sum_op, supports_args=_Counting())
    x64 = torch.randn(3, 5, dtype=torch.float64)
    with ird.batch_invariant():
        for _ in range(2):
            with pytest.raises(ird.NoBatchInvariantImplError, match="fp32 only"):
                row_sum_op.call_selected(x64)


def test_checks_not_declared_layout_only_are_asked_every_call(row_sum_op: IrOp) -> None:
    check = _Counting()
    row_sum_op.register_impl("stateful", batch_invariant=True, priority=30, supports_args=check)(
        _invariant_sum
    )
    _register_fast(row_sum_op, supports_args=_Counting())
    x = torch.randn(2, 4)
    with ird.batch_invariant():
        for _ in range(3):
            row_sum_op.call_selected(x)
    assert check.calls == 3 and row_sum_op.remembered_layouts() == 0


def test_a_registration_forgets_every_layout(row_sum_op: IrOp) -> None:
    _register_fast(row_sum_op)
    x = torch.randn(2, 4)
    with ird.batch_invariant():
        row_sum_op.call_selected(x)
        assert row_sum_op.remembered_layouts() == 1
        calls: list[torch.Tensor] = []
        row_sum_op.register_impl("newer", batch_invariant=True, priority=50)(
            lambda t: calls.append(t) or _invariant_sum(t)
        )
        assert row_sum_op.remembered_layouts() == 0
        row_sum_op.call_selected(x)
        assert len(calls) == 1  # the new provider serves at once


def test_prepare_serves_later_calls_and_recording_still_counts(row_sum_op: IrOp) -> None:
    prepared_for: list[torch.Size] = []

    def prepare(x: torch.Tensor) -> Callable[..., Any]:
        prepared_for.append(x.shape)
        return lambda t: _invariant_sum(t) + 0  # a plan: same result, other path

    fn_calls: list[int] = []
    row_sum_op.register_impl(
        "planned", batch_invariant=True, priority=20, layout_only=True, prepare=prepare
    )(lambda t: fn_calls.append(1) or _invariant_sum(t))
    x = torch.randn(3, 6)
    with ird.batch_invariant(), ird.recording() as rec:
        first = row_sum_op.call_selected(x)
        again = row_sum_op.call_selected(x.clone())
    assert torch.equal(first, again)
    assert prepared_for == [x.shape] and len(fn_calls) == 1
    assert rec.counts[(row_sum_op.name, "planned")] == 2


def test_unmodelled_arguments_and_keywords_are_never_remembered(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("fast", batch_invariant=True, priority=20, layout_only=True)(
        lambda x, tag="a": _invariant_sum(x)
    )
    with ird.batch_invariant():
        row_sum_op.call_selected(torch.ones(2, 2), "text")
        row_sum_op.call_selected(torch.ones(2, 2), tag="b")
    assert row_sum_op.remembered_layouts() == 0


def test_layout_key_models_layout_and_scalars() -> None:
    x = torch.randn(4, 6)
    key = ird.layout_key("op", x, None, 3, 2.0, True, [1, 2], torch.float16)
    assert key == ird.layout_key("op", torch.randn(4, 6), None, 3, 2.0, True, [1, 2], torch.float16)
    assert key != ird.layout_key("op", x.t(), None, 3, 2.0, True, [1, 2], torch.float16)
    assert ird.layout_key("op", 1) != ird.layout_key("op", True)
    assert ird.layout_key("op", 1) != ird.layout_key("op", 1.0)
    assert ird.layout_key("op", torch.nn.Parameter(x)) != ird.layout_key("op", x)
    assert ird.layout_key("op", "text") is None
    assert ird.layout_key("op", [[1]]) is None


def test_a_check_for_another_platform_does_not_block_remembering(row_sum_op: IrOp) -> None:
    """A provider for other devices (ir-dispatch's ``cpu`` beside ``triton`` on CUDA) is
    rejected by the devices, which the layout holds: it never stops remembering."""
    elsewhere = _Counting()
    row_sum_op.register_impl(
        "npu_only",
        batch_invariant=True,
        priority=30,
        platforms=[ird.PlatformKind.NPU],
        supports_args=elsewhere,
    )(_invariant_sum)
    check = _Counting()
    _register_fast(row_sum_op, supports_args=check)
    x = torch.randn(2, 4)
    with ird.batch_invariant():
        for _ in range(3):
            row_sum_op.call_selected(x)
    assert elsewhere.calls == 0 and check.calls == 1


class _WritesOut:
    """A prepared function that can write into ``out`` (like bi-triton-ascend's GEMM plans)."""

    writes_out = True

    def __init__(self) -> None:
        self.in_place = 0

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        result = _invariant_sum(x)
        if out is not None and out.shape == result.shape and out.dtype == result.dtype:
            self.in_place += 1
            return out.copy_(result)
        return result


def test_call_into_writes_in_place_when_the_prepared_function_can(row_sum_op: IrOp) -> None:
    prepared = _WritesOut()
    row_sum_op.register_impl(
        "planned", batch_invariant=True, priority=20, layout_only=True,
        prepare=lambda x: prepared,
    )(_invariant_sum)  # fmt: skip
    x = torch.randn(3, 6)
    with ird.batch_invariant():
        first = torch.empty(3)
        assert row_sum_op.call_into(first, x) is first  # selected, then copied
        again = torch.empty(3)
        assert row_sum_op.call_into(again, x) is again
        assert prepared.in_place == 1 and torch.equal(first, again)
        resized = torch.empty(0, dtype=torch.float64)  # wrong shape and dtype: resized, cast
        row_sum_op.call_into(resized, x)
        assert resized.shape == (3,) and torch.equal(resized, first.double())


def test_call_into_copies_for_functions_without_writes_out(row_sum_op: IrOp) -> None:
    _register_fast(row_sum_op)
    x = torch.randn(2, 5)
    with ird.batch_invariant():
        outs = [torch.empty(2) for _ in range(2)]
        for out in outs:
            assert row_sum_op.call_into(out, x) is out
    assert torch.equal(outs[0], _invariant_sum(x)) and torch.equal(outs[1], outs[0])


def test_remembering_can_be_switched_off(row_sum_op: IrOp) -> None:
    check = _Counting()
    _register_fast(row_sum_op, supports_args=check)
    x = torch.randn(2, 4)
    with ird.batch_invariant():
        row_sum_op.call_selected(x)
        assert row_sum_op.remembered_layouts() == 1
        ird.set_remembering(False)
        try:
            assert not ird.remembering() and row_sum_op.remembered_layouts() == 0
            for _ in range(2):
                row_sum_op.call_selected(x)
                row_sum_op.call_into(torch.empty(2), x)
            assert check.calls == 5 and row_sum_op.remembered_layouts() == 0
        finally:
            ird.set_remembering(True)
        row_sum_op.call_selected(x)
        row_sum_op.call_selected(x)
        assert check.calls == 6
    with pytest.raises(TypeError, match="on must be a bool"):
        ird.set_remembering(1)  # type: ignore[arg-type]


def test_env_name_matches_the_plugin_info() -> None:
    """``vllm-bi info`` names this switch without importing the registry: keep them equal."""
    from ir_dispatch import registry

    assert registry.REMEMBER_ENV == "IR_DISPATCH_REMEMBER"


def test_a_failing_prepare_hook_leaves_the_layout_to_fn(
    row_sum_op: IrOp, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(x: torch.Tensor) -> None:
        raise RuntimeError("no plan")

    _register_fast(row_sum_op, prepare=broken)
    x = torch.randn(2, 3)
    with ird.batch_invariant(), caplog.at_level("WARNING", logger="ir_dispatch"):
        first = row_sum_op.call_selected(x)
        again = row_sum_op.call_selected(x)
    assert torch.equal(first, again)
    remembered = row_sum_op.remembered_for(x)
    assert remembered is None  # default mode now: another key
    with ird.batch_invariant():
        remembered = row_sum_op.remembered_for(x)
    assert remembered is not None and remembered[1] is _invariant_sum
    assert "prepare hook failed" in caplog.text
