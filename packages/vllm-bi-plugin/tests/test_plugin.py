from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import ir_dispatch
import vllm_bi_plugin
from ir_dispatch.testing import providers_removed
from vllm_bi_plugin import _hooks_common, _hooks_cpu, _patch, _providers, _vllm_compat, plugin

GPU_OPS = ("mm", "addmm", "bmm", "rms_norm", "fused_add_rms_norm", "softmax", "log_softmax", "mean")


def _bi(layout: str):
    return {"0.26": _vllm_compat.V0_26, "0.32": _vllm_compat.V0_32}[layout].import_bi_module()


@pytest.mark.parametrize("value", [None, "", "0", " 0 "])
def test_unset_or_zero_changes_nothing(fake_vllm_tree, monkeypatch, value) -> None:
    fake_vllm_tree("0.32")
    if value is not None:
        monkeypatch.setenv("VLLM_BATCH_INVARIANT", value)
    bi = _bi("0.32")
    enable = bi.enable_batch_invariant_mode
    utils = _vllm_compat.import_module(_vllm_compat.LAYER_UTILS_MODULE)
    dispatch = utils.dispatch_cpu_unquantized_gemm
    mode = ir_dispatch.is_batch_invariant()
    vllm_bi_plugin.register()
    assert vllm_bi_plugin.installed() is None
    assert _patch.applied() == ()
    assert bi.enable_batch_invariant_mode is enable
    assert utils.dispatch_cpu_unquantized_gemm is dispatch
    assert ir_dispatch.installed_overrides() is None
    assert ir_dispatch.is_batch_invariant() is mode
    registry = _vllm_compat.import_module(_vllm_compat.ATTENTION_REGISTRY_MODULE)
    assert registry._ATTN_OVERRIDES == {}


def test_bad_switch_value_is_a_value_error(monkeypatch, clean_state) -> None:
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "yes")
    with pytest.raises(ValueError, match="VLLM_BATCH_INVARIANT='yes'"):
        vllm_bi_plugin.register()


def test_cpu_hooks_on_0_32(fake_vllm_tree, monkeypatch, fake_kernels) -> None:
    fake_vllm_tree("0.32")
    fake_kernels("cpu", ("mm", "addmm", "bmm", "rms_norm", "softmax", "log_softmax", "mean"))
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
    vllm_bi_plugin.register()
    report = vllm_bi_plugin.installed()
    assert report is not None and report.platform == "cpu"
    assert ir_dispatch.is_batch_invariant()

    # Linear layers: 2-D weights get ir_dispatch::linear; others keep vLLM's dispatch.
    utils = _vllm_compat.import_module(_vllm_compat.LAYER_UTILS_MODULE)
    layer = torch.nn.Linear(8, 4, bias=False)
    utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    assert layer.cpu_linear is _hooks_cpu.bi_cpu_linear
    assert layer.weight.shape == (4, 8)  # the weight stays: the linear reads it
    experts = torch.nn.Module()
    experts.weight = torch.nn.Parameter(torch.zeros(2, 4, 8))
    utils.dispatch_cpu_unquantized_gemm(experts, remove_weight=True)
    assert experts.cpu_linear == "vllm"

    # Attention: the per-token backend is registered for CPU_ATTN.
    registry = _vllm_compat.import_module(_vllm_compat.ATTENTION_REGISTRY_MODULE)
    assert registry.AttentionBackendEnum.CPU_ATTN.get_path() == _hooks_cpu.CPU_ATTENTION_CLASS

    # Norms: the IR provider is registered and leads the platform's default priority.
    ir_ops = _vllm_compat.import_module(_vllm_compat.IR_OPS_MODULE)
    assert _hooks_common.IR_PROVIDER in ir_ops.rms_norm.impls
    platforms = _vllm_compat.import_module(_vllm_compat.PLATFORMS_MODULE)
    prio = type(platforms.current_platform).get_default_ir_op_priority(None)
    assert prio.rms_norm == [_hooks_common.IR_PROVIDER, "native"]
    assert prio.fused_add_rms_norm == [_hooks_common.IR_PROVIDER, "native"]
    # Without a fused kernel on the platform, the fused norm is composed from rms_norm.
    has_fused = bool(_providers.kernel_providers("fused_add_rms_norm", "cpu"))
    assert _hooks_common._FUSED_NATIVE_ONLY is (not has_fused)

    # vLLM's Triton overrides are never installed; ir-dispatch's are, under the CPU key.
    bi = _bi("0.32")
    assert ir_dispatch.installed_overrides() is None
    bi.init_batch_invariance()
    assert bi.CALLS == []
    assert bi._batch_invariant_MODE
    key, overloads = ir_dispatch.installed_overrides()
    assert key == "CPU" and set(overloads) == set(_vllm_compat.V0_32.aten_overloads)
    x = torch.randn(3, 5)
    with ir_dispatch.recording() as rec:
        torch.log_softmax(x, -1)
        x.mean(-1)
    assert rec.providers() == {"log_softmax": ["test_fake"], "mean": ["test_fake"]}

    # The summary names what replaced what.
    line = report.summary()
    assert "batch-invariant mode on cpu" in line
    assert "per-token CPU_ATTN schedule" in line and "ir_dispatch::linear" in line


