"""The registration table: what this package registers with ir-dispatch, where, and when."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import bi_triton_ascend as bta
import ir_dispatch as ird
from bi_triton_ascend import _platform, providers
from ir_dispatch import PlatformKind, ops

OPS = ["addmm", "bmm", "fused_add_rms_norm", "linear", "log_softmax", "matmul", "mean",
       "mean_of_squares", "mm", "qk_norm_rope", "rms_norm", "softmax",
       "token_logprobs"]  # fmt: skip


def test_every_op_is_registered_batch_invariant() -> None:
    assert bta.supported
    for name in OPS:
        impl = ird.get_op(name).impl("triton")
        assert impl.batch_invariant, name
        assert {PlatformKind.CUDA, PlatformKind.NPU} <= impl.platforms, name
        assert (PlatformKind.CPU in impl.platforms) == _platform.interpreting(), name
        assert PlatformKind.ROCM not in impl.platforms
        assert impl.priority == providers.PRIORITY and impl.note, name
    # A direct matmul/linear/token_logprobs outranks ir-dispatch's composite one.
    for op in (ops.matmul, ops.linear, ops.token_logprobs):
        order = [i.provider for i in op.impls]
        assert order.index("triton") < order.index("composite")


def test_register_is_idempotent() -> None:
    before = {name: [i.provider for i in ird.get_op(name).impls] for name in OPS}
    assert sorted(bta.register()) == OPS
    assert sorted(bta.register()) == OPS
    assert {name: [i.provider for i in ird.get_op(name).impls] for name in OPS} == before


def test_unregister_then_register() -> None:
    bta.unregister()
    try:
        assert all("triton" not in [i.provider for i in ird.get_op(n).impls] for n in OPS)
    finally:
        bta.register()
    assert all("triton" in [i.provider for i in ird.get_op(n).impls] for n in OPS)


def test_platform_table_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "interpreting", lambda: False)
    assert _platform.supported_platforms() == (PlatformKind.CUDA, PlatformKind.NPU)
    assert _platform.device_supported(torch.empty(1)) == "CPU tensors need TRITON_INTERPRET=1"


def test_npu_program_count_from_triton_ascend_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake of triton-ascend's driver: the persistent grid uses its vector-core count.
    import triton.runtime

    props = {"num_vectorcore": 48, "num_aicore": 24}
    utils = types.SimpleNamespace(get_device_properties=lambda dev: props)
    fake = types.SimpleNamespace(active=types.SimpleNamespace(utils=utils))
    monkeypatch.setattr(triton.runtime, "driver", fake)
    _platform._num_programs.cache_clear()
    try:
        assert _platform._num_programs("npu", 0) == 48
    finally:
        _platform._num_programs.cache_clear()


def test_supports_args_predicates(device: torch.device) -> None:
    a, b = torch.randn(4, 8, device=device), torch.randn(8, 3, device=device)
    impl = ops.mm.impl("triton")
    assert impl.supports_args(a, b) == "only used in batch-invariant mode"
    with ird.batch_invariant():
        assert impl.supports_args(a, b) is True
        assert "dtype" in impl.supports_args(a.double(), b.double())
        assert "dtype" in impl.supports_args(a.to(torch.int32), b.to(torch.int32))
        sm = ops.softmax.impl("triton")
        assert sm.supports_args(a, -1, None) is True
        assert "output dtype" in sm.supports_args(a, -1, torch.float64)
        assert "output dtype" in ops.mean.impl("triton").supports_args(a, [1], False, torch.float64)
        assert ops.linear.impl("triton").supports_args(a, b.t(), None) is True
        assert ops.rms_norm.impl("triton").supports_args(a, None, 1e-6) is True
        tlp = ops.token_logprobs.impl("triton")
        ids = torch.zeros(4, 2, dtype=torch.long, device=device)
        assert tlp.supports_args(a, ids) is True
        assert tlp.supports_args(a, ids.to(torch.int32)) is True
        assert "int32/int64" in tlp.supports_args(a, ids.to(torch.int16))
        assert "dtype" in tlp.supports_args(a.double(), ids)
    assert tlp.supports_args(a, ids) == "only used in batch-invariant mode"


@pytest.mark.usefixtures("prefer_triton")
def test_dispatch_and_explain_pick_triton(device: torch.device) -> None:
    x = torch.randn(3, 8, device=device)
    w = torch.randn(5, 8, device=device)
    assert ird.explain("linear", x, w, batch_invariant=True).chosen == "triton"
    with ird.batch_invariant(), ird.recording() as rec:
        ops.mm.call_selected(x, w.t())
        ops.addmm.call_selected(torch.zeros(5, device=device), x, w.t())
        ops.bmm.call_selected(x[None], w.t()[None])
        ops.matmul.call_selected(x, w.t())
        ops.linear.call_selected(x, w)
        ops.rms_norm.call_selected(x, None, 1e-6)
        ops.fused_add_rms_norm.call_selected(x, x, None, 1e-6)
        ops.softmax.call_selected(x, -1)
        ops.log_softmax.call_selected(x, -1)
        ops.mean.call_selected(x, [-1])
    served = ["mm", "addmm", "bmm", "matmul", "linear", "rms_norm", "fused_add_rms_norm",
              "softmax", "log_softmax", "mean"]  # fmt: skip
    assert rec.providers() == {name: ["triton"] for name in served}
    # Default mode: the provider steps aside (vendor kernels serve, batch-variant).
    assert ops.mm.impl("triton").supports_args(x, w.t()) == "only used in batch-invariant mode"
    with ird.recording() as rec:
        ops.mm.call_selected(x, w.t())
    assert rec.providers()["mm"] != ["triton"]


@pytest.mark.usefixtures("prefer_triton")
def test_aten_overrides_reach_the_kernels(device: torch.device) -> None:
    x, w = torch.randn(3, 8, device=device), torch.randn(5, 8, device=device)
    with ird.batch_invariant(), ird.aten_overrides(), ird.recording() as rec:
        y = torch.mm(x, w.t())
        torch.matmul(x[None], w.t())
        F.linear(x, w, torch.zeros(5, device=device))
        torch.log_softmax(y, -1)
        torch.softmax(y, -1)
        y.mean(-1)
        torch.bmm(x[None], w.t()[None])
    seen = rec.providers()
    for name in ("mm", "matmul", "linear", "log_softmax", "softmax", "mean", "bmm"):
        assert seen.get(name) == ["triton"], (name, seen)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
