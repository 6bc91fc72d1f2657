"""vLLM's reported logprobs through ir-dispatch's ``token_logprobs``: the trainer's kernel.

vLLM 0.26's GPU model runner (V2) computes every logprob it reports, of sampled and of prompt
tokens, in its own Triton kernel (``compute_token_logprobs`` in
``vllm/v1/worker/gpu/sample/logprob.py``: per row, a max and a sum of exponentials over
1024-wide blocks). It never reaches ``torch.log_softmax``, so the plugin's aten override does
not see it. The kernel is row-local, hence batch-invariant, but it adds in another order than
the kit's ``log_softmax``: a trainer scoring with the kit (``bi-train``) differed from the
rollout in the last bit on 38275 of 131072 tokens (max 1.9e-6; H200, vLLM 0.26, after every
activation was bitwise equal). Serving vLLM's logprobs from the kit gives rollout and trainer
one kernel for this op as well.

The replacement is ir-dispatch's ``token_logprobs``: bitwise ``log_softmax(logits, -1,
torch.float32).gather(-1, ids)`` of the serving provider's ``log_softmax`` (the trainer's pair),
computed at the requested entries only: no fp32 ``[rows, vocab]`` rows are materialized (they
cost 5-7 ms of a 190 ms H100 rollout step and up to 600 MB at 1024 x 151936). The logits go in
their own dtype rather than as an fp32 copy: the kit's softmax kernels give the same bits either
way, so a trainer that upcasts its logits first (``bi_train.token_logprobs``) still matches.
Where a platform has a ``log_softmax`` kernel but no ``token_logprobs`` one, ir-dispatch's
composite computes exactly that pair.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _patch
from ._providers import covered
from ._report import Report
from ._vllm_compat import GPU_LOGPROB_FUNCTION, GPU_LOGPROB_MODULE, import_module


def compute_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits.float())`` at ``token_ids``, per row: vLLM's contract.

    Args:
        logits: ``[rows, vocab]`` logits (any float dtype; upcast to fp32 as vLLM does).
        token_ids: ``[rows, n]`` ids whose logprob is wanted.

    Returns:
        ``[rows, n]`` float32 logprobs.
    """
    import ir_dispatch

    result: torch.Tensor = ir_dispatch.ops.token_logprobs(logits, token_ids)
    return result


def install(platform: str, report: Report) -> bool:
    """Route vLLM's token logprobs to ir-dispatch where the runner has the kernel to replace."""
    module: Any
    try:
        module = import_module(GPU_LOGPROB_MODULE)
    except ImportError:
        return False  # another vLLM layout: logprobs go through torch.log_softmax (overridden)
    if not hasattr(module, GPU_LOGPROB_FUNCTION):
        return False
    what = "token logprobs (vLLM's Triton _topk_log_softmax_kernel, sampled and prompt tokens)"
    # token_logprobs has ir-dispatch's composite (log_softmax + gather) wherever log_softmax has
    # a kernel, so that kernel is what decides.
    if not covered(("log_softmax",), platform):
        report.keep(f"{what} (no batch-invariant {platform} log_softmax kernel)")
        return False
    _patch.patch_attr(module, GPU_LOGPROB_FUNCTION, compute_token_logprobs)
    report.replaced(what, "ir_dispatch::token_logprobs")
    return True
