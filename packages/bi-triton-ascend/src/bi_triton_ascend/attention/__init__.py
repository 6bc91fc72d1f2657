"""Batch-invariant attention over vLLM's paged KV cache and packed varlen sequences.

Keys are walked in the chunks of a fixed grid of absolute positions (:func:`chunk_grid`: short
chunks, then long ones from a fixed position on) and the chunk partials are folded in chunk
order, so a query row gets the same bits decoded or prefilled, with any prompt chunking or
prefix cache, alone or in any batch, and from the trainer's :func:`varlen_attention`. Decode at
small batch splits the keys over many programs (fast where a single-split kernel idles the
device) without changing a bit.

Example:
    >>> from bi_triton_ascend import attention
    >>> attention.providers.register()          # ir-dispatch op ``paged_attention``
    >>> out = attention.paged_attention(q, k_cache, v_cache, block_table, seq_lens,
    ...                                 query_start_loc, scale=128 ** -0.5)
"""

from . import providers
from .api import paged_attention, paged_decode, varlen_attention, varlen_attention_backward
from .config import AttnConfig, ChunkGrid, attention_config, chunk_grid, kv_chunk_size
from .op import paged_attention as paged_attention_op
from .op import reference_attention

__all__ = [
    "AttnConfig",
    "ChunkGrid",
    "attention_config",
    "chunk_grid",
    "kv_chunk_size",
    "paged_attention",
    "paged_attention_op",
    "paged_decode",
    "providers",
    "reference_attention",
    "varlen_attention",
    "varlen_attention_backward",
]
