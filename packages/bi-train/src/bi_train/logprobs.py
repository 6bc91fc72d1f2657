"""Token logprobs with vLLM's semantics, so trainer and rollout compare like with like."""

from __future__ import annotations

from typing import Literal

import torch

from .autograd import log_softmax_fp32

LogprobsMode = Literal["raw_logprobs", "processed_logprobs"]


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    mode: LogprobsMode = "raw_logprobs",
) -> torch.Tensor:
    """Logprob of each chosen token, as vLLM reports it.

    vLLM's default ``logprobs_mode="raw_logprobs"`` takes ``log_softmax`` of the model's raw
    logits in fp32, before temperature; ``"processed_logprobs"`` divides by the temperature
    first (and, like vLLM, treats temperature 0 as greedy, i.e. no scaling).

    Args:
        logits: ``[..., vocab]`` model outputs.
        token_ids: ``[...]`` integer ids of the tokens whose logprob is wanted.
        temperature: the sampling temperature (used only in ``processed_logprobs`` mode).
        mode: ``"raw_logprobs"`` or ``"processed_logprobs"``.

    Returns:
        ``[...]`` float32 logprobs, differentiable through the batch-invariant kernels.
    """
    if mode not in ("raw_logprobs", "processed_logprobs"):
        raise ValueError(f"mode must be 'raw_logprobs' or 'processed_logprobs', got {mode!r}")
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits shape without the "
            f"vocab dimension, {tuple(logits.shape[:-1])}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = logits.float()
    if mode == "processed_logprobs" and temperature not in (0.0, 1.0):
        x = x / temperature
    return log_softmax_fp32(x, -1).gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
