"""The block-table prefetch (``AttnConfig.prefetch_table``) changes when loads start, no bits.

Paged keys, decode and chunked queries, with and without a window, split and fused: the output
with the prefetch equals the output without it, bitwise, and has no NaN (the shuffled cache's
unused blocks hold NaN, so a key read from a wrong block would show).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _attn_cases import DEVICE, INTERP, TINY_GQA, needs_kernels

from bi_triton_ascend.attention import attention_config
from bi_triton_ascend.attention._launch import launch

pytestmark = needs_kernels
DT = torch.float32 if INTERP else torch.bfloat16
BLOCK = 4 if INTERP else 16
GROUP = TINY_GQA.num_heads // TINY_GQA.num_kv_heads
LENS = [77, 5, 33, 64, 300] if INTERP else [77, 5, 1000, 4097, 300]


def _cache(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A shuffled paged cache holding every sequence of :data:`LENS`, NaN elsewhere."""
    per_seq = [-(-n // BLOCK) for n in LENS]
    blocks = sum(per_seq) + 5
    shape = (blocks, BLOCK, TINY_GQA.num_kv_heads, TINY_GQA.head_size)
    kc = torch.full(shape, float("nan"))
    vc = torch.full(shape, float("nan"))
    order = torch.randperm(blocks, generator=gen)
    table = torch.zeros(len(LENS), max(per_seq), dtype=torch.int32)
    used = 0
    for s, count in enumerate(per_seq):
        ids = order[used : used + count]
        used += count
        table[s, :count] = ids.to(torch.int32)
        kc[ids] = torch.randn(count, *shape[1:], generator=gen)
        vc[ids] = torch.randn(count, *shape[1:], generator=gen)
    return kc.to(DT).to(DEVICE), vc.to(DT).to(DEVICE), table.to(DEVICE)


@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("queries", ["decode", "chunk"])
def test_prefetch_gives_the_same_bits(queries: str, window: int | None) -> None:
    gen = torch.Generator().manual_seed(5)
    kc, vc, table = _cache(gen)
    q_lens = [1] * len(LENS) if queries == "decode" else [min(n, 37) for n in LENS]
    q = torch.randn(sum(q_lens), TINY_GQA.num_heads, TINY_GQA.head_size, generator=gen)
    q = q.to(DT).to(DEVICE)
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(LENS, dtype=torch.int32)
    base = attention_config(TINY_GQA.head_size, DT, GROUP, INTERP)
    for mode in ("fused", "split"):
        outs = []
        for prefetch in (False, True):
            outs.append(launch(
                q, kc, vc, table, lens.to(DEVICE), starts.to(DEVICE), None,
                scale=TINY_GQA.head_size**-0.5, sliding_window=window, causal=True,
                max_seq_len=max(LENS), mode=mode, out_dtype=torch.float32,
                config=dataclasses.replace(base, prefetch_table=prefetch),
            ))  # fmt: skip
        assert not outs[0].isnan().any(), mode
        assert torch.equal(outs[0], outs[1]), mode
