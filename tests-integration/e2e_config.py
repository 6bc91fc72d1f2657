"""Sizes and settings shared by the CPU integration tests."""

from __future__ import annotations

import os

from vllm_bi_plugin.models import Qwen3Shape

# The floor: hidden >= 1024, >= 4 layers. A 16k vocabulary keeps the CPU lm_head cheap.
SHAPE = Qwen3Shape(hidden_size=1024, num_layers=4, vocab_size=16384)
# Batches straddle the CPU GEMM's row chunk and vLLM's scheduling; the needle goes at the
# front, middle and back of each.
BATCH_SIZES = [2, 9, 64]
ENGINE_TIMEOUT_S = 900.0


def child_env(batch_invariant: bool, **extra: str) -> dict[str, str]:
    """The environment of a child vLLM process: one process, the switch set or removed."""
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.pop("VLLM_BATCH_INVARIANT", None)
    if batch_invariant:
        env["VLLM_BATCH_INVARIANT"] = "1"
    env.update(extra)
    return env
