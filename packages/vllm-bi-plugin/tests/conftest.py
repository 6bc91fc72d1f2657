from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import ir_dispatch

sys.path.insert(0, str(Path(__file__).parent))

import fake_vllm

from vllm_bi_plugin import _hooks_common, _patch, plugin

TEST_PROVIDER = "test_fake"


def _vllm_modules() -> dict[str, object]:
    return {k: v for k, v in sys.modules.items() if k == "vllm" or k.startswith("vllm.")}


@pytest.fixture
def clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Leave the plugin, ir-dispatch's mode/overrides and torch.bmm as they were."""
    mode = ir_dispatch.is_batch_invariant()
    bmm = torch.bmm
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    monkeypatch.delenv("IR_DISPATCH_PLATFORM", raising=False)
    yield
    plugin.unregister()
    _patch.undo_all()
    ir_dispatch.uninstall_aten_overrides()
    ir_dispatch.set_batch_invariant(mode)
    _hooks_common.set_fused_fallback(False)
    torch.bmm = bmm


@pytest.fixture
def fake_vllm_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_state: None
) -> Iterator[Callable[[str], Path]]:
    """Factory: put a fake vLLM of the given layout first on sys.path (real vLLM hidden)."""
    saved = _vllm_modules()

    def make(layout: str) -> Path:
        for name in _vllm_modules():
            del sys.modules[name]
        root = fake_vllm.write_tree(tmp_path / f"vllm-{layout}", layout)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    plugin.unregister()
    _patch.undo_all()
    for name in _vllm_modules():
        del sys.modules[name]
    sys.modules.update(saved)  # type: ignore[arg-type]


@pytest.fixture
def fake_kernels() -> Iterator[Callable[..., None]]:
    """Factory: register a batch-invariant ``test_fake`` provider for ops on a platform."""
    registered: list[str] = []

    def register(platform: str, op_names: tuple[str, ...]) -> None:
        for name in op_names:
            op = ir_dispatch.get_op(name)
            op.register_impl(
                TEST_PROVIDER, batch_invariant=True, platforms=[platform], priority=100
            )(op.native)
            registered.append(name)

    yield register
    for name in registered:
        ir_dispatch.get_op(name).unregister_impl(TEST_PROVIDER)
