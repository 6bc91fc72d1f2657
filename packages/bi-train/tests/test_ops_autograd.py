"""RoPE, SiLU-and-mul, fused residual RMSNorm and varlen attention: forward and backward.

Backward passes are checked against float64 torch autograd of the same math, and for run-to-run
bitwise determinism; forwards against vLLM's formulas and the batch-invariant kernels.
"""

from __future__ import annotations

import pytest
import torch

import bi_train
import ir_dispatch as ird
from bi_train import _ops


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _grads(fn, *inputs: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs
    )
    loss.backward()
    return [leaf.grad for leaf in leaves]  # type: ignore[misc]


def test_rope_matches_transformers_bitwise_and_backward_is_the_inverse_rotation() -> None:
    pytest.importorskip("transformers", reason="compares with transformers' RoPE")
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    torch.manual_seed(0)
    table = bi_train.cos_sin_cache(16, 64, 1e6, dtype=torch.bfloat16)
    pos = torch.tensor([0, 1, 2, 5, 63, 17])
    x = torch.randn(6, 3, 16, dtype=torch.bfloat16)
    got = bi_train.rotary_embedding(x, pos, table)
    cos, sin = table.index_select(0, pos).chunk(2, dim=-1)
    hf_q, _ = apply_rotary_pos_emb(x, x, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1), 1)
    assert torch.equal(got, hf_q)  # same per-op bf16 rounding as vLLM's native/CUDA order
    table64 = bi_train.cos_sin_cache(16, 64, 1e6, dtype=torch.float64)
    g_bi = _grads(lambda t: bi_train.rotary_embedding(t, pos, table64), x.double())[0]
    g_ref = _grads(lambda t: _ops._rotary_embedding(t, *table64[pos].chunk(2, -1)), x.double())[0]
    torch.testing.assert_close(g_bi, g_ref, rtol=1e-12, atol=1e-12)


def test_cos_sin_cache_equals_transformers_rotary_tables_on_cpu() -> None:
    pytest.importorskip("transformers", reason="compares with transformers' RoPE tables")
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    cfg = Qwen3Config(head_dim=16, hidden_size=64, num_attention_heads=4, rope_theta=1e6)
    hf = Qwen3RotaryEmbedding(cfg)
    pos = torch.arange(300)[None]
    cos, sin = hf(torch.zeros(1, dtype=torch.bfloat16), pos)
    table = bi_train.cos_sin_cache(16, 300, 1e6, dtype=torch.bfloat16)
    assert torch.equal(torch.cat((cos[0, :, :8], sin[0, :, :8]), -1), table)


def test_silu_and_mul_gradients_and_determinism() -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 2, 24, dtype=torch.float64)
    ref = _grads(lambda t: torch.nn.functional.silu(t[..., :12]) * t[..., 12:], x)[0]
    got = _grads(bi_train.silu_and_mul, x)[0]
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-8)
    xb = x.to(torch.bfloat16)
    assert torch.equal(_grads(bi_train.silu_and_mul, xb)[0], _grads(bi_train.silu_and_mul, xb)[0])
    with pytest.raises(ValueError, match="must be even"):
        bi_train.silu_and_mul(x[..., :5])


def test_fused_add_rms_norm_gradients_match_float64_autograd() -> None:
    torch.manual_seed(2)
    x, r = torch.randn(7, 32, dtype=torch.float64), torch.randn(7, 32, dtype=torch.float64)
    w = torch.rand(32, dtype=torch.float64)

    def reference(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = x + r
        return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * w, s

    got = _grads(lambda a, b, c: bi_train.fused_add_rms_norm(a, b, c, 1e-6), x, r, w)
    for g, want in zip(got, _grads(reference, x, r, w), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="residual must have"):
        bi_train.fused_add_rms_norm(x, r[:3], w, 1e-6)


CU = [0, 5, 6, 23, 40]  # lengths 5, 1, 17, 17: several KV chunks/tiles in the interpreter


def test_varlen_attention_forward_and_backward_vs_float64() -> None:
    torch.manual_seed(3)
    q = torch.randn(40, 4, 16)
    k, v = torch.randn(40, 2, 16), torch.randn(40, 2, 16)
    cu = torch.tensor(CU, dtype=torch.int32)
    with bi_train.batch_invariant():
        out = bi_train.varlen_attention(q, k, v, cu)
        grads = _grads(lambda a, b, c: bi_train.varlen_attention(a, b, c, cu), q, k, v)
        again = _grads(lambda a, b, c: bi_train.varlen_attention(a, b, c, cu), q, k, v)
    ref_out = _ops.reference_varlen_attention(q, k, v, cu, 0.25, True, torch.float64)
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=1e-4, atol=1e-5)
    ref = _grads(
        lambda a, b, c: _ops.reference_varlen_attention(a, b, c, cu, 0.25, True, torch.float64),
        q.double(), k.double(), v.double(),
    )  # fmt: skip
    for g, g2, want in zip(grads, again, ref, strict=True):
        assert torch.equal(g, g2)
        assert _cos(g.double(), want) > 0.9999


def test_varlen_attention_row_equals_its_sequence_alone() -> None:
    torch.manual_seed(4)
    q = torch.randn(40, 4, 16, dtype=torch.bfloat16)
    k, v = (
        torch.randn(40, 2, 16, dtype=torch.bfloat16),
        torch.randn(40, 2, 16, dtype=torch.bfloat16),
    )
    cu = torch.tensor(CU, dtype=torch.int32)
    with bi_train.batch_invariant():
        packed = bi_train.varlen_attention(q, k, v, cu)
        alone = bi_train.varlen_attention(
            q[6:23], k[6:23], v[6:23], torch.tensor([0, 17], dtype=torch.int32)
        )
    assert torch.equal(packed[6:23], alone)


def test_batch_invariant_mode_refuses_a_variant_attention_fallback() -> None:
    q = torch.randn(4, 2, 8, dtype=torch.float64)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with bi_train.batch_invariant(), pytest.raises(ird.NoBatchInvariantImplError):
        bi_train.varlen_attention(q, q, q, cu)
    chosen = ird.explain(
        "varlen_attention", q.float(), q.float(), q.float(), cu, 0.3, True, batch_invariant=True
    ).chosen
    assert chosen == "triton"
