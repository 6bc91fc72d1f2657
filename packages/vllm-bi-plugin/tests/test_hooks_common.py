from __future__ import annotations

import pytest
import torch

import ir_dispatch
from vllm_bi_plugin import _hooks_common

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _vllm_ir_rms_norm(x, weight, eps):
    """vLLM's IR reference order (vllm/ir/ops/layernorm.py), restated: cast after the weight."""
    orig = x.dtype
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        xf = xf.to(weight.dtype) * weight
    return xf.to(orig)


@pytest.fixture(autouse=True)
def _restore():
    yield
    _hooks_common.set_fused_fallback(False)
    ir_dispatch.uninstall_aten_overrides()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no-weight"])
def test_ir_rms_norm_matches_vllm_reference_bitwise(dtype, with_weight) -> None:
    # The provider only takes weights of the activation dtype, where the two orders agree.
    torch.manual_seed(0)
    x = torch.randn(7, 96, dtype=dtype) * 3
    w = torch.randn(96, dtype=dtype) if with_weight else None
    assert _hooks_common._ir_rms_norm_supports(x, w, 1e-6)
    assert torch.equal(_hooks_common._ir_rms_norm(x, w, 1e-6), _vllm_ir_rms_norm(x, w, 1e-6))


def test_provider_declines_what_it_cannot_match() -> None:
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert not _hooks_common._ir_rms_norm_supports(x, torch.ones(8), 1e-6)  # fp32 weight
    assert not _hooks_common._ir_rms_norm_supports(x, None, 1e-6, 4)  # partial variance
    assert not _hooks_common._ir_fused_add_rms_norm_supports(x, x.float(), None, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_fallback_rounds_like_the_fused_reference(dtype) -> None:
    torch.manual_seed(1)
    x, res = torch.randn(5, 64, dtype=dtype), torch.randn(5, 64, dtype=dtype)
    w = torch.randn(64, dtype=dtype)
    ref_out, ref_res = ir_dispatch.ops.fused_add_rms_norm.native(x, res, w, 1e-5)
    _hooks_common.set_fused_fallback(True)
    out, new_res = _hooks_common.fused_add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(out, ref_out) and torch.equal(new_res, ref_res)


def test_bi_rms_norm_keeps_vllms_contract() -> None:
    x, res, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    out = _hooks_common.bi_rms_norm(x, w, 1e-6)
    assert torch.equal(out, ir_dispatch.ops.rms_norm.native(x, w, 1e-6))
    out, new_res = _hooks_common.bi_rms_norm(x, w, 1e-6, residual=res)
    ref = ir_dispatch.ops.fused_add_rms_norm.native(x, res, w, 1e-6)
    assert torch.equal(out, ref[0]) and torch.equal(new_res, ref[1])


def test_bi_linear_is_linear() -> None:
    x, w, b = torch.randn(4, 3, 8), torch.randn(5, 8), torch.randn(5)
    torch.testing.assert_close(
        _hooks_common.bi_linear(x, w, b), torch.nn.functional.linear(x, w, b)
    )


def test_bi_linear_uses_the_batch_invariant_provider_in_the_mode() -> None:
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    with ir_dispatch.batch_invariant(), ir_dispatch.recording() as rec:
        _hooks_common.bi_linear(x, w)
    providers = rec.providers()
    assert providers["linear"] == ["composite"]
    assert "native" not in providers["mm"]


def test_install_aten_overrides_merges_with_what_is_there() -> None:
    ir_dispatch.install_aten_overrides(("mean.dim",), "CPU")
    got = _hooks_common.install_aten_overrides(("_log_softmax", "softmax.int"), "CPU")
    assert set(got) == {"mean.dim", "_log_softmax", "softmax.int"}
    key, overloads = ir_dispatch.installed_overrides()
    assert key == "CPU" and set(overloads) == set(got)
    # Asking for a subset of what is installed changes nothing.
    assert _hooks_common.install_aten_overrides(("mean.dim",), "CPU") == ("mean.dim",)
    assert set(ir_dispatch.installed_overrides()[1]) == set(got)
    assert _hooks_common.install_aten_overrides((), "CPU") == ()


@pytest.fixture
def linear_lowering():
    """A batch-invariant ``linear`` with a lowering (as bi-triton-ascend registers on CUDA)."""
    linear = ir_dispatch.ops.linear
    linear.register_impl(
        "lowtest", batch_invariant=True, priority=1000, lowering=torch.nn.functional.linear
    )(linear.impls[-1].fn)
    yield
    linear.unregister_impl("lowtest")


def test_the_compile_lowering_is_opt_in_inside_vllm(monkeypatch, linear_lowering) -> None:
    """vLLM replays compiled graphs as CUDA graphs: the plugin installs the pass only if asked."""
    monkeypatch.delenv("IR_DISPATCH_LOWER", raising=False)
    _hooks_common.install_aten_overrides(("linear",), "CPU")
    assert not ir_dispatch.lowering_installed()
    ir_dispatch.uninstall_aten_overrides()
    monkeypatch.setenv("IR_DISPATCH_LOWER", "1")
    _hooks_common.install_aten_overrides(("linear",), "CPU")
    assert ir_dispatch.lowering_installed()


def test_info_names_ir_dispatchs_lowering_switches() -> None:
    """``vllm-bi info`` spells the switches itself; they must stay ir-dispatch's names."""
    from ir_dispatch import lowering
    from vllm_bi_plugin import info

    assert info.LOWER_ENV == lowering.ENV
    assert info.LOWER_REDUCTIONS_ENV == lowering.REDUCTIONS_ENV
