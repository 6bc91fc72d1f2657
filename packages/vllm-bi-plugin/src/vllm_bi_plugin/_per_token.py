"""Per-token attention metadata: every query token becomes its own single-query request.

Kept apart from :mod:`vllm_bi_plugin.cpu_attention` (which imports vLLM) so it can be tested and
reused without vLLM.
"""

from __future__ import annotations

import torch


def per_token_requests(
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor, num_reqs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split every request into one single-query request per query token.

    Args:
        query_start_loc: ``[>= num_reqs + 1]`` int32 offsets of each request's queries.
        seq_lens: ``[>= num_reqs]`` total tokens (cached + new) per request.
        block_table: ``[>= num_reqs, max_blocks]`` KV block ids per request.
        num_reqs: requests actually scheduled (the tensors may carry padding rows).

    Returns:
        ``(query_start_loc, seq_lens, block_table)`` with one row per query token: offsets
        ``0..T``, each token's own causal length, and its request's block row.

    Raises:
        ValueError: a request has more queries than tokens.
    """
    qsl = query_start_loc[: num_reqs + 1]
    q_lens = qsl[1:] - qsl[:-1]
    lens = seq_lens[:num_reqs]
    if bool((q_lens > lens).any()):
        raise ValueError(
            f"seq_lens must be >= the query count of each request, got seq_lens={lens.tolist()} "
            f"and query lengths {q_lens.tolist()}"
        )
    num_tokens = int(qsl[-1].item()) if num_reqs else 0
    owner = torch.repeat_interleave(
        torch.arange(num_reqs, device=qsl.device), q_lens.to(torch.long)
    )
    index_in_request = torch.arange(num_tokens, device=qsl.device) - qsl[:-1].to(torch.long)[owner]
    cached = (lens - q_lens).to(torch.long)
    token_seq_lens = (cached[owner] + index_in_request + 1).to(seq_lens.dtype)
    token_qsl = torch.arange(num_tokens + 1, dtype=query_start_loc.dtype, device=qsl.device)
    return token_qsl, token_seq_lens, block_table[:num_reqs][owner]
