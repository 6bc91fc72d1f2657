"""vLLM's reported logprobs through ir-dispatch's ``log_softmax``: the trainer's kernel.

vLLM 0.26's GPU model runner (V2) computes every logprob it reports, of sampled and of prompt
tokens, in its own Triton kernel (``compute_token_logprobs`` in
``vllm/v1/worker/gpu/sample/logprob.py``: per row, a max and a sum of exponentials over
1024-wide blocks). It never reaches ``torch.log_softmax``, so the plugin's aten override does
not see it. The kernel is row-local, hence batch-invariant, but it adds in another order than
the kit's ``log_softmax``: a trainer scoring with the kit (``bi-train``) differed from the
rollout in the last bit on 38275 of 131072 tokens (max 1.9e-6; H200, vLLM 0.26, after every
activation was bitwise equal). Serving vLLM's logprobs from the kit gives rollout and trainer
one kernel for this op as well.

The replacement materializes fp32 ``log_softmax`` rows, at most ``ROWS_PER_CALL`` at a time
(rows are independent, so the blocking changes no bits): vLLM's kernel writes only the
requested entries. It passes the logits in their own dtype with ``dtype=torch.float32`` rather
than copying them to fp32 first (an fp32 copy of 256 x 151936 logits per decode step): the
kit's softmax kernels give the same bits either way, so a trainer that upcasts its logits first
(``bi_train.token_logprobs``) still matches.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _patch
from ._providers import covered
from ._report import Report
from ._vllm_compat import GPU_LOGPROB_FUNCTION, GPU_LOGPROB_MODULE, import_module

ROWS_PER_CALL = 1024


def compute_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits.float())`` at ``token_ids``, per row: vLLM's contract.

    Args:
        logits: ``[rows, vocab]`` logits (any float dtype; upcast to fp32 as vLLM does).
        token_ids: ``[rows, n]`` ids whose logprob is wanted.

    Returns:
        ``[rows, n]`` float32 logprobs.
    """
    import ir_dispatch

    ids = token_ids.to(torch.int64)
    out = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)
    for beg in range(0, logits.shape[0], ROWS_PER_CALL):
        end = beg + ROWS_PER_CALL
        rows = ir_dispatch.ops.log_softmax(logits[beg:end], -1, torch.float32)
        out[beg:end] = rows.gather(-1, ids[beg:end])
    return out


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
    if not covered(("log_softmax",), platform):
        report.keep(f"{what} (no batch-invariant {platform} log_softmax kernel)")
        return False
    _patch.patch_attr(module, GPU_LOGPROB_FUNCTION, compute_token_logprobs)
    report.replaced(what, "ir_dispatch::log_softmax")
    return True
