"""Hooks for GPU/NPU vLLM: the kit's kernels in place of vLLM's batch-invariant ones.

On CUDA, vLLM's own mode is complete but slow (its Triton GEMM runs at about a third of
cuBLAS). The plugin keeps everything of it that is not a kernel - the attention-backend
choices, the NCCL/all-reduce settings, the precision switches - and swaps kernels op by op,
only where ir-dispatch has a batch-invariant kernel for the platform, so a missing provider
leaves vLLM's own (bitwise) path rather than a batch-variant one:

- names that layers imported by value (``linear_batch_invariant`` in ``linear`` and
  ``vocab_parallel_embedding``, ``rms_norm_batch_invariant`` in ``layernorm``) and the same
  names in vLLM's kernel module, patched before the model is built;
- RMSNorm through the vLLM IR provider (vLLM's compiled default path never reaches its own
  batch-invariant norm kernel: Inductor lowers the native form);
- aten overrides: ``enable_batch_invariant_mode`` is wrapped; after vLLM installs its own, the
  plugin installs ir-dispatch's over them for the covered ops (vLLM's kernels stay reachable
  as the registered "previous" kernel) and undoes 0.26's ``torch.bmm`` assignment;
- FP8: ``vllm._custom_ops.cutlass_scaled_mm`` goes to ir-dispatch's ``scaled_mm`` when a
  batch-invariant provider (``bi-cutlass-fp8``) accepts the call, else to vLLM's CUTLASS;
- reported logprobs: the GPU runner's own Triton logprob kernel goes to ir-dispatch's
  ``log_softmax`` (:mod:`._logprobs`), the kernel the trainer scores with;
- Qwen3's q/k norms and RoPE: one ``qk_norm_rope`` launch with the same bits, on unless
  ``VLLM_BI_QK_FUSION=0`` (:mod:`._qk_fusion`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _fp8, _hooks_common, _logprobs, _patch, _qk_fusion, _settings
from ._providers import covered, covered_overloads
from ._report import Report
from ._vllm_compat import (
    ATTENTION_REGISTRY_MODULE,
    CUSTOM_OPS_MODULE,
    GPU_ATTENTION_LAYOUTS,
    VllmLayout,
    import_module,
)

# vLLM function name -> (replacement, ir-dispatch ops it needs, what it serves, what serves it now)
_BY_VALUE_REPLACEMENTS: dict[str, tuple[Callable[..., Any], tuple[str, ...], str, str]] = {
    "linear_batch_invariant": (
        _hooks_common.bi_linear,
        ("mm", "addmm"),
        "linear_batch_invariant (linear layers, lm_head)",
        "ir_dispatch::linear",
    ),
    "rms_norm_batch_invariant": (
        _hooks_common.bi_rms_norm,
        ("rms_norm",),
        "rms_norm_batch_invariant (RMSNorm custom op)",
        "ir_dispatch::rms_norm",
    ),
}


_OUT_FORMS = ("mm.out", "addmm.out", "bmm.out")


def make_enable_batch_invariant_mode(
    original: Callable[[], None],
    layout: VllmLayout,
    overloads: tuple[str, ...],
    torch_bmm: Any,
    report: Report | None = None,
) -> Callable[[], None]:
    """Wrap vLLM's ``enable_batch_invariant_mode``: run it, then lay ir-dispatch's overrides over.

    Args:
        original: vLLM's function (sets its flags, env, precision switches and overrides).
        layout: the vLLM layout (whether it assigns ``torch.bmm``).
        overloads: aten overloads to route to ir-dispatch (those with a kernel here).
        torch_bmm: ``torch.bmm`` as it was before vLLM could replace it.
        report: logged once the worker's logging is up.
    """

    def enable_batch_invariant_mode() -> None:
        import ir_dispatch

        original()
        _settings.apply_torch_settings()
        if overloads:
            _hooks_common.install_aten_overrides(
                overloads, ir_dispatch.current_platform().dispatch_key
            )
            if layout.patches_torch_bmm and "bmm" in overloads and torch.bmm is not torch_bmm:
                torch.bmm = torch_bmm  # aten::bmm is overridden; vLLM's Python-level bypass goes
        if report is not None:
            report.announce(force=True)

    return enable_batch_invariant_mode


def install(layout: VllmLayout, platform: str, report: Report) -> None:
    """Install the GPU/NPU hooks (see the module docstring); record them in ``report``."""
    bi = layout.import_bi_module()

    for name, (replacement, needs, theirs, ours) in _BY_VALUE_REPLACEMENTS.items():
        if not covered(needs, platform):
            report.keep(f"{name} (no batch-invariant {platform} {'/'.join(needs)} kernel)")
            continue
        if name == "rms_norm_batch_invariant":
            _hooks_common.set_fused_fallback(not covered(("fused_add_rms_norm",), platform))
        holders = [
            bi,
            *(import_module(mod) for mod, attr in layout.imported_by_value if attr == name),
        ]
        for holder in holders:
            _patch.patch_attr(holder, name, replacement)
        report.replaced(theirs, ours)

    _hooks_common.install_norms(report, platform)
    _qk_fusion.install(layout, platform, report)

    # The .out forms too: Inductor's extern GEMM calls (aten.mm.out) bypass aten::mm.
    wanted = tuple(dict.fromkeys((*layout.aten_overloads, *layout.matmul_overloads, *_OUT_FORMS)))
    overloads = covered_overloads(wanted, platform)
    _patch.patch_attr(
        bi,
        "enable_batch_invariant_mode",
        make_enable_batch_invariant_mode(
            bi.enable_batch_invariant_mode, layout, overloads, torch.bmm, report
        ),
    )
    if overloads:
        report.replaced("aten overrides " + ", ".join(overloads), "ir-dispatch overrides")
    left = [o for o in wanted if o not in overloads]
    if left:
        report.keep("aten " + ", ".join(left) + " (vLLM's kernel or vendor library)")

    if covered(("scaled_mm",), platform):
        ops = import_module(CUSTOM_OPS_MODULE)
        if hasattr(ops, "cutlass_scaled_mm"):
            _patch.patch_attr(
                ops, "cutlass_scaled_mm", _fp8.make_cutlass_scaled_mm(ops.cutlass_scaled_mm)
            )
            report.replaced("cutlass_scaled_mm (FP8 linear)", "ir_dispatch::scaled_mm")
    else:
        report.keep(f"FP8 GEMM (no batch-invariant {platform} scaled_mm kernel)")

    _logprobs.install(platform, report)


ATTENTION_ENV = "VLLM_BI_ATTENTION"
GPU_ATTENTION_CLASS = "vllm_bi_plugin.gpu_attention.BatchInvariantFlashAttentionBackend"
"""Where vLLM finds the kit's FLASH_ATTN backend (imported by vLLM, not here)."""


