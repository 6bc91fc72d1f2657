"""``_vllm_compat`` against the installed vLLM: every hook point the plugin uses exists.

The unit tests check both layouts on fake module trees; this checks the real 0.32 tree (the
CPU build), so a vLLM that moves a name fails here rather than at a user's first request.
"""

from __future__ import annotations

import inspect

import pytest

from vllm_bi_plugin import _hooks_cpu, _vllm_compat

vllm = pytest.importorskip("vllm", reason="needs vLLM")


def test_layout_is_detected() -> None:
    layout = _vllm_compat.detect_layout()
    assert layout is _vllm_compat.V0_32
    assert _vllm_compat.vllm_version() == "0.32.0"


def test_kernel_module_has_what_the_hooks_patch() -> None:
    bi = _vllm_compat.V0_32.import_bi_module()
    for name in ("enable_batch_invariant_mode", "init_batch_invariance", "linear_batch_invariant",
                 "rms_norm_batch_invariant", "_batch_invariant_MODE"):  # fmt: skip
        assert hasattr(bi, name), name
    # init_batch_invariance must look enable_batch_invariant_mode up at call time.
    assert "enable_batch_invariant_mode()" in inspect.getsource(bi.init_batch_invariance)
    for module, name in _vllm_compat.V0_32.imported_by_value:
        assert getattr(_vllm_compat.import_module(module), name) is getattr(bi, name)


def test_vllm_overrides_what_the_layout_says() -> None:
    src = inspect.getsource(_vllm_compat.V0_32.import_bi_module().enable_batch_invariant_mode)
    names = {"_log_softmax": "_log_softmax", "softmax.int": "softmax", "_softmax": "_softmax",
             "mean.dim": "mean.dim", "bmm": "bmm", "bmm.out": "bmm.out"}  # fmt: skip
    for overload in _vllm_compat.V0_32.aten_overloads:
        assert f'"aten::{names[overload]}"' in src, overload
    for overload in _vllm_compat.V0_32.matmul_overloads:
        assert f'"aten::{overload}"' in src, overload


def test_cpu_hook_points_exist() -> None:
    utils = _vllm_compat.import_module(_vllm_compat.LAYER_UTILS_MODULE)
    params = list(inspect.signature(utils.dispatch_cpu_unquantized_gemm).parameters)
    assert params == ["layer", "remove_weight"]
    registry = _vllm_compat.import_module(_vllm_compat.ATTENTION_REGISTRY_MODULE)
    assert callable(registry.register_backend) and registry.AttentionBackendEnum.CPU_ATTN
    ir_ops = _vllm_compat.import_module(_vllm_compat.IR_OPS_MODULE)
    assert {"rms_norm", "fused_add_rms_norm"} <= set(dir(ir_ops))
    platforms = _vllm_compat.import_module(_vllm_compat.PLATFORMS_MODULE)
    assert hasattr(type(platforms.current_platform), "get_default_ir_op_priority")
    custom_ops = _vllm_compat.import_module(_vllm_compat.CUSTOM_OPS_MODULE)
    assert callable(custom_ops.cutlass_scaled_mm)


def test_qk_fusion_hook_points_exist_and_keep_their_steps() -> None:
    """The classes the q/k fusion patches and compares against resolve on this vLLM, and
    Qwen3's forward still runs the steps the fused forward replaces, in that order (the fusion
    installs on vLLM 0.26 only; this catches a move or a rewrite on the release at hand)."""
    attention = getattr(
        _vllm_compat.import_module(_vllm_compat.QWEN3_MODULE), _vllm_compat.QWEN3_ATTENTION
    )
    rotary = getattr(_vllm_compat.import_module(_vllm_compat.ROTARY_MODULE),
                     _vllm_compat.ROTARY_CLASS)  # fmt: skip
    assert callable(rotary._match_cos_sin_cache_dtype)
    src = inspect.getsource(attention.forward)
    steps = ["self.qkv_proj(", "self.q_norm(", "self.k_norm(", "self.rotary_emb(", "self.attn(",
             "self.o_proj("]  # fmt: skip
    at = [src.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at, strict=True))


def test_cpu_attention_backend_class_path_resolves() -> None:
    from vllm_bi_plugin import cpu_attention

    assert cpu_attention.CLASS_PATH == _hooks_cpu.CPU_ATTENTION_CLASS
    builder = cpu_attention.BatchInvariantCPUAttentionBackend.get_builder_cls()
    assert issubclass(builder, cpu_attention.CPUAttentionMetadataBuilder)
    # The attributes the per-token build reads are set by vLLM's builder constructor.
    init_src = inspect.getsource(cpu_attention.CPUAttentionMetadataBuilder.__init__)
    for attr in ("num_heads", "num_kv_heads", "head_dim", "dtype", "window_size", "isa",
                 "kv_cache_dtype", "is_cross_attention", "is_encoder_only_attention"):  # fmt: skip
        assert f"self.{attr} =" in init_src, attr


def test_allreduce_rms_fusion_default_is_off_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real VllmConfig takes fuse_allreduce_rms from the table the plugin patches.

    On CPU vLLM's default is False and a config with the pass on cannot be built at TP > 1, so
    a probe at -O2 (VllmConfig's default level) shows whether the table is read.
    """
    from vllm.config import CompilationConfig, VllmConfig

    from vllm_bi_plugin import _fusions, _patch
    from vllm_bi_plugin._report import Report

    assert _patch.applied() == ()  # engines run in child processes; this one is clean
    levels = _vllm_compat.optimization_pass_defaults()
    assert levels is not None and set(levels) == {"O0", "O1", "O2", "O3"}
    calls: list[object] = []

    def probe(cfg: object) -> bool:
        calls.append(cfg)
        return False

    monkeypatch.setitem(levels["O2"], _vllm_compat.ALLREDUCE_RMS_PASS, probe)
    before = {level: passes[_vllm_compat.ALLREDUCE_RMS_PASS] for level, passes in levels.items()}
    VllmConfig()
    assert len(calls) == 1  # control: vLLM reads the -O2 entry
    seen: list[object] = []  # the configs the warning check is given (it returns None)
    monkeypatch.setattr(_fusions, "explicitly_enabled", seen.append)
    report = Report("cuda")
    try:
        _fusions.install("cuda", report)
        assert all(passes[_vllm_compat.ALLREDUCE_RMS_PASS] is False for passes in levels.values())
        assert VllmConfig().compilation_config.pass_config.fuse_allreduce_rms is False
        assert len(calls) == 1
        explicit = CompilationConfig(pass_config={_vllm_compat.ALLREDUCE_RMS_PASS: True})
        config = VllmConfig(compilation_config=explicit)
        assert config.compilation_config.pass_config.fuse_allreduce_rms is True  # user's choice
        assert seen[-1] is config  # the warning check ran on the built config
        assert (_fusions.THEIRS, _fusions.OURS) in report.replacements and not report.gaps
    finally:
        _patch.undo_all()
    for level, passes in levels.items():
        assert passes[_vllm_compat.ALLREDUCE_RMS_PASS] is before[level], level
    assert _patch.original_of(VllmConfig._apply_optimization_level_defaults) is (
        VllmConfig._apply_optimization_level_defaults
    )