def test_register_twice_is_harmless(fake_vllm_tree, monkeypatch, fake_kernels) -> None:
    fake_vllm_tree("0.32")
    fake_kernels("cpu", ("mm", "addmm", "rms_norm"))
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
    vllm_bi_plugin.register()
    first = _patch.applied()
    report = vllm_bi_plugin.installed()
    vllm_bi_plugin.register()
    assert _patch.applied() == first
    assert vllm_bi_plugin.installed() is report
    # Even a fresh install over already-patched modules does not wrap twice.
    plugin._report = None
    vllm_bi_plugin.register()
    assert _patch.applied() == first


def test_unregister_restores_vllm(fake_vllm_tree, monkeypatch, fake_kernels) -> None:
    fake_vllm_tree("0.32")
    fake_kernels("cpu", ("mm", "addmm", "rms_norm"))
    bi = _bi("0.32")
    enable = bi.enable_batch_invariant_mode
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
    vllm_bi_plugin.register()
    bi.enable_batch_invariant_mode()
    assert ir_dispatch.installed_overrides() is not None
    vllm_bi_plugin.unregister()
    assert bi.enable_batch_invariant_mode is enable
    assert _patch.applied() == ()
    assert ir_dispatch.installed_overrides() is None
    registry = _vllm_compat.import_module(_vllm_compat.ATTENTION_REGISTRY_MODULE)
    assert registry.AttentionBackendEnum.CPU_ATTN.get_path().startswith("vllm.")


@pytest.mark.parametrize("layout", ["0.26", "0.32"])
def test_gpu_hooks_replace_vllm_kernels(fake_vllm_tree, monkeypatch, fake_kernels, layout) -> None:
    fake_vllm_tree(layout)
    fake_kernels("cuda", GPU_OPS)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cuda")
    installed: list[tuple[tuple[str, ...], str]] = []
    monkeypatch.setattr(
        _hooks_common, "install_aten_overrides", lambda o, k: installed.append((tuple(o), k))
    )
    monkeypatch.setattr(
        ir_dispatch, "current_platform", lambda: type("P", (), {"dispatch_key": "CUDA"})
    )
    torch_bmm = torch.bmm
    vllm_bi_plugin.register()
    c = _vllm_compat
    bi = _bi(layout)
    # Names imported by value, and the kernel module's own, point at the plugin's functions.
    for module in (c.LINEAR_MODULE, c.EMBEDDING_MODULE):
        assert c.import_module(module).linear_batch_invariant is _hooks_common.bi_linear
    assert c.import_module(c.LAYERNORM_MODULE).rms_norm_batch_invariant is _hooks_common.bi_rms_norm
    assert bi.linear_batch_invariant is _hooks_common.bi_linear
    # vLLM's own install still runs (flags, env, its overrides); ours go on top, and 0.26's
    # torch.bmm assignment is undone because aten::bmm is overridden.
    bi.init_batch_invariance()
    assert bi.CALLS == ["enable"]
    assert torch.bmm is torch_bmm
    layout_obj = {"0.26": c.V0_26, "0.32": c.V0_32}[layout]
    (overloads, key), *more = installed
    assert key == "CUDA" and not more
    assert set(overloads) == {
        *layout_obj.aten_overloads,
        *layout_obj.matmul_overloads,
        "mm.out",
        "addmm.out",
        "bmm.out",
    }
    report = vllm_bi_plugin.installed()
    assert report is not None and not report.gaps
    assert any("ir_dispatch::scaled_mm" not in o for _, o in report.replacements)


