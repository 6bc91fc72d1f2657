"""A whole tiny Qwen3-like forward at TP = 1, 2, 4, 8, emulated in one process: same logits bits.

The model is written in plain torch on ir-dispatch ops (``rms_norm``, ``linear``, ``matmul``,
``softmax``) and sharded the way vLLM shards Qwen3:

- embedding: vocab-parallel; each rank looks up its vocab range, zeros elsewhere, and the ranks'
  rows are summed (exact: one non-zero term per element);
- ``qkv_proj``, ``gate_up_proj``: column-parallel (N split; each rank's weight is its q, k, v or
  gate, up slices stacked), heads split across ranks, k/v heads replicated when TP exceeds them;
- attention, q/k norms, RoPE, SiLU-mul: per head or per element, on the rank's slice;
- ``o_proj``, ``down_proj``: row-parallel via :func:`ir_dispatch.tp.emulate_row_parallel_linear`;
- ``lm_head``: vocab-parallel, N split, gathered by concatenation.

vLLM needs ``num_heads % tp == 0``; this model has 4 query heads, so at TP=8 attention runs on 4
head groups while ``o_proj`` still cuts its K into 8 rank shards (the reduction being tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import ops, tp

TP_SIZES = (1, 2, 4, 8)
RowParallel = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class TinyQwen3:
    """Qwen3 layout, shrunk: 2 layers, hidden 128, 4 heads, 2 kv heads, head_dim 32."""

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 256
    vocab: int = 512
    eps: float = 1e-6
    rope_theta: float = 1e6


CFG = TinyQwen3()


def _weights(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = CFG

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    def norm(n: int) -> torch.Tensor:
        return (1 + torch.randn(n, generator=g) * 0.1).to(dtype)

    w = {"embed": rnd(c.vocab, c.hidden, scale=1.0), "norm": norm(c.hidden)}
    w["lm_head"] = rnd(c.vocab, c.hidden)
    for i in range(c.layers):
        w |= {
            f"{i}.in_norm": norm(c.hidden),
            f"{i}.q": rnd(c.heads * c.head_dim, c.hidden),
            f"{i}.k": rnd(c.kv_heads * c.head_dim, c.hidden),
            f"{i}.v": rnd(c.kv_heads * c.head_dim, c.hidden),
            f"{i}.q_norm": norm(c.head_dim),
            f"{i}.k_norm": norm(c.head_dim),
            f"{i}.o": rnd(c.hidden, c.heads * c.head_dim),
            f"{i}.post_norm": norm(c.hidden),
            f"{i}.gate": rnd(c.intermediate, c.hidden),
            f"{i}.up": rnd(c.intermediate, c.hidden),
            f"{i}.down": rnd(c.hidden, c.intermediate),
        }
    return w


def _heads_of_rank(n_heads: int, tp_size: int, rank: int) -> slice:
    """The contiguous heads a rank holds; replicated (vLLM's k/v rule) when tp exceeds them."""
    groups = min(n_heads, tp_size)
    group = rank * groups // tp_size
    per = n_heads // groups
    return slice(group * per, (group + 1) * per)


def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Neox-style rotary embedding on ``[B, S, H, D]``: element-wise, exact per head."""
    half = CFG.head_dim // 2
    inv = CFG.rope_theta ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * inv[None, :]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention with plain softmax math on ``[B, S, H, D]`` (k/v with fewer heads)."""
    b, s, hq, d = q.shape
    rep = hq // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    # Head-major views whose strides follow how many heads this rank holds: the GEMMs must not
    # let that layout change the bits (the CPU provider packs its second operand for this).
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = ops.matmul.call_selected(qh, kh.transpose(-1, -2)) * d**-0.5
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = ops.softmax.call_selected(scores.masked_fill(mask, float("-inf")), -1)
    out = ops.matmul.call_selected(probs, vh).to(q.dtype)
    return out.transpose(1, 2).reshape(b, s, hq * d)


def _rank_attention(
    w: dict[str, torch.Tensor], i: int, h: torch.Tensor, tp_size: int, rank: int
) -> torch.Tensor:
    """One rank's attention output ``[B, S, its q heads * D]`` from a column-parallel qkv."""
    c, d = CFG, CFG.head_dim
    qs, ks = _heads_of_rank(c.heads, tp_size, rank), _heads_of_rank(c.kv_heads, tp_size, rank)

    def rows(heads: slice) -> slice:
        return slice(heads.start * d, heads.stop * d)

    w_qkv = torch.cat([w[f"{i}.q"][rows(qs)], w[f"{i}.k"][rows(ks)], w[f"{i}.v"][rows(ks)]])
    qkv = ops.linear.call_selected(h, w_qkv)
    nq, nk = (qs.stop - qs.start) * d, (ks.stop - ks.start) * d
    q, k, v = qkv.split([nq, nk, nk], dim=-1)
    b, s = h.shape[:2]
    q = ops.rms_norm.call_selected(q.reshape(b, s, -1, d), w[f"{i}.q_norm"], c.eps)
    k = ops.rms_norm.call_selected(k.reshape(b, s, -1, d), w[f"{i}.k_norm"], c.eps)
    positions = torch.arange(s)
    return _attention(_rope(q, positions), _rope(k, positions), v.reshape(b, s, -1, d))


def _rank_mlp(
    w: dict[str, torch.Tensor], i: int, h: torch.Tensor, tp_size: int, rank: int
) -> torch.Tensor:
    """One rank's ``silu(gate) * up`` slice from a merged column-parallel gate_up."""
    shard = CFG.intermediate // tp_size
    cols = slice(rank * shard, (rank + 1) * shard)
    gate_up = ops.linear.call_selected(h, torch.cat([w[f"{i}.gate"][cols], w[f"{i}.up"][cols]]))
    gate, up = gate_up.split(shard, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _forward(
    w: dict[str, torch.Tensor], ids: torch.Tensor, tp_size: int, row_parallel: RowParallel
) -> torch.Tensor:
    """Logits ``[B, S, vocab]`` as ``tp_size`` ranks compute them, gathered."""
    c = CFG
    vshard = c.vocab // tp_size
    embeds = []
    for r in range(tp_size):
        local = ids - r * vshard
        inside = (local >= 0) & (local < vshard)
        rows = w["embed"][r * vshard : (r + 1) * vshard][local.clamp(0, vshard - 1)]
        embeds.append(rows * inside[..., None])
    x = tp.tree_sum(embeds)
    for i in range(c.layers):
        h = ops.rms_norm.call_selected(x, w[f"{i}.in_norm"], c.eps)
        groups: dict[int, torch.Tensor] = {}  # first head -> output (replicas computed once)
        for r in range(tp_size):
            first = _heads_of_rank(c.heads, tp_size, r).start
            if first not in groups:
                groups[first] = _rank_attention(w, i, h, tp_size, r)
        attn = torch.cat([groups[first] for first in sorted(groups)], dim=-1)
        x = x + row_parallel(attn, w[f"{i}.o"], tp_size)
        h = ops.rms_norm.call_selected(x, w[f"{i}.post_norm"], c.eps)
        act = torch.cat([_rank_mlp(w, i, h, tp_size, r) for r in range(tp_size)], dim=-1)
        x = x + row_parallel(act, w[f"{i}.down"], tp_size)
    h = ops.rms_norm.call_selected(x, w["norm"], c.eps)
    return tp.emulate_column_parallel_linear(h, w["lm_head"], tp_size)


def _fixed_tree(x: torch.Tensor, weight: torch.Tensor, tp_size: int) -> torch.Tensor:
    return tp.emulate_row_parallel_linear(x, weight, tp_size)


def _naive(x: torch.Tensor, weight: torch.Tensor, tp_size: int) -> torch.Tensor:
    """What plain TP does: each rank's partial in the model dtype, summed rank after rank."""
    shard = x.shape[-1] // tp_size
    parts = [
        torch.nn.functional.linear(
            x[..., r * shard : (r + 1) * shard], weight[:, r * shard : (r + 1) * shard]
        )
        for r in range(tp_size)
    ]
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CFG.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_are_bitwise_equal_for_every_tp_size(dtype: torch.dtype) -> None:
    w, ids = _weights(dtype), _ids(2, 9, seed=1)
    with ird.batch_invariant(), ird.recording() as rec:
        logits = {size: _forward(w, ids, size, _fixed_tree) for size in TP_SIZES}
    assert set(rec.providers()["mm"]) == {"cpu"}
    for size in TP_SIZES:
        assert torch.equal(logits[size], logits[1]), f"TP={size} differs from TP=1"
    # Sanity: the sharded model is the model (float64 reference at TP=1, plain torch).
    ref = _forward({k: v.double() for k, v in w.items()}, ids, 1, _naive)
    tol = {torch.float32: 1e-4, torch.bfloat16: 1e-1}[dtype]  # bf16: 2 layers of 8-bit mantissa
    torch.testing.assert_close(logits[1].double(), ref, rtol=tol, atol=tol)


def test_sequence_logits_do_not_depend_on_the_batch_at_tp4() -> None:
    w = _weights(torch.bfloat16)
    probe, others = _ids(1, 9, seed=2), _ids(2, 9, seed=3)
    with ird.batch_invariant():
        alone = _forward(w, probe, 4, _fixed_tree)[0]
        for pos in (0, 1, 2):
            batch = torch.cat([others[:pos], probe, others[pos:]])
            assert torch.equal(_forward(w, batch, 4, _fixed_tree)[pos], alone), pos


def test_naive_partial_sums_differ_across_tp_sizes() -> None:
    """The control: without the fixed tree, the same model gives different bits per TP size."""
    w, ids = _weights(torch.bfloat16), _ids(2, 9, seed=1)
    with ird.batch_invariant():
        logits = {size: _forward(w, ids, size, _naive) for size in TP_SIZES}
    assert not all(torch.equal(logits[s], logits[1]) for s in TP_SIZES)