def attention_opted_in() -> bool:
    """Whether ``VLLM_BI_ATTENTION=1`` asks for the kit's attention backend (opt-in for now).

    Raises:
        ValueError: the variable is set to something other than ``0`` or ``1``.
    """
    return _settings.switch_on(ATTENTION_ENV)


def install_attention(layout: VllmLayout, platform: str, report: Report) -> None:
    """Register :mod:`vllm_bi_plugin.gpu_attention` as vLLM's ``FLASH_ATTN`` backend.

    Only where it was written and checked against: CUDA with vLLM 0.26. Anywhere else, or with
    the kit's kernel missing, the opt-in is an error rather than a silent no-op.
    """
    if platform != "cuda" or layout.name not in GPU_ATTENTION_LAYOUTS:
        raise RuntimeError(
            f"{ATTENTION_ENV}=1: the kit's attention backend runs on CUDA with vLLM "
            f"{', '.join(GPU_ATTENTION_LAYOUTS)} only for now; this is {platform} with vLLM "
            f"layout {layout.name}. Unset {ATTENTION_ENV}."
        )
    try:
        from bi_triton_ascend.attention import chunk_grid, providers
    except ImportError as e:
        raise RuntimeError(
            f"{ATTENTION_ENV}=1 needs bi-triton-ascend's attention kernel "
            f'(pip install "vllm-bi-plugin[cuda]"): {e}'
        ) from e
    providers.register()
    if not covered(("paged_attention",), platform):
        raise RuntimeError(
            f"{ATTENTION_ENV}=1: no batch-invariant {platform} paged_attention kernel is "
            "registered (is triton installed?)"
        )
    registry = import_module(ATTENTION_REGISTRY_MODULE)
    registry.register_backend(registry.AttentionBackendEnum.FLASH_ATTN, GPU_ATTENTION_CLASS)
    grid = chunk_grid(128, torch.bfloat16, interpreter=False)
    report.replaced(
        "attention: FLASH_ATTN(max_num_splits=1)", f"vllm_bi paged_attention ({grid.describe()})"
    )


def uninstall_attention() -> None:
    """Drop the ``FLASH_ATTN`` override if it is the plugin's (``plugin.unregister``)."""
    registry = import_module(ATTENTION_REGISTRY_MODULE)
    backend = registry.AttentionBackendEnum.FLASH_ATTN
    if backend.get_path() == GPU_ATTENTION_CLASS:
        backend.clear_override()