def test_gpu_without_provider_keeps_vllm_and_names_the_extra(
    fake_vllm_tree, monkeypatch, caplog
) -> None:
    fake_vllm_tree("0.26")
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cuda")
    absent = tuple(
        dataclasses.replace(p, module=f"absent_{p.module}")
        for p in _providers.PACKAGES_BY_PLATFORM["cuda"]
    )
    monkeypatch.setitem(_providers.PACKAGES_BY_PLATFORM, "cuda", absent)
    bi = _bi("0.26")
    linear = bi.linear_batch_invariant
    # Kernels registered by other tests in this process would not exist without the packages.
    on_cuda = lambda impl: ir_dispatch.PlatformKind.CUDA in impl.platforms  # noqa: E731
    with (
        providers_removed(on_cuda),
        caplog.at_level(logging.WARNING, logger="vllm.vllm_bi_plugin"),
    ):
        vllm_bi_plugin.register()
    report = vllm_bi_plugin.installed()
    assert report is not None
    assert any('pip install "vllm-bi-plugin[cuda]"' in m for m in report.missing)
    assert 'pip install "vllm-bi-plugin[cuda]"' in caplog.text
    assert "Traceback" not in caplog.text
    # Nothing of vLLM's own batch-invariant path was replaced: it stays bitwise.
    assert bi.linear_batch_invariant is linear
    linear_mod = _vllm_compat.import_module(_vllm_compat.LINEAR_MODULE)
    assert linear_mod.linear_batch_invariant is linear
    assert any("linear_batch_invariant" in k for k in report.kept), report


def test_announce_logs_one_line_once(fake_vllm_tree, monkeypatch, fake_kernels, caplog) -> None:
    fake_vllm_tree("0.32")
    fake_kernels("cpu", ("mm", "addmm", "rms_norm"))
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
    with caplog.at_level(logging.INFO, logger="vllm.vllm_bi_plugin"):
        vllm_bi_plugin.register()
        _bi("0.32").enable_batch_invariant_mode()
        _bi("0.32").enable_batch_invariant_mode()
    lines = [r for r in caplog.records if "batch-invariant mode on cpu" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO


def test_platform_override_is_validated(monkeypatch, clean_state) -> None:
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "tpu")
    with pytest.raises(ValueError, match="IR_DISPATCH_PLATFORM='tpu'"):
        plugin.detect_platform()


def test_platform_from_vllm(fake_vllm_tree, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_PLATFORM", "cuda")
    fake_vllm_tree("0.26")
    assert plugin.detect_platform() == "cuda"


def test_batch_invariant_is_ir_dispatch_mode() -> None:
    assert vllm_bi_plugin.batch_invariant is ir_dispatch.batch_invariant
    with vllm_bi_plugin.batch_invariant():
        assert ir_dispatch.is_batch_invariant()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vllm_bi_plugin.nope  # noqa: B018
