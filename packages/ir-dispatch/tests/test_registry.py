from __future__ import annotations

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import IrOp, NoBatchInvariantImplError, PlatformKind, register_op


def _fixed_order_row_sum(x: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [r.double().cumsum(0)[-1].to(x.dtype) for r in x.reshape(-1, x.shape[-1])]
    ).reshape(x.shape[:-1])


def test_native_is_registered_with_priority_zero(row_sum_op: IrOp) -> None:
    (native,) = row_sum_op.impls
    assert native.provider == "native"
    assert native.priority == 0
    assert not native.is_batch_invariant_on(PlatformKind.CPU)
    assert native.is_batch_invariant_on(PlatformKind.CUDA)


def test_op_without_reduction_native_counts_as_batch_invariant() -> None:
    def toy_scale(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    op = register_op(has_reduction=False)(toy_scale)
    with ird.batch_invariant():
        assert op.select(torch.ones(2)).provider == "native"
        assert torch.equal(op(torch.ones(2)), torch.full((2,), 2.0))


def test_native_variant_on_requires_reduction() -> None:
    def toy_bad(x: torch.Tensor) -> torch.Tensor:
        return x

    with pytest.raises(ValueError, match="has_reduction=False"):
        register_op(has_reduction=False, native_variant_on={PlatformKind.CPU: "x"})(toy_bad)


def test_redeclaring_an_op_is_an_error(row_sum_op: IrOp) -> None:
    with pytest.raises(ValueError, match="already declared"):
        register_op(name=row_sum_op.name, has_reduction=True)(row_sum_op.native)


def test_priority_orders_providers(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("slow", batch_invariant=True, priority=5)(_fixed_order_row_sum)
    row_sum_op.register_impl("fast", batch_invariant=True, priority=20)(_fixed_order_row_sum)
    assert [i.provider for i in row_sum_op.impls] == ["fast", "slow", "native"]
    assert row_sum_op.select(torch.ones(2, 3)).provider == "fast"


def test_equal_priority_keeps_registration_order(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("first", batch_invariant=True)(_fixed_order_row_sum)
    row_sum_op.register_impl("second", batch_invariant=True)(_fixed_order_row_sum)
    assert [i.provider for i in row_sum_op.impls][:2] == ["first", "second"]


def test_explicit_order_overrides_numbers(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("a", batch_invariant=True, priority=20)(_fixed_order_row_sum)
    row_sum_op.register_impl("b", batch_invariant=True, priority=10)(_fixed_order_row_sum)
    row_sum_op.set_priority(["b"])
    assert [i.provider for i in row_sum_op.impls] == ["b", "a", "native"]
    row_sum_op.set_priority(None)
    assert [i.provider for i in row_sum_op.impls] == ["a", "b", "native"]
    with pytest.raises(ValueError, match="unknown providers"):
        row_sum_op.set_priority(["nope"])


def test_registering_twice_replaces(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("p", batch_invariant=False, priority=3)(_fixed_order_row_sum)
    row_sum_op.register_impl("p", batch_invariant=True, priority=7)(_fixed_order_row_sum)
    assert [(i.provider, i.priority) for i in row_sum_op.impls] == [("p", 7), ("native", 0)]
    assert row_sum_op.impl("p").batch_invariant


def test_reserved_provider_name(row_sum_op: IrOp) -> None:
    with pytest.raises(ValueError, match="reserved"):
        row_sum_op.register_impl("native", batch_invariant=True)(_fixed_order_row_sum)
    with pytest.raises(ValueError, match="cannot be unregistered"):
        row_sum_op.unregister_impl("native")


def test_unregister(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("p", batch_invariant=True)(_fixed_order_row_sum)
    row_sum_op.unregister_impl("p")
    assert [i.provider for i in row_sum_op.impls] == ["native"]


def test_platform_support_check(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("gpu_only", batch_invariant=True, platforms=["cuda"], priority=50)(
        _fixed_order_row_sum
    )
    row_sum_op.register_impl("cpu", batch_invariant=True, platforms=[PlatformKind.CPU])(
        _fixed_order_row_sum
    )
    assert row_sum_op.select(torch.ones(2, 2)).provider == "cpu"


def test_argument_support_check_bool_and_reason(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl(
        "fp32_only",
        batch_invariant=True,
        priority=30,
        supports_args=lambda x: x.dtype == torch.float32 or f"dtype {x.dtype} unsupported",
    )(_fixed_order_row_sum)
    row_sum_op.register_impl(
        "never", batch_invariant=True, priority=40, supports_args=lambda x: False
    )(_fixed_order_row_sum)
    assert row_sum_op.select(torch.ones(2, dtype=torch.float32)).provider == "fp32_only"
    with ird.batch_invariant(), pytest.raises(NoBatchInvariantImplError) as err:
        row_sum_op.select(torch.ones(2, dtype=torch.float64))
    text = str(err.value)
    assert "never: arguments not supported" in text
    assert "fp32_only: dtype torch.float64 unsupported" in text


def test_batch_invariant_mode_filters_variant_impls(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("variant_fast", batch_invariant=False, priority=90)(row_sum_op.native)
    row_sum_op.register_impl("invariant", batch_invariant=True, priority=10)(_fixed_order_row_sum)
    x = torch.randn(3, 5)
    assert row_sum_op.select(x).provider == "variant_fast"
    with ird.batch_invariant():
        assert row_sum_op.select(x).provider == "invariant"
        torch.testing.assert_close(row_sum_op(x), x.sum(-1))


def test_error_names_op_shapes_dtypes_and_each_rejection(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("variant", batch_invariant=False, note="atomics")(row_sum_op.native)
    row_sum_op.register_impl("cuda_kernel", batch_invariant=True, platforms=["cuda"])(
        _fixed_order_row_sum
    )
    x = torch.randn(4, 6, dtype=torch.bfloat16).t()
    with ird.batch_invariant(), pytest.raises(NoBatchInvariantImplError) as err:
        row_sum_op(x)
    text = str(err.value)
    assert f"op '{row_sum_op.name}'" in text
    assert "Tensor(6, 4) bfloat16 on cpu, strides=(1, 6)" in text
    assert "variant: batch-variant on cpu: atomics" in text
    assert "cuda_kernel: runs on cuda, not cpu" in text
    assert "native: batch-variant on cpu: toy: pretend ATen varies" in text
    assert "never falls back" in text


def test_default_mode_never_raises_when_native_exists(row_sum_op: IrOp) -> None:
    torch.testing.assert_close(row_sum_op(torch.ones(2, 3)), torch.full((2,), 3.0))


def test_get_op_and_unknown_names() -> None:
    assert ird.get_op("mm") is ird.ops.mm
    with pytest.raises(ird.UnknownOpError, match=r"declared ops: .*mm"):
        ird.get_op("nope")
    with pytest.raises(KeyError, match="no provider 'nope'"):
        ird.ops.mm.impl("nope")


def test_standard_ops_are_declared() -> None:
    names = {op.name for op in ird.list_ops()}
    assert {
        "mm",
        "addmm",
        "bmm",
        "matmul",
        "linear",
        "rms_norm",
        "fused_add_rms_norm",
        "softmax",
        "log_softmax",
        "token_logprobs",
        "mean",
        "mean_of_squares",
        "scaled_mm",
    } <= names


def test_recording_counts_providers(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("invariant", batch_invariant=True)(_fixed_order_row_sum)
    with ird.batch_invariant(), ird.recording() as rec:
        row_sum_op(torch.ones(2, 2))
        row_sum_op(torch.ones(2, 2))
    assert rec.counts[(row_sum_op.name, "invariant")] == 2
    assert rec.providers() == {row_sum_op.name: ["invariant"]}


def test_custom_op_output_never_aliases_input() -> None:
    def toy_identity(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape)

    op = register_op(has_reduction=False)(toy_identity)
    x = torch.ones(3)
    y = op(x)
    y.add_(1)
    assert torch.equal(x, torch.ones(3))


def test_custom_op_opcheck() -> None:
    x, w = torch.randn(3, 8), torch.randn(8)
    torch.library.opcheck(ird.ops.rms_norm.torch_op, (x, w, 1e-6))
    torch.library.opcheck(ird.ops.mean.torch_op, (x, [1], True, None))


def test_custom_op_outputs_are_contiguous_like_the_fake() -> None:
    def toy_strided(x: torch.Tensor) -> torch.Tensor:
        return x.t() * 1

    op = register_op(has_reduction=False)(toy_strided)
    out = op(torch.randn(3, 5))
    assert out.is_contiguous()
    torch.library.opcheck(op.torch_op, (torch.randn(3, 5),))


def test_call_impl_runs_the_given_impl_and_records_it(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("invariant", batch_invariant=True)(_fixed_order_row_sum)
    x = torch.ones(2, 3)
    with ird.batch_invariant():
        impl = row_sum_op.select(x)
        with ird.recording() as rec:
            out = row_sum_op.call_impl(impl, x)
    assert impl.provider == "invariant"
    assert rec.counts == {(row_sum_op.name, "invariant"): 1}
    assert torch.equal(out, torch.full((2,), 3.0))


def test_ops_have_no_derivative_and_say_so() -> None:
    """Forward works on inputs that need gradients; backward raises, naming the op and the way
    to differentiate (bi-train's autograd functions)."""
    import ir_dispatch

    x = torch.randn(3, 8, requires_grad=True)
    w = torch.ones(8)
    out = ir_dispatch.ops.rms_norm(x, w, 1e-6)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=r"ir_dispatch::rms_norm has no derivative formula"):
        out.sum().backward()
    assert not ir_dispatch.ops.rms_norm(x.detach(), w, 1e-6).requires_grad
