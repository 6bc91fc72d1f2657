"""Hooks shared by every platform: layer entry points, the vLLM IR norm provider, aten overrides.

The replacements call ``ir_dispatch.ops.<op>(...)``, the torch custom op ``ir_dispatch::<op>``:
``torch.compile`` keeps it as one opaque node and it selects the implementation when it runs,
so compiled graphs and captured CUDA graphs use the same batch-invariant kernel as eager code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from . import _patch
from ._providers import covered
from ._report import Report
from ._vllm_compat import IR_OPS_MODULE, PLATFORMS_MODULE, import_module

IR_PROVIDER = "vllm_bi"
"""The provider name the plugin registers with vLLM's IR for ``rms_norm``/``fused_add_rms_norm``."""


# --------------------------------------------------------------------------- layer entry points
def bi_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``input @ weight.T + bias`` through ``ir_dispatch::linear``.

    It has the signature of vLLM's ``linear_batch_invariant``, so it can stand in for it
    wherever vLLM imported that by value.
    """
    import ir_dispatch

    return ir_dispatch.ops.linear(input, weight, bias)


def bi_rms_norm(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The contract of vLLM's ``rms_norm_batch_invariant``, through ir-dispatch.

    Returns the normalised tensor, or ``(normalised, input + residual)`` when ``residual`` is
    given. vLLM's own version writes both into its arguments; every caller uses the returned
    tensors, so the plugin's returns new ones (which is also what ``torch.compile`` prefers).
    """
    import ir_dispatch

    if residual is None:
        return ir_dispatch.ops.rms_norm(input, weight, float(eps))
    return fused_add_rms_norm(input, residual, weight, float(eps))


