"""Backward passes for the batch-invariant forward ops.

The forward of each function is the very ir-dispatch op that vLLM runs through the plugin, so the
trainer's forward is bitwise the rollout's. Backward results need not match anything bitwise;
they only have to be deterministic run to run, so they use plain torch ops without atomics.
"""

from __future__ import annotations

from typing import Any

import torch

from ir_dispatch import ops


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return ops.linear.call_selected(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = (g2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = g2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.epsilon = epsilon
        return ops.rms_norm.call_selected(x, weight, epsilon)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)
        grad_x, grad_w = _rms_backward(x.to(acc), grad_out.to(acc), weight.to(acc), ctx.epsilon)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), None


def _rms_backward(
    s: torch.Tensor, gf: torch.Tensor, wf: torch.Tensor | None, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 gradients of ``s * rsqrt(mean(s**2) + eps) * w`` w.r.t. ``s`` and ``w``."""
    rstd = torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + epsilon)
    normed = s * rstd
    gw = gf * wf if wf is not None else gf
    grad_s = rstd * (gw - normed * (gw * normed).mean(-1, keepdim=True))
    grad_w = (gf * normed).reshape(-1, s.shape[-1]).sum(0)
    return grad_s, grad_w


class _FusedAddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, residual, weight)
        ctx.epsilon = epsilon
        out, new_residual = ops.fused_add_rms_norm.call_selected(x, residual, weight, epsilon)
        return out, new_residual

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor | None, grad_residual: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x, residual, weight = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)
        summed = x.to(acc) + residual.to(acc)
        grad_s = torch.zeros_like(summed)
        grad_w = None
        if grad_out is not None:
            grad_s, grad_w = _rms_backward(summed, grad_out.to(acc), weight.to(acc), ctx.epsilon)
        if grad_residual is not None:
            grad_s = grad_s + grad_residual.to(acc)
        gw = grad_w.to(weight.dtype) if grad_w is not None else torch.zeros_like(weight)
        return grad_s.to(x.dtype), grad_s.to(residual.dtype), gw, None


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        out = ops.log_softmax.call_selected(x, dim, torch.float32)
        ctx.save_for_backward(out)
        ctx.dim = dim
        ctx.in_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (out,) = ctx.saved_tensors
        grad = grad_out - out.exp() * grad_out.sum(ctx.dim, keepdim=True)
        return grad.to(ctx.in_dtype), None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: vLLM's forward bits, with a deterministic backward."""
    return _Linear.apply(x, weight, bias)  # type: ignore[no-any-return]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
    """RMSNorm in vLLM's arithmetic order, with a deterministic fp32 backward."""
    return _RMSNorm.apply(x, weight, epsilon)  # type: ignore[no-any-return]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual RMSNorm of vLLM: ``(rms_norm(x + residual), x + residual)``, differentiable.

    The forward is ``ir_dispatch.ops.fused_add_rms_norm`` (the sum in fp32, rounded once for the
    new residual; the norm of the fp32 sum), the kernel vLLM's decoder layers call between
    blocks; the backward treats the sum as fp32 and adds both outputs' gradients.

    Args:
        x: ``[..., hidden]`` the block output.
        residual: like ``x``, the residual stream.
        weight: ``[hidden]``.
        epsilon: variance epsilon.
    """
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    out, new_residual = _FusedAddRMSNorm.apply(x, residual, weight, epsilon)
    return out, new_residual


def log_softmax_fp32(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log_softmax`` computed and returned in fp32, as vLLM's sampler does for logprobs."""
    return _LogSoftmax.apply(x, dim)  # type: ignore[no-any-return]
