"""The ``vllm.general_plugins`` entry point: one switch makes vLLM batch-invariant.

vLLM calls :func:`register` once in every process it starts (the API server or ``LLM``
process, the engine core, each worker), before it builds configs, picks attention backends,
initialises devices or loads the model. With ``VLLM_BATCH_INVARIANT`` unset or ``0`` it returns
at once and changes nothing. With it set it:

1. turns on ir-dispatch's batch-invariant mode (the same switch the kit's kernels read);
2. finds the platform (through vLLM's own detection, which does not initialise CUDA, so a
   forked engine process is still free to) and imports the kernel packages for it, logging
   the extra to install for any that is missing;
3. sets the environment vLLM's own mode sets (NCCL, cuBLAS, all-reduce, AOT compile);
4. installs the hooks for the vLLM release found (``_vllm_compat``): on CPU, ir-dispatch's
   kernels and a per-token attention schedule instead of vLLM's Triton overrides, which crash
   there; on GPUs, the kit's kernels in place of vLLM's, op by op where one exists;
5. on CUDA and ROCm, makes vLLM's default for the compile pass ``fuse_allreduce_rms`` (fused
   all-reduce + RMSNorm, whose all-reduce algorithm follows the token count) ``False`` at every
   optimization level (``_fusions``). An explicit ``pass_config.fuse_allreduce_rms=True`` is
   the user's choice, still honoured, and not batch-invariant (a warning is logged);
6. on CUDA, adds capture sizes up to 16384 tokens to vLLM's CUDA graphs when the user chose
   none (``_graphs``; ``VLLM_BI_PREFILL_GRAPHS=0`` keeps vLLM's), so prefill steps replay graphs
   instead of paying each kit op's host cost;
7. logs one line naming what it installed in place of vLLM's own.

With ``VLLM_BI_TP_INVARIANT=1`` as well, row-parallel layers take the TP-invariant order
(``_tp``; docs/tensor-parallel.md), so TP=1, 2, 4 and 8 give the same bits.

With ``VLLM_BI_ATTENTION=1`` as well (opt-in; CUDA with vLLM 0.26), vLLM's ``FLASH_ATTN``
backend computes attention with the kit's fixed-chunk paged kernel (``gpu_attention``).

Calling it again in the same process does nothing.
"""

from __future__ import annotations

import os
import threading

from . import _fusions, _graphs, _hooks_common, _hooks_cpu, _hooks_gpu, _patch, _settings, _tp
from ._providers import PACKAGES_BY_PLATFORM, import_providers
from ._report import Report
from ._vllm_compat import (
    ATTENTION_REGISTRY_MODULE,
    PLATFORMS_MODULE,
    detect_layout,
    import_module,
    vllm_installed,
    vllm_version,
)

ENV_VAR = "VLLM_BATCH_INVARIANT"
PLATFORM_ENV = "IR_DISPATCH_PLATFORM"

_lock = threading.Lock()
_report: Report | None = None


def enabled() -> bool:
    """Whether ``VLLM_BATCH_INVARIANT`` asks for batch-invariant mode (parsed as vLLM does).

    Raises:
        ValueError: the variable is set to something that is not an integer.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return False
    try:
        return bool(int(value))
    except ValueError:
        raise ValueError(f"{ENV_VAR}={value!r} is not understood; expected 0 or 1") from None


def detect_platform() -> str:
    """The platform name (``cuda``, ``rocm``, ``npu``, ``xpu``, ``cpu``) of this process.

    ``IR_DISPATCH_PLATFORM`` wins (tests, odd hosts); then vLLM's ``current_platform``, which
    probes through NVML and never initialises CUDA in the process that forks the engine; then
    ir-dispatch's detection when vLLM is absent.
    """
    forced = os.environ.get(PLATFORM_ENV, "").strip().lower()
    if forced:
        if forced not in PACKAGES_BY_PLATFORM:
            raise ValueError(
                f"{PLATFORM_ENV}={forced!r} is not a platform; expected one of "
                f"{', '.join(sorted(PACKAGES_BY_PLATFORM))}"
            )
        return forced
    if vllm_installed():
        p = import_module(PLATFORMS_MODULE).current_platform
        for name in ("rocm", "cuda", "xpu", "cpu"):
            check = getattr(p, f"is_{name}", None)
            if check is not None and check():
                return name
        if getattr(p, "device_type", "") == "npu":
            return "npu"
    import ir_dispatch

    return ir_dispatch.current_platform().kind.value


def register() -> None:
    """Install batch-invariant mode into vLLM when ``VLLM_BATCH_INVARIANT`` is set (idempotent)."""
    global _report
    with _lock:
        if _report is not None or not enabled():
            return
        _report = _install()
    _report.announce()


def _install() -> Report:
    import ir_dispatch

    tp_invariant = _settings.tp_invariant_requested()  # a bad value fails before any change
    kit_attention = _hooks_gpu.attention_opted_in()  # likewise
    ir_dispatch.set_batch_invariant(True)
    platform = detect_platform()
    report = Report(platform)
    for result in import_providers(platform):
        if result.ok:
            report.providers.append(result.package.module)
        else:
            report.missing.append(result.message)
    layout = detect_layout()
    report.env = _settings.apply_env(platform, layout)
    if layout is None:
        report.gap(
            "no vLLM with a known batch-invariant module is importable: only ir-dispatch's "
            "mode was switched on"
        )
        if tp_invariant:
            report.gap(f"{_settings.TP_INVARIANT_ENV}=1 needs vLLM: nothing patched")
        return report
    report.vllm = f"{vllm_version() or '?'} (layout {layout.name})"
    if platform == "cpu":
        _hooks_cpu.install(layout, report)
    else:
        _hooks_gpu.install(layout, platform, report)
    if kit_attention:
        _hooks_gpu.install_attention(layout, platform, report)
    _tp.install(layout, platform, report, tp_invariant=tp_invariant)
    _fusions.install(platform, report)
    _graphs.install(platform, report)
    return report


def installed() -> Report | None:
    """What :func:`register` installed in this process, or ``None`` if it installed nothing."""
    return _report


def unregister() -> None:
    """Undo :func:`register` in this process (tests; vLLM itself never calls this).

    Restores every patched vLLM attribute and defaults-table entry, removes ir-dispatch's aten
    overrides and the attention-backend override, and returns ir-dispatch to the mode the
    environment says.
    """
    global _report
    with _lock:
        if _report is None:
            return
        _patch.undo_all()
        import ir_dispatch

        ir_dispatch.uninstall_aten_overrides()
        ir_dispatch.reload_from_env()
        _hooks_common.set_fused_fallback(False)
        _tp.uninstall()
        if _report.platform == "cpu" and vllm_installed():
            registry = import_module(ATTENTION_REGISTRY_MODULE)
            backend = registry.AttentionBackendEnum.CPU_ATTN
            if backend.get_path() == _hooks_cpu.CPU_ATTENTION_CLASS:
                backend.clear_override()
        if vllm_installed():
            _hooks_gpu.uninstall_attention()
        _report = None
