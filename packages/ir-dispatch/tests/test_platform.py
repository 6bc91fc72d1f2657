from __future__ import annotations

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import PlatformKind


def test_cpu_host_is_detected() -> None:
    p = ird.current_platform()
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU; the CPU detection test needs a CPU-only host")
    assert p.kind is PlatformKind.CPU
    assert p.dispatch_key == "CPU"
    assert p.compute_units >= 1
    assert p.device_module() is torch.cpu


def test_forced_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "xpu")
    ird.reset_platform_cache()
    try:
        assert ird.current_platform().kind is PlatformKind.XPU
        assert ird.current_platform().dispatch_key == "XPU"
    finally:
        monkeypatch.delenv("IR_DISPATCH_PLATFORM")
        ird.reset_platform_cache()


def test_forced_platform_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "tpu")
    ird.reset_platform_cache()
    try:
        with pytest.raises(ValueError, match="expected one of cuda, rocm, npu, xpu, cpu"):
            ird.current_platform()
    finally:
        monkeypatch.delenv("IR_DISPATCH_PLATFORM")
        ird.reset_platform_cache()


def test_platform_of_follows_the_tensor() -> None:
    assert ird.platform_of(torch.ones(1)) is PlatformKind.CPU
    assert ird.platform_of(torch.empty(1, device="meta")) is PlatformKind.CPU
    assert ird.platform_of(3, "x") is ird.current_platform().kind
