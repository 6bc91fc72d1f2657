"""FP8 linear layers: vLLM's ``cutlass_scaled_mm`` through ir-dispatch's ``scaled_mm``.

vLLM's FP8 linear kernels call ``vllm._custom_ops.cutlass_scaled_mm(a, b, scale_a, scale_b,
out_dtype, bias)`` at call time (``b`` is ``[K, N]``, the scales per tensor, token or channel),
which is also ir-dispatch's ``scaled_mm`` argument order. The replacement is a torch custom op,
``vllm_bi::cutlass_scaled_mm``, so ``torch.compile`` keeps it whole and the choice between the
kit's kernel and vLLM's is made when it runs: a batch-invariant ir-dispatch provider that
accepts the call serves it; anything else (a block-quantised layout, an unsupported scale
shape) goes to vLLM's own CUTLASS path, which vLLM's batch-invariant mode already makes
M-independent. Neither ever reaches a batch-variant kernel.

Caveat (documented, not fixable here): a *dynamic per-tensor* activation scale is an amax over
the whole batch, so it varies with the batch before any GEMM runs. vLLM 0.32 refuses that
combination in batch-invariant mode; 0.26 does not. Online ``quantization="fp8"`` uses
per-token activation scales, which are row-local.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_OP_NAME = "vllm_bi::cutlass_scaled_mm"
_fallback: dict[str, Callable[..., torch.Tensor]] = {}
_op: Any = None
_fallback_calls = 0


def fallback_calls() -> int:
    """How many calls went to vLLM's own CUTLASS path (no kit kernel accepted them).

    Under CUDA graphs the hook runs while graphs are captured, so the count reflects the choices
    the graphs replay. Calls the kit served show up in ``ir_dispatch.recording()`` instead.
    """
    return _fallback_calls


def _run(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    import ir_dispatch

    try:
        impl = ir_dispatch.ops.scaled_mm.select(a, b, scale_a, scale_b, out_dtype, bias)
    except ir_dispatch.NoBatchInvariantImplError:
        impl = None
    if impl is None or impl.provider == "native":
        global _fallback_calls
        _fallback_calls += 1
        return _fallback["vllm"](a, b, scale_a, scale_b, out_dtype, bias)
    return ir_dispatch.ops.scaled_mm.call_impl(impl, a, b, scale_a, scale_b, out_dtype, bias)


def _fake(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def _custom_op() -> Any:
    global _op
    if _op is None:
        _op = torch.library.custom_op(_OP_NAME, _run, mutates_args=())
        _op.register_fake(_fake)
    return _op


def make_cutlass_scaled_mm(
    vllm_cutlass_scaled_mm: Callable[..., torch.Tensor],
) -> Callable[..., torch.Tensor]:
    """A drop-in ``cutlass_scaled_mm`` that prefers ir-dispatch's batch-invariant ``scaled_mm``.

    Args:
        vllm_cutlass_scaled_mm: vLLM's function, used for calls no kit kernel accepts.
    """
    _fallback["vllm"] = vllm_cutlass_scaled_mm
    op = _custom_op()

    def cutlass_scaled_mm(
        a: torch.Tensor,
        b: torch.Tensor,
        scale_a: torch.Tensor,
        scale_b: torch.Tensor,
        out_dtype: torch.dtype,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        target = (*a.shape[:-1], b.shape[1])
        out = op(a.reshape(-1, a.shape[-1]), b, scale_a, scale_b, out_dtype, bias)
        return out.view(*target)

    return cutlass_scaled_mm
