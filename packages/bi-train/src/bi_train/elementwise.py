"""RoPE and SiLU-and-mul with backward passes, forward through the ir-dispatch ops.

Both are element-wise, so any kernel is batch-invariant; what matters for bitwise equality with
the rollout is the *arithmetic*: the same cos/sin table (vLLM's formula, on the same device, cast
to the model dtype) and the same rounding steps as vLLM. Backward passes run in fp32 and are
deterministic (element-wise only, no atomics).
"""

from __future__ import annotations

from typing import Any

import torch

from . import _ops


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Backward arithmetic: fp32, or the input's dtype if wider (fp64 reference runs)."""
    return torch.promote_types(dtype, torch.float32)


def cos_sin_cache(
    rotary_dim: int,
    max_position: int,
    base: float,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The default RoPE table of vLLM, ``[max_position, rotary_dim]``: ``cat(cos, sin)``, then cast.

    Same formula as vLLM's ``RotaryEmbeddingBase._compute_cos_sin_cache``: inverse frequencies
    ``1 / base ** (arange(0, d, 2) / d)`` in fp32, the outer product with fp32 positions, ``cos``
    and ``sin`` in fp32, cast to ``dtype`` once. Build it on the device the rollout built its
    table on: ``cos``/``sin`` may differ in the last fp32 bit between CPU and GPU.

    Args:
        rotary_dim: rotated dimensions per head (Qwen3: the head size).
        max_position: table length (``max_position_embeddings``).
        base: ``rope_theta``.
        dtype: the model dtype the table is cast to.
        device: where to compute it.
    """
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim}")
    if max_position <= 0:
        raise ValueError(f"max_position must be positive, got {max_position}")
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float, device=device) / rotary_dim
    inv_freq = 1.0 / (base**exponents)
    t = torch.arange(max_position, dtype=torch.float, device=device)
    freqs = t[:, None] * inv_freq[None, :]  # the einsum "i,j->ij": one fp32 product each
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.in_dtype = x.dtype
        return _ops.rotary_embedding.call_selected(x, cos, sin)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        acc = _acc_dtype(ctx.in_dtype)
        c, s = cos.to(acc).unsqueeze(-2), sin.to(acc).unsqueeze(-2)
        g1, g2 = torch.chunk(grad_out.to(acc), 2, dim=-1)
        # The transpose (inverse) rotation: o1 = x1 c - x2 s, o2 = x2 c + x1 s.
        grad = torch.cat((g1 * c + g2 * s, g2 * c - g1 * s), dim=-1)
        return grad.to(ctx.in_dtype), None, None


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Neox-style RoPE in vLLM's arithmetic order, with its backward (the inverse rotation).

    Args:
        x: ``[T, H, D]`` queries or keys (``D`` equal to the table's rotary dim).
        positions: ``[T]`` integer positions of the rows.
        cache: :func:`cos_sin_cache` table ``[max_position, D]``.

    Returns:
        ``[T, H, D]`` in ``x``'s dtype.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [T, H, D], got shape {tuple(x.shape)}")
    if positions.shape != x.shape[:1]:
        raise ValueError(f"positions must be [{x.shape[0]}], got shape {tuple(positions.shape)}")
    if cache.dim() != 2 or cache.shape[1] != x.shape[2]:
        raise ValueError(
            f"cache must be [max_position, {x.shape[2]}], got shape {tuple(cache.shape)}"
        )
    cos, sin = cache.index_select(0, positions.long()).chunk(2, dim=-1)
    return _Rotary.apply(x, cos, sin)  # type: ignore[no-any-return]


class _SiluAndMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _ops.silu_and_mul.call_selected(x)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        acc = _acc_dtype(x.dtype)
        gate, up = torch.chunk(x.to(acc), 2, dim=-1)
        g = grad_out.to(acc)
        sig = torch.sigmoid(gate)
        silu = gate * sig
        grad_gate = g * up * sig * (1 + gate * (1 - sig))
        return torch.cat((grad_gate, g * silu), dim=-1).to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``x = cat(gate, up)`` on the last dim (vLLM's SiluAndMul).

    Args:
        x: ``[..., 2 * d]`` merged gate and up projections.

    Returns:
        ``[..., d]`` in ``x``'s dtype.
    """
    if x.shape[-1] % 2:
        raise ValueError(f"x's last dimension must be even (gate | up), got {x.shape[-1]}")
    return _SiluAndMul.apply(x)  # type: ignore[no-any-return]
