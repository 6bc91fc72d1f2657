"""The fused Qwen3 q/k norm + RoPE forward: same outputs as vLLM's steps, and when it stays out.

The attention below is built like vLLM 0.26's ``Qwen3Attention`` (its forward copied in
structure, not code): q/k norms through the kit's ``rms_norm`` (what the plugin's RMSNorm runs),
and a ``RotaryEmbedding`` computing vLLM's GPU arithmetic (fp32, rounded once).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

import ir_dispatch
from vllm_bi_plugin import _qk_fusion, _vllm_compat
from vllm_bi_plugin._report import Report

D, HEADS, KV_HEADS, HIDDEN = 64, 4, 2, 96


def _round(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 as the Triton interpreter rounds (truncation); a GPU rounds to nearest."""
    return (x.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


class RotaryEmbedding:
    def __init__(self, neox: bool = True) -> None:
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, D, 2, dtype=torch.float) / D))
        freqs = torch.outer(torch.arange(256, dtype=torch.float), inv_freq)
        self.cos_sin_cache = torch.cat((freqs.cos(), freqs.sin()), -1).to(torch.bfloat16)
        self.is_neox_style, self.rotary_dim, self.head_size = neox, D, D

    def _match_cos_sin_cache_dtype(self, q: torch.Tensor) -> torch.Tensor:
        return self.cos_sin_cache.to(q.dtype)

    def __call__(self, positions, q, k):  # type: ignore[no-untyped-def]
        cos, sin = self.cos_sin_cache.index_select(0, positions).float().chunk(2, -1)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)

        def rope(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.view(x.shape[0], -1, D).float().chunk(2, -1)
            return _round(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)).view(x.shape)

        return rope(q), rope(k)


class YarnRotaryEmbedding(RotaryEmbedding):
    pass


@pytest.fixture
def kit() -> Iterator[ModuleType]:
    """bi-triton-ascend's kernels, registered for this test only (importing it registers them,
    and the other plugin tests expect ir-dispatch without them)."""
    if importlib.util.find_spec("bi_triton_ascend") is None:
        pytest.skip("needs bi-triton-ascend (pip install vllm-bi-plugin[cuda])")
    bta = importlib.import_module("bi_triton_ascend")
    if not bta.supported:
        pytest.skip("needs triton (the interpreter runs it on CPU)")
    bta.register()
    yield bta
    bta.unregister()


class RMSNorm:
    def __init__(self, eps: float = 1e-6) -> None:
        self.weight = (torch.rand(D) + 0.5).to(torch.bfloat16)
        self.variance_epsilon, self.has_weight, self.variance_size_override = eps, True, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return importlib.import_module("bi_triton_ascend").rms_norm(
            x, self.weight, self.variance_epsilon
        )


class Qwen3Attention:
    def __init__(self, rope: RotaryEmbedding) -> None:
        self.head_dim, self.q_size, self.kv_size = D, HEADS * D, KV_HEADS * D
        self.w_qkv = torch.randn((HEADS + 2 * KV_HEADS) * D, HIDDEN).to(torch.bfloat16) / 8
        self.q_norm, self.k_norm, self.rotary_emb = RMSNorm(), RMSNorm(), rope
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def qkv_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x @ self.w_qkv.t(), None

    def attn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.seen.append((q, k, v))
        return q

    def o_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """vLLM 0.26's steps: split, per-head norms, RoPE, attention, output projection."""
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(*q.shape[:-1], q.shape[-1] // D, D)).view(q.shape)
        k = self.k_norm(k.view(*k.shape[:-1], k.shape[-1] // D, D)).view(k.shape)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


@pytest.mark.parametrize("tokens", [1, 5, 17])
def test_fused_forward_gives_vllms_q_and_k_bitwise(tokens: int, kit: ModuleType) -> None:
    attn = Qwen3Attention(RotaryEmbedding())
    fused = _qk_fusion.make_forward(Qwen3Attention.forward, RotaryEmbedding)
    x = torch.randn(tokens, HIDDEN).to(torch.bfloat16)
    positions = torch.randint(0, 256, (tokens,))
    with ir_dispatch.batch_invariant():
        want = Qwen3Attention.forward(attn, positions, x)
        got = fused(attn, positions, x)
    (q0, k0, v0), (q1, k1, v1) = attn.seen
    assert torch.equal(got, want) and torch.equal(q1, q0) and torch.equal(k1, k0)
    assert torch.equal(v1, v0) and q1.shape == (tokens, HEADS * D)


def test_layers_it_cannot_fuse_keep_vllms_forward() -> None:
    calls = []

    def original(self, positions, hidden_states):  # type: ignore[no-untyped-def]
        calls.append("vllm")
        return "vllm"

    fused = _qk_fusion.make_forward(original, RotaryEmbedding)
    for attn, why in (
        (Qwen3Attention(YarnRotaryEmbedding()), "not vLLM's plain RotaryEmbedding"),
        (Qwen3Attention(RotaryEmbedding(neox=False)), "not neox style"),
    ):
        assert why in (_qk_fusion.why_not_fused(attn, RotaryEmbedding) or "")
        bf16 = torch.zeros(1, HIDDEN, dtype=torch.bfloat16)
        assert fused(attn, torch.zeros(1, dtype=torch.long), bf16) == "vllm"
    # activations in another dtype than the norms' weights: vLLM's forward, not the kernel
    assert fused(Qwen3Attention(RotaryEmbedding()), torch.zeros(1, dtype=torch.long),
                 torch.zeros(1, HIDDEN)) == "vllm"  # fmt: skip
    other_eps = Qwen3Attention(RotaryEmbedding())
    other_eps.k_norm.variance_epsilon = 1e-5
    assert "different epsilons" in (_qk_fusion.why_not_fused(other_eps, RotaryEmbedding) or "")
    assert _qk_fusion.why_not_fused(Qwen3Attention(RotaryEmbedding()), RotaryEmbedding) is None
    assert calls == ["vllm", "vllm", "vllm"]


def test_fusion_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_qk_fusion.ENV, raising=False)
    assert _qk_fusion.enabled()
    monkeypatch.setenv(_qk_fusion.ENV, " ")
    assert _qk_fusion.enabled()
    monkeypatch.setenv(_qk_fusion.ENV, "0")
    assert not _qk_fusion.enabled()
    monkeypatch.setenv(_qk_fusion.ENV, "1")
    assert _qk_fusion.enabled()
    monkeypatch.setenv(_qk_fusion.ENV, "yes")
    with pytest.raises(ValueError, match="VLLM_BI_QK_FUSION"):
        _qk_fusion.enabled()


@pytest.mark.parametrize(
    ("switch", "layout", "why"),
    [("0", _vllm_compat.V0_26, "VLLM_BI_QK_FUSION=0"), ("", _vllm_compat.V0_32, "written for")],
)
def test_install_keeps_vllms_steps_when_off_or_unknown(
    monkeypatch: pytest.MonkeyPatch, switch: str, layout: _vllm_compat.VllmLayout, why: str
) -> None:
    """Switched off, or on a vLLM whose Qwen3 forward it was not written from: vLLM's forward
    stays and the report says why (nothing is imported from vLLM on these paths)."""
    monkeypatch.setenv(_qk_fusion.ENV, switch)
    report = Report(platform="cuda")
    _qk_fusion.install(layout, "cuda", report)
    assert report.replacements == []
    assert len(report.kept) == 1 and why in report.kept[0] and _qk_fusion.THEIRS in report.kept[0]
