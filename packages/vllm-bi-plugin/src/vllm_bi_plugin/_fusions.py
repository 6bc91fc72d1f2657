"""vLLM's all-reduce + RMSNorm fusion, off by default in batch-invariant mode.

The compile pass ``fuse_allreduce_rms`` replaces a TP all-reduce and the RMSNorm after it with
one fused kernel (FlashInfer's TRT-LLM all-reduce on NVIDIA, AITER's on ROCm). vLLM turns it on
by default at -O2/-O3 when TP > 1 on Hopper/Blackwell with FlashInfer installed (with AITER on
ROCm). It is not batch-invariant: the FlashInfer pass picks a one- or a two-shot all-reduce from
the tensor size, i.e. from the number of tokens in the batch, so the reduction order follows the
batch; and its fused norm takes the place of the kit's RMSNorm. vLLM 0.26's batch-invariant mode
leaves it on (0.32's default function checks ``VLLM_BATCH_INVARIANT``). With it on, TP=2 engines
on vLLM 0.26 died in their first all-reduce in every mode (2 H200s, 2026-11-25).

``register()`` runs before any ``VllmConfig`` exists, so the plugin sets the pass's entry to
``False`` in every optimization level's defaults table. vLLM applies a default only to a field
the user left unset, so an explicit ``pass_config.fuse_allreduce_rms=True`` still turns the pass
on: that is the user's choice and is not batch-invariant; the plugin logs a warning when a
``VllmConfig`` comes out with it on at TP > 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _patch
from ._log import logger
from ._report import Report
from ._vllm_compat import (
    ALLREDUCE_RMS_PASS,
    APPLY_LEVEL_DEFAULTS,
    OPTIMIZATION_LEVELS,
    VLLM_CONFIG_MODULE,
    optimization_pass_defaults,
    vllm_config_class,
)

PLATFORMS = ("cuda", "rocm")
"""Where vLLM can turn the pass on; elsewhere its default is already ``False``."""

THEIRS = (
    f"compile pass {ALLREDUCE_RMS_PASS} (fused all-reduce + RMSNorm; all-reduce algorithm "
    "chosen by token count)"
)
OURS = f"off by default (an explicit pass_config.{ALLREDUCE_RMS_PASS}=True still wins)"


def explicitly_enabled(vllm_config: Any) -> bool:
    """Whether a built ``VllmConfig`` runs the pass at TP > 1 (only the user can have set it)."""
    compilation = getattr(vllm_config, "compilation_config", None)
    on = bool(getattr(getattr(compilation, "pass_config", None), ALLREDUCE_RMS_PASS, False))
    parallel = getattr(vllm_config, "parallel_config", None)
    return on and int(getattr(parallel, "tensor_parallel_size", 1) or 1) > 1


def make_apply_level_defaults(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``VllmConfig._apply_optimization_level_defaults``: warn after an explicit opt-in."""

    def _apply_optimization_level_defaults(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if explicitly_enabled(self):
            logger.warning(
                "vllm-bi-plugin: pass_config.%s=True was set explicitly: the fused all-reduce "
                "+ RMSNorm picks its all-reduce algorithm from the token count, so this engine "
                "is not batch-invariant at TP > 1",
                ALLREDUCE_RMS_PASS,
            )
        return result

    return _apply_optimization_level_defaults


def install(platform: str, report: Report) -> None:
    """Default the pass to off at every optimization level on ``PLATFORMS``; report it."""
    if platform not in PLATFORMS:
        return
    levels = optimization_pass_defaults()
    if levels is None:
        report.gap(
            f"{VLLM_CONFIG_MODULE}.{OPTIMIZATION_LEVELS} not found: {ALLREDUCE_RMS_PASS} "
            f"keeps vLLM's default (set pass_config.{ALLREDUCE_RMS_PASS}=False at TP > 1)"
        )
        return
    named = {level: passes for level, passes in levels.items() if ALLREDUCE_RMS_PASS in passes}
    if not named:
        report.gap(f"no optimization level of this vLLM names {ALLREDUCE_RMS_PASS}: unchecked")
        return
    for level, passes in named.items():
        where = f"{OPTIMIZATION_LEVELS}[{level}].pass_config.{ALLREDUCE_RMS_PASS}"
        _patch.patch_item(passes, ALLREDUCE_RMS_PASS, False, where=where)
    cls = vllm_config_class()
    if cls is not None and hasattr(cls, APPLY_LEVEL_DEFAULTS):
        original = getattr(cls, APPLY_LEVEL_DEFAULTS)
        _patch.patch_attr(cls, APPLY_LEVEL_DEFAULTS, make_apply_level_defaults(original))
    report.replaced(THEIRS, OURS)
