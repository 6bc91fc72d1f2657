"""Qwen3's q/k norms and RoPE as one kit kernel (``ir_dispatch::qk_norm_rope``).

vLLM's ``Qwen3Attention.forward`` normalizes every head of q and k (``q_norm``, ``k_norm``) and
then applies RoPE. Default vLLM's Inductor fuses the three into one kernel; in batch-invariant
mode the norms are the kit's (opaque to Inductor), so each layer launched the q norm, the k norm
and Inductor's RoPE, and moved q and k through memory twice more. The plugin's ``forward``
calls one kernel for all of it; ``VLLM_BI_QK_FUSION=0`` keeps vLLM's steps.

Same bits: the kernel reproduces the kit's ``rms_norm`` and vLLM's GPU RoPE (fp32 from bf16
values, rounded once; vLLM's CUDA kernel and Inductor's lowering compute the same), so the
trainer (``bi-train``: ``rms_norm``, then ``rotary_embedding``) still matches the rollout.

Fused only where that holds: vLLM's plain ``RotaryEmbedding`` (neox style, rotating the whole
head; not YaRN, mRoPE or other subclasses), weighted norms with one epsilon, and activations
in the norms' dtype. Any other layer runs vLLM's own ``forward``.

On by default since 2026-11-27 (H100, vLLM 0.26): in a CUDA graph the fused launch takes 2.2 µs
per layer at one token against 6.1 µs for the three steps, and 80 µs against 439 µs at 16384
tokens (``bench/bench_qk_norm_rope.py`` of bi-triton-ascend); with it the 0.6B width met issue
#10's serving targets (1.03 / 0.98 / 1.02 of default) and its needle stayed bitwise in every
case. The single-stream slowdown seen before (1.95 against 1.69 ms/token) was the
engine-to-engine spread that default vLLM's single-stream timings show too (1.6 to 2.6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _patch
from ._providers import covered
from ._report import Report
from ._settings import switch_on
from ._vllm_compat import (
    GPU_ATTENTION_LAYOUTS,
    QWEN3_ATTENTION,
    QWEN3_MODULE,
    ROTARY_CLASS,
    ROTARY_MODULE,
    VllmLayout,
    import_module,
)

ENV = "VLLM_BI_QK_FUSION"
LAYOUTS = GPU_ATTENTION_LAYOUTS
"""vLLM layouts whose ``Qwen3Attention.forward`` this module's ``forward`` was written from."""

THEIRS = "Qwen3 q_norm + k_norm + RoPE (three launches)"
OURS = "ir_dispatch::qk_norm_rope (one launch, same bits)"


def enabled() -> bool:
    """Whether the fusion is on: unset or ``1`` (the default) is on, ``0`` off.

    Raises:
        ValueError: the variable holds anything else.
    """
    return switch_on(ENV, default=True)


def why_not_fused(attn: Any, rotary_class: Any) -> str | None:
    """Why this attention layer keeps vLLM's forward, or ``None`` when it can be fused."""
    rope = attn.rotary_emb
    if type(rope) is not rotary_class:
        return f"RoPE is {type(rope).__name__}, not vLLM's plain {rotary_class.__name__}"
    if not rope.is_neox_style or rope.rotary_dim != rope.head_size:
        return "RoPE is not neox style over the whole head"
    norms = (attn.q_norm, attn.k_norm)
    if not all(n.has_weight and n.variance_size_override is None for n in norms):
        return "a q/k norm has no weight or a variance size override"
    if attn.q_norm.variance_epsilon != attn.k_norm.variance_epsilon:
        return "q_norm and k_norm have different epsilons"
    if attn.q_norm.weight.dtype != attn.k_norm.weight.dtype:
        return "q_norm and k_norm weights differ in dtype"
    return None


def make_forward(original: Callable[..., Any], rotary_class: Any) -> Callable[..., Any]:
    """``Qwen3Attention.forward`` with the norms and RoPE as one ``qk_norm_rope`` call."""

    def forward(self: Any, positions: torch.Tensor, hidden_states: torch.Tensor) -> Any:
        # q comes out of qkv_proj in the activations' dtype; the kernel wants the norms' dtype.
        if (
            hidden_states.dtype != self.q_norm.weight.dtype
            or why_not_fused(self, rotary_class) is not None
        ):
            return original(self, positions, hidden_states)
        import ir_dispatch

        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        tokens = q.shape[0]
        q_heads, k_heads = ir_dispatch.ops.qk_norm_rope(
            q.view(tokens, -1, self.head_dim),
            k.view(tokens, -1, self.head_dim),
            self.q_norm.weight,
            self.k_norm.weight,
            float(self.q_norm.variance_epsilon),
            positions.flatten(),
            self.rotary_emb._match_cos_sin_cache_dtype(q),
        )
        attn_output = self.attn(q_heads.view(q.shape), k_heads.view(k.shape), v)
        output, _ = self.o_proj(attn_output)
        return output

    return forward


def install(layout: VllmLayout, platform: str, report: Report) -> None:
    """Patch ``Qwen3Attention.forward`` where the kernel exists and the layout is known."""
    if not enabled():
        report.keep(f"{THEIRS} ({ENV}=0)")
        return
    if layout.name not in LAYOUTS:
        report.keep(f"{THEIRS} (fusion written for vLLM {', '.join(LAYOUTS)})")
        return
    if not covered(("qk_norm_rope",), platform):
        report.keep(f"{THEIRS} (no batch-invariant {platform} qk_norm_rope kernel)")
        return
    try:
        attention = getattr(import_module(QWEN3_MODULE), QWEN3_ATTENTION)
        rotary_class = getattr(import_module(ROTARY_MODULE), ROTARY_CLASS)
    except (ImportError, AttributeError) as e:  # vLLM moved them: say so, keep vLLM's path
        report.gap(f"{THEIRS} kept: {e}")
        return
    _patch.patch_attr(attention, "forward", make_forward(attention.forward, rotary_class))
    report.replaced(THEIRS, OURS)
