"""Registration table and dispatch verdicts of the two scaled_mm providers (CPU)."""

from __future__ import annotations

import pytest
import torch
from fp8_testing import random_fp8

import bi_cutlass_fp8
import ir_dispatch as ird
from bi_cutlass_fp8 import providers
from ir_dispatch import PlatformKind
from ir_dispatch import ops as ir_ops


def _args(m: int = 4, n: int = 32, k: int = 64) -> tuple[object, ...]:
    return (
        random_fp8(m, k),
        random_fp8(n, k).t(),
        torch.ones(m, 1),
        torch.ones(1, n),
        torch.bfloat16,
    )


def test_registration_table() -> None:
    impls = {i.provider: i for i in ir_ops.scaled_mm.impls}
    cutlass, dequant = impls["cutlass_fp8"], impls["dequant_bf16"]
    assert cutlass.batch_invariant and dequant.batch_invariant
    assert cutlass.platforms == frozenset({PlatformKind.CUDA})
    assert dequant.platforms == frozenset(PlatformKind)
    assert cutlass.priority > dequant.priority > impls["native"].priority
    order = [i.provider for i in ir_ops.scaled_mm.impls]
    assert order[0] == "cutlass_fp8" and order[-1] == "native"
    if "cpu" in impls:  # ir-dispatch's own CPU provider outranks the generic fallback
        assert order.index("cpu") < order.index("dequant_bf16")
    assert cutlass.fn is providers.scaled_mm_cutlass
    assert dequant.fn is bi_cutlass_fp8.scaled_mm_dequant
    assert "(N, K) only" in cutlass.note and "exact" in dequant.note


def test_register_is_idempotent_and_unregister_removes() -> None:
    before = [(i.provider, i.priority) for i in ir_ops.scaled_mm.impls]
    assert bi_cutlass_fp8.register() == ["cutlass_fp8", "dequant_bf16"]
    assert [(i.provider, i.priority) for i in ir_ops.scaled_mm.impls] == before
    bi_cutlass_fp8.unregister()
    try:
        remaining = {i.provider for i in ir_ops.scaled_mm.impls}
        assert "native" in remaining and not remaining & {"cutlass_fp8", "dequant_bf16"}
    finally:
        bi_cutlass_fp8.register()
    assert [(i.provider, i.priority) for i in ir_ops.scaled_mm.impls] == before


def test_cpu_tensors_never_reach_cutlass() -> None:
    verdicts = {
        i.provider: r for i, r in ir_ops.scaled_mm.evaluate(*_args(), batch_invariant_only=True)
    }
    assert verdicts["cutlass_fp8"] == "runs on cuda, not cpu"


def test_dequant_only_in_batch_invariant_mode() -> None:
    args = _args()
    verdicts = {
        i.provider: r for i, r in ir_ops.scaled_mm.evaluate(*args, batch_invariant_only=False)
    }
    assert verdicts["dequant_bf16"] == "only used in batch-invariant mode"
    assert ir_ops.scaled_mm.select(*args).provider == "native"
    with ird.batch_invariant():
        verdicts = {i.provider: r for i, r in ir_ops.scaled_mm.evaluate(*args)}
        selected = ir_ops.scaled_mm.select(*args).provider
    assert verdicts["dequant_bf16"] is None
    assert "batch-variant on cpu" in str(verdicts["native"])
    # On CPU, ir-dispatch's own provider (if present) serves first; else the fallback.
    assert selected == ("cpu" if "cpu" in verdicts else "dequant_bf16")


def test_dequant_declines_bad_arguments_with_the_reason() -> None:
    a, b, sa, _, dt = _args()
    with ird.batch_invariant():
        verdict = providers.dequant_supports(a, b, sa, torch.ones(3, 1), dt)
    assert isinstance(verdict, str) and verdict.startswith("scaled_mm: scale_b must be")


def test_cutlass_verdicts_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, sa, sb, dt = _args()
    monkeypatch.setattr(providers, "toolchain_reason", lambda: "nvcc not found: ...")
    assert providers.cutlass_supports(a, b, sa, sb, dt) == "nvcc not found: ..."
    monkeypatch.setattr(providers, "toolchain_reason", lambda: None)
    assert (
        providers.cutlass_supports(a, b, sa, sb, dt)
        == "the CUTLASS kernel needs CUDA tensors, got cpu"
    )
    # Layout problems of b are reported before the device, and name the argument.
    verdict = providers.cutlass_supports(a, random_fp8(64, 32), sa, sb, dt)
    assert isinstance(verdict, str) and "b must be column-major" in verdict


def test_cutlass_verdict_ignores_layout_of_a(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-contiguous ``a`` is copied by the provider, so it must not switch providers."""
    monkeypatch.setattr(providers, "toolchain_reason", lambda: None)
    monkeypatch.setattr(providers, "device_verdict", lambda device: True)
    a, b, sa, sb, dt = _args()
    a_t = random_fp8(64, 4).t()
    assert providers.cutlass_supports(a, b, sa, sb, dt) is True
    assert providers.cutlass_supports(a_t, b, sa, sb, dt) is True

    monkeypatch.undo()
    monkeypatch.setattr(providers, "toolchain_reason", lambda: None)
    monkeypatch.setattr(providers._platform, "sm_version", lambda device=None: 100)
    assert providers.device_verdict(torch.device("cuda", 0)) == (
        "the CUTLASS kernel is built for sm90 only, this GPU is sm100"
    )


def test_verdicts_do_not_depend_on_m(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "toolchain_reason", lambda: None)
    monkeypatch.setattr(providers, "device_verdict", lambda device: True)
    with ird.batch_invariant():
        for m in (0, 1, 2, 3, 16, 17, 64, 65, 129):
            args = _args(m=m)
            assert providers.cutlass_supports(*args) is True
            assert providers.dequant_supports(*args) is True


def test_explain_lists_both_providers() -> None:
    text = str(ird.explain("scaled_mm", *_args(), batch_invariant=True))
    assert "cutlass_fp8" in text and "dequant_bf16" in text
