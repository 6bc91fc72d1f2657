"""Process settings that batch invariance needs besides the kernels.

These mirror what vLLM's own batch-invariant mode sets (``override_envs_for_invariance`` and the
``torch.backends`` switches in ``enable_batch_invariant_mode``/``init_batch_invariance``), so
that the plugin's mode keeps vLLM's communication and precision choices. Environment variables
are set in ``register()``, which runs in every vLLM process before any NCCL communicator or
compile cache exists; ``torch.backends`` switches are set in the worker, where vLLM sets them.
"""

from __future__ import annotations

import os

import torch

from ._vllm_compat import VllmLayout

_ROCM_ENV = {
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    # The skinny GEMMs pick their split of K from the batch size.
    "VLLM_ROCM_USE_SKINNY_GEMM": "0",
    "VLLM_USE_AOT_COMPILE": "0",
}
_CPU_ENV = {
    # The per-token attention schedule never splits a sequence's KV; this keeps any path that
    # still builds vLLM's own schedule (encoder, cross attention) from splitting it either.
    "VLLM_CPU_ATTN_SPLIT_KV": "0",
    "VLLM_USE_AOT_COMPILE": "0",
}


def invariance_env(platform: str, layout: VllmLayout | None) -> dict[str, str]:
    """The environment variables batch invariance needs on ``platform`` for this vLLM.

    Args:
        platform: ``cuda``, ``rocm``, ``npu``, ``xpu`` or ``cpu``.
        layout: the vLLM layout (its NCCL/cuBLAS choices differ by version), or ``None``.
    """
    if platform == "cuda":
        return dict(layout.invariance_env) if layout is not None else {}
    if platform == "rocm":
        return dict(_ROCM_ENV)
    if platform == "cpu":
        return dict(_CPU_ENV)
    return {"VLLM_USE_AOT_COMPILE": "0"}


def apply_env(platform: str, layout: VllmLayout | None) -> dict[str, str]:
    """Set :func:`invariance_env` in ``os.environ`` (overriding, as vLLM does); return it."""
    env = invariance_env(platform, layout)
    os.environ.update(env)
    return env


def apply_torch_settings() -> None:
    """Turn off reduced-precision GEMM reductions and TF32, as vLLM's own mode does.

    Both change the rounding of a product depending on the kernel chosen, and so on the batch.
    The switches are process-wide flags; setting them does not initialise a device.
    """
    matmul = torch.backends.cuda.matmul
    for name in (
        "allow_fp16_reduced_precision_reduction",
        "allow_bf16_reduced_precision_reduction",
    ):
        try:  # torch >= 2.10 takes (allow_reduced_precision, allow_splitk)
            setattr(matmul, name, (False, False))
        except (TypeError, ValueError, RuntimeError):
            setattr(matmul, name, False)
    for backend, attr in (
        (torch.backends.cuda.matmul, "fp32_precision"),
        (getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
        (getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"),
    ):
        if backend is not None and hasattr(backend, attr):
            setattr(backend, attr, "ieee")


TP_INVARIANT_ENV = "VLLM_BI_TP_INVARIANT"


def switch_on(name: str, default: bool = False) -> bool:
    """Whether the switch ``name`` is on: ``1`` on, ``0`` off, unset or blank ``default``.

    Raises:
        ValueError: the variable holds anything else (naming it), before anything is changed.
    """
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    if value in ("0", "1"):
        return value == "1"
    raise ValueError(f"{name}={value!r} is not understood; expected 0 or 1")


def tp_invariant_requested() -> bool:
    """Whether ``VLLM_BI_TP_INVARIANT`` asks for TP-invariant mode (read only in BI mode)."""
    return switch_on(TP_INVARIANT_ENV)
