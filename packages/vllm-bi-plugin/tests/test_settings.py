from __future__ import annotations

import os

import torch

from vllm_bi_plugin import _settings, _vllm_compat


def test_cuda_env_follows_the_vllm_layout() -> None:
    env26 = _settings.invariance_env("cuda", _vllm_compat.V0_26)
    env32 = _settings.invariance_env("cuda", _vllm_compat.V0_32)
    assert env26["NCCL_ALGO"] == "allreduce:tree" and "VLLM_CUSTOM_ALLREDUCE_ALGO" not in env26
    assert env32["VLLM_CUSTOM_ALLREDUCE_ALGO"] == "1stage"
    for env in (env26, env32):
        assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert env["NCCL_MAX_NCHANNELS"] == env["NCCL_MIN_NCHANNELS"] == "1"
        assert env["NCCL_PROTO"] == "Simple" and env["VLLM_USE_AOT_COMPILE"] == "0"
    assert _settings.invariance_env("cuda", None) == {}


def test_cpu_and_rocm_env() -> None:
    assert _settings.invariance_env("cpu", _vllm_compat.V0_32)["VLLM_CPU_ATTN_SPLIT_KV"] == "0"
    assert _settings.invariance_env("rocm", None)["VLLM_ROCM_USE_SKINNY_GEMM"] == "0"
    assert _settings.invariance_env("npu", None) == {"VLLM_USE_AOT_COMPILE": "0"}


def test_apply_env_sets_the_process_environment(monkeypatch) -> None:
    monkeypatch.setenv("VLLM_CPU_ATTN_SPLIT_KV", "1")
    env = _settings.apply_env("cpu", _vllm_compat.V0_32)
    assert os.environ["VLLM_CPU_ATTN_SPLIT_KV"] == "0" == env["VLLM_CPU_ATTN_SPLIT_KV"]


def test_torch_settings_turn_off_reduced_precision() -> None:
    m = torch.backends.cuda.matmul
    saved = (
        m.allow_bf16_reduced_precision_reduction,
        m.allow_fp16_reduced_precision_reduction,
        m.fp32_precision,
    )
    try:
        m.allow_bf16_reduced_precision_reduction = True
        m.fp32_precision = "tf32"
        _settings.apply_torch_settings()
        assert not m.allow_bf16_reduced_precision_reduction
        assert not m.allow_fp16_reduced_precision_reduction
        assert m.fp32_precision == "ieee"
    finally:
        m.allow_bf16_reduced_precision_reduction = saved[0]
        m.allow_fp16_reduced_precision_reduction = saved[1]
        m.fp32_precision = saved[2]