_FUSED_NATIVE_ONLY = False
"""True when the platform has a batch-invariant ``rms_norm`` kernel but no fused one."""


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in vLLM's arithmetic order.

    Uses the fused ``ir_dispatch::fused_add_rms_norm`` kernel when the platform has one; else the
    sum in fp32 and ``ir_dispatch::rms_norm`` on it, which rounds exactly like the fused
    reference (fp32 variance, cast, then weight) and is batch-invariant when ``rms_norm`` is.
    """
    import ir_dispatch

    if not _FUSED_NATIVE_ONLY:
        out, new_residual = ir_dispatch.ops.fused_add_rms_norm(x, residual, weight, eps)
        return out, new_residual
    summed = x.to(torch.float32) + residual.to(torch.float32)
    normed = ir_dispatch.ops.rms_norm(summed, None, eps).to(x.dtype)
    return (normed * weight if weight is not None else normed), summed.to(x.dtype)


def set_fused_fallback(enabled: bool) -> None:
    """Compose the fused norm from ``rms_norm`` (when no fused kernel exists on the platform)."""
    global _FUSED_NATIVE_ONLY
    _FUSED_NATIVE_ONLY = bool(enabled)


# --------------------------------------------------------------------------- vLLM IR provider
def _norm_args_ok(x: torch.Tensor, weight: torch.Tensor | None, variance_size: int | None) -> bool:
    # ir-dispatch's reference casts before the weight multiply, vLLM's after: equal only when
    # the weight has the activation dtype. A partial-variance norm has no ir-dispatch op.
    return variance_size is None and (weight is None or weight.dtype == x.dtype)


def _ir_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, epsilon: float, variance_size: int | None = None
) -> torch.Tensor:
    import ir_dispatch

    return ir_dispatch.ops.rms_norm(x, weight, epsilon)


def _ir_rms_norm_supports(
    x: torch.Tensor, weight: torch.Tensor | None, epsilon: float, variance_size: int | None = None
) -> bool:
    return _norm_args_ok(x, weight, variance_size)


def _ir_fused_add_rms_norm(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_add_rms_norm(x, x_residual, weight, epsilon)


def _ir_fused_add_rms_norm_supports(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> bool:
    return _norm_args_ok(x, weight, variance_size) and x_residual.dtype == x.dtype


_IR_IMPLS = {
    "rms_norm": (_ir_rms_norm, _ir_rms_norm_supports),
    "fused_add_rms_norm": (_ir_fused_add_rms_norm, _ir_fused_add_rms_norm_supports),
}


def register_ir_norm_provider() -> list[str]:
    """Register ``vllm_bi`` implementations of vLLM's IR norms and put them first in priority.

    vLLM routes every ``RMSNorm`` through ``vllm.ir.ops.rms_norm``/``fused_add_rms_norm`` (eager,
    and lowered from compiled graphs), picking providers by a priority list that the platform's
    ``get_default_ir_op_priority`` seeds. The plugin's provider leads that list; arguments it
    does not take (a partial-variance norm, a weight of another dtype) fall through to vLLM's.

    Returns:
        The IR ops the provider was registered for.
    """
    ir_ops = import_module(IR_OPS_MODULE)
    done = []
    for name, (fn, supports) in _IR_IMPLS.items():
        op = getattr(ir_ops, name, None)
        if op is None:
            continue
        if IR_PROVIDER not in op.impls:
            op.register_impl(IR_PROVIDER, supported=True, supports_args=supports)(fn)
        done.append(name)
    if done:
        _prepend_ir_priority(done)
    return done


def _prepend_ir_priority(op_names: Iterable[str]) -> None:
    platforms = import_module(PLATFORMS_MODULE)
    platform_cls = type(platforms.current_platform)
    original = platform_cls.get_default_ir_op_priority
    names = tuple(op_names)

    def get_default_ir_op_priority(cls: type, vllm_config: Any) -> Any:
        config = original(vllm_config)
        for name in names:
            current = list(getattr(config, name, None) or [])
            if IR_PROVIDER not in current:
                setattr(config, name, [IR_PROVIDER, *current])
        return config

    _patch.patch_attr(
        platform_cls, "get_default_ir_op_priority", classmethod(get_default_ir_op_priority)
    )


def install_norms(report: Report, platform: str) -> None:
    """Route vLLM's RMSNorm through ir-dispatch when ``platform`` has a batch-invariant kernel.

    Without one, vLLM's norm stays (its own batch-invariant path on GPUs, the native form on
    CPU) and ``report`` says so.
    """
    if not covered(("rms_norm",), platform):
        report.keep(f"RMSNorm: no batch-invariant {platform} rms_norm kernel in ir-dispatch")
        return
    set_fused_fallback(not covered(("fused_add_rms_norm",), platform))
    ops = register_ir_norm_provider()
    report.replaced(
        "RMSNorm (vLLM IR " + ", ".join(ops) + ")",
        f"IR provider '{IR_PROVIDER}' -> ir_dispatch::rms_norm",
    )


# --------------------------------------------------------------------------- aten overrides
def install_aten_overrides(overloads: Iterable[str], dispatch_key: str) -> tuple[str, ...]:
    """Route ``overloads`` under ``dispatch_key`` to ir-dispatch, merging with what is installed.

    ir-dispatch keeps one override library per process; if another caller installed a different
    set, the union is reinstalled so neither loses its overrides.
    """
    import ir_dispatch

    wanted = tuple(overloads)
    if not wanted:
        return ()
    current = ir_dispatch.installed_overrides()
    if current is not None:
        key, have = current
        if key == dispatch_key and set(wanted) <= set(have):
            return wanted
        if key == dispatch_key:
            wanted = tuple(dict.fromkeys((*have, *wanted)))
        ir_dispatch.uninstall_aten_overrides()
    # The lowering pass saves host time per compiled GEMM, which vLLM's CUDA graph replays do
    # not spend, and it has not run in vLLM's piecewise compile: opt-in here.
    ir_dispatch.install_aten_overrides(wanted, dispatch_key, lowering_default=False)
    return wanted
