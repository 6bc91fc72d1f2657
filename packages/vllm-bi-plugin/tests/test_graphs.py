"""CUDA-graph capture sizes up to 16384 tokens in batch-invariant mode (``_graphs``)."""

from __future__ import annotations

from typing import Any

import pytest

import vllm_bi_plugin
from vllm_bi_plugin import _graphs, _providers, _vllm_compat, plugin
from vllm_bi_plugin._report import Report


@pytest.fixture(autouse=True)
def _no_provider_imports(monkeypatch) -> None:
    """Keep GPU provider packages unimported: importing one registers its kernels on CPU too."""
    monkeypatch.setattr(plugin, "import_providers", lambda platform: [])
    monkeypatch.setattr(_providers, "import_providers", lambda platform: [])


def _register(fake_vllm_tree, monkeypatch, platform: str = "cuda", layout: str = "0.26") -> Any:
    fake_vllm_tree(layout)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", platform)
    vllm_bi_plugin.register()
    report = plugin.installed()
    assert report is not None
    return _vllm_compat.vllm_config_class(), report


def test_sizes_are_vllms_then_the_prefill_ladder() -> None:
    sizes = _graphs.capture_sizes(max_num_seqs=256, max_num_batched_tokens=16384)
    assert sizes[:4] == [1, 2, 4, 8] and 248 in sizes and 512 in sizes and 520 not in sizes
    assert sizes[sizes.index(512) + 1 :] == list(_graphs.PREFILL_SIZES)
    few = _graphs.capture_sizes(max_num_seqs=8, max_num_batched_tokens=16384)
    assert few == [1, 2, 4, 8, 16, *_graphs.PREFILL_SIZES]  # vLLM's default stops at 16 here


def test_sizes_stop_at_the_step_budget_and_include_it() -> None:
    """vLLM would drop sizes above max_num_batched_tokens (and warn): never pass them."""
    sizes = _graphs.capture_sizes(max_num_seqs=256, max_num_batched_tokens=10000)
    assert sizes[-3:] == [6144, 8192, 10000]
    assert _graphs.capture_sizes(256, 8192)[-1] == 8192
    assert _graphs.capture_sizes(256, 300)[-2:] == [288, 300]
    assert _graphs.capture_sizes(256, 99999)[-1] == _graphs.PREFILL_SIZES[-1]
    assert all(
        b / a <= 1.5
        for a, b in zip(_graphs.PREFILL_SIZES[:-1], _graphs.PREFILL_SIZES[1:], strict=True)
    )


@pytest.mark.parametrize("layout", ["0.26", "0.32"])
def test_unset_sizes_reach_max_num_batched_tokens(fake_vllm_tree, monkeypatch, layout) -> None:
    config_cls, report = _register(fake_vllm_tree, monkeypatch, layout=layout)
    built = config_cls(max_num_batched_tokens=8192).compilation_config
    assert built.max_cudagraph_capture_size == 8192
    assert {1, 512, 4096, 8192} <= set(built.cudagraph_capture_sizes)
    assert 12288 not in built.cudagraph_capture_sizes  # vLLM drops what the step cannot reach
    assert "capture sizes" in report.summary()


def test_the_users_choice_wins(fake_vllm_tree, monkeypatch) -> None:
    config_cls, _ = _register(fake_vllm_tree, monkeypatch)
    assert config_cls(
        cudagraph_capture_sizes=[1, 2, 64]
    ).compilation_config.cudagraph_capture_sizes == [1, 2, 64]
    assert (
        config_cls(max_cudagraph_capture_size=128).compilation_config.max_cudagraph_capture_size
        == 128
    )
    interactive = config_cls(performance_mode="interactivity").compilation_config
    assert interactive.max_cudagraph_capture_size == 512


def test_switch_off_keeps_vllms_sizes(fake_vllm_tree, monkeypatch) -> None:
    monkeypatch.setenv(_graphs.ENV, "0")
    config_cls, report = _register(fake_vllm_tree, monkeypatch)
    assert config_cls().compilation_config.max_cudagraph_capture_size == 512
    assert any(_graphs.ENV in k for k in report.kept)


@pytest.mark.parametrize("platform", ["rocm", "cpu"])
def test_other_platforms_keep_vllms_sizes(fake_vllm_tree, monkeypatch, platform) -> None:
    config_cls, _ = _register(fake_vllm_tree, monkeypatch, platform=platform)
    assert config_cls().compilation_config.max_cudagraph_capture_size == 512


def test_unregister_restores_vllms_method(fake_vllm_tree, monkeypatch) -> None:
    config_cls, _ = _register(fake_vllm_tree, monkeypatch)
    plugin.unregister()
    assert config_cls().compilation_config.max_cudagraph_capture_size == 512


def test_missing_method_is_a_gap(fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.26")
    monkeypatch.setattr(_graphs, "vllm_config_class", lambda: None)
    report = Report("cuda")
    _graphs.install("cuda", report)
    assert any(_vllm_compat.SET_CUDAGRAPH_SIZES in g for g in report.gaps)
