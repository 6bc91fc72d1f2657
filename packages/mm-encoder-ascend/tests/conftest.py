"""Seeds, the default dispatch mode, device markers and a fake ``torch_npu``."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from ir_dispatch.testing import seeded_default_mode, skip_marked


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip device-marked tests, with the reason, where the device is absent."""
    if not torch.cuda.is_available():
        skip_marked(items, "cuda", "needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    if not (hasattr(torch, "npu") and bool(torch.npu.is_available())):
        skip_marked(items, "npu", "needs an Ascend NPU (torch_npu with a device)")


@pytest.fixture(autouse=True)
def _seed_and_mode() -> Iterator[None]:
    with seeded_default_mode():
        yield


@dataclass
class NpuCall:
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    seq_len: torch.Tensor
    scale_value: float
    num_heads: int
    num_kv_heads: int
    out: torch.Tensor


@dataclass
class FakeTorchNpu:
    """Stands in for ``torch_npu``: checks what the unpad kernel receives, then computes it.

    The checks are the kernel's documented contract as vllm-ascend uses it: packed contiguous
    ``[T, H, D]`` fp16/bf16 tensors with D <= 64 or D == 128, host int32 lengths summing to T,
    head counts matching the tensors, and an ``out`` buffer of query's shape.
    """

    calls: list[NpuCall] = field(default_factory=list)
    module: types.ModuleType = field(init=False)

    def __post_init__(self) -> None:
        self.module = types.ModuleType("torch_npu")
        self.module._npu_flash_attention_unpad = self._unpad  # type: ignore[attr-defined]
        self.module.__dict__["__fake__"] = True

    def _unpad(self, **kwargs: Any) -> None:
        call = NpuCall(**kwargs)
        q, k, v, lens, out = call.query, call.key, call.value, call.seq_len, call.out
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.dim() != 3 or not t.is_contiguous():
                raise ValueError(f"fake npu: {name} must be contiguous [T, H, D], got {t.shape}")
            if t.dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(f"fake npu: {name} must be fp16/bf16, got {t.dtype}")
        d = q.shape[2]
        if 64 < d < 128 or d > 128 or k.shape[2] != d or v.shape[2] != d:
            raise ValueError(f"fake npu: head sizes must be <= 64 or 128, got {d}")
        if q.shape[1] != call.num_heads or k.shape[1] != call.num_kv_heads:
            raise ValueError("fake npu: head counts do not match the tensors")
        if lens.device.type != "cpu" or lens.dtype != torch.int32 or lens.dim() != 1:
            raise ValueError(f"fake npu: seq_len must be a host int32 1-D tensor, got {lens}")
        if bool((lens <= 0).any()) or int(lens.sum()) != q.shape[0] or k.shape[0] != q.shape[0]:
            raise ValueError(f"fake npu: lengths {lens.tolist()} do not cover {q.shape[0]} tokens")
        if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError("fake npu: out must match query's shape, dtype and device")
        if not isinstance(call.scale_value, float):
            raise TypeError("fake npu: scale_value must be a float")
        self.calls.append(call)
        group = call.num_heads // call.num_kv_heads
        start = 0
        for n in lens.tolist():
            qs, ks, vs = (t[start : start + n].float() for t in (q, k, v))
            ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
            probs = torch.softmax(torch.einsum("qhd,khd->hqk", qs, ks) * call.scale_value, -1)
            out[start : start + n] = torch.einsum("hqk,khd->qhd", probs, vs).to(out.dtype)
            start += n


@pytest.fixture
def fake_npu(monkeypatch: pytest.MonkeyPatch) -> FakeTorchNpu:
    """A fake ``torch_npu`` in ``sys.modules`` for the test's duration."""
    fake = FakeTorchNpu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake.module)
    return fake
