# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""``token_logprobs``: fp32 ``log_softmax`` of each row at a few token ids, rows not written.

Bitwise equal to ``log_softmax(logits, -1, torch.float32).gather(-1, token_ids)`` of
:mod:`.softmax`, the pair a trainer differentiates through, at any batch size. Long rows
(vocabularies) run :mod:`.softmax`'s chunk-statistics kernel, then one program per row
combines the statistics with the same helper, block and warp count as ``_chunk_write_kernel``
(same tree, same bits) and evaluates that kernel's expression at the ``n`` requested logits
only: no ``[rows, vocab]`` fp32 matrix (600 MB at 1024 x 151936) is written. Rows up to
``softmax.ONE_PASS_MAX`` long go through ``log_softmax`` and a gather: the one-pass kernel's
tree cannot be reproduced without reading the whole row anyway.

An id outside ``[0, vocab)`` gives NaN in its entry (the other entries of the row are
unaffected) instead of an error: checking the range on the host would synchronize with the
device at every decode step.
"""

from __future__ import annotations

import importlib

import torch
import triton
import triton.language as tl

from .._checks import (
    INDEX_DTYPES,
    check_dim,
    check_float,
    check_same_device,
    check_tensor,
)
from .._launch_cache import launch_kernel
from .softmax import combine_chunk_stats

# The module, not ``ops.softmax`` (the package re-exports the function under that name): its
# ONE_PASS_MAX and CHUNK are read at call time, so the tests' smaller values reach both ops.
_softmax = importlib.import_module(".softmax", __package__)

OP = "token_logprobs"
# Ids handled per loop step of a row's program (vLLM asks for 1 + num_logprobs per row).
MAX_BLOCK_N = 1024


@triton.jit
def _gather_kernel(
    x_ptr, stats_ptr, ids_ptr, out_ptr, L, N, stride_xm, stride_xl, stride_im, stride_in,
    n_chunks, ROUND_TO: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid ``(M,)``: ``_chunk_write_kernel``'s ``LOG`` output of one row, at its ``N`` ids."""
    row64 = tl.cast(tl.program_id(0), tl.int64)
    row_max, total = combine_chunk_stats(stats_ptr, row64, n_chunks, BLOCK_C)
    for start in range(0, N, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < N
        ids = tl.load(ids_ptr + row64 * stride_im + j * stride_in, mask=j_ok, other=0)
        ids = ids.to(tl.int64)
        ok = j_ok & (ids >= 0) & (ids < L)
        x = tl.load(x_ptr + row64 * stride_xm + ids * stride_xl, mask=ok, other=float("nan"))
        shifted = x.to(ROUND_TO).to(tl.float32) - row_max
        y = shifted - tl.log(total)
        tl.store(out_ptr + row64 * N + j, y, mask=j_ok)


def _check(logits: object, token_ids: object) -> None:
    """Raise naming the argument: 2-D float logits, 2-D int ids, same device and row count."""
    logits = check_tensor(OP, "logits", logits)
    token_ids = check_tensor(OP, "token_ids", token_ids)
    check_dim(OP, "logits", logits, 2)
    check_float(OP, "logits", logits)
    check_dim(OP, "token_ids", token_ids, 2)
    check_float(OP, "token_ids", token_ids, INDEX_DTYPES)
    check_same_device(OP, "logits", logits, "token_ids", token_ids)
    if token_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{OP}: token_ids must have one row per logits row ({logits.shape[0]}); "
            f"got shape {tuple(token_ids.shape)}"
        )


def _via_rows(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Short rows: the one-pass ``log_softmax``, gathered; out-of-range ids give NaN."""
    vocab = logits.shape[1]
    ids = token_ids.long()
    if vocab == 0:
        return torch.full(ids.shape, float("nan"), dtype=torch.float32, device=logits.device)
    in_range = (ids >= 0) & (ids < vocab)
    rows = _softmax.log_softmax(logits, -1, torch.float32)
    picked = rows.gather(-1, ids.clamp(0, vocab - 1))
    return torch.where(in_range, picked, float("nan"))


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1, torch.float32).gather(-1, token_ids)``, bitwise, rows unwritten.

    Args:
        logits: ``[rows, vocab]`` bf16/fp16/fp32, any strides.
        token_ids: ``[rows, n]`` int32/int64 on the same device, any strides; an id outside
            ``[0, vocab)`` gives NaN in its entry.

    Returns:
        ``[rows, n]`` float32 logprobs.
    """
    _check(logits, token_ids)
    rows, vocab = logits.shape
    n = token_ids.shape[1]
    if rows == 0 or n == 0:
        return torch.empty((rows, n), dtype=torch.float32, device=logits.device)
    if vocab <= _softmax.ONE_PASS_MAX:  # read at call time: tests shrink it
        return _via_rows(logits, token_ids)
    round_to = _softmax.rounding_dtype(logits.dtype, torch.float32)
    stats = _softmax.chunk_stats(logits, round_to)
    n_chunks = stats.shape[1]
    out = torch.empty((rows, n), dtype=torch.float32, device=logits.device)
    launch_kernel(
        _gather_kernel, (rows,),
        logits, stats, token_ids, out, vocab, n, *logits.stride(), *token_ids.stride(), n_chunks,
        ROUND_TO=round_to, BLOCK_C=_softmax.block_c(n_chunks),
        BLOCK_N=min(MAX_BLOCK_N, triton.next_power_of_2(n)), num_warps=_softmax.CHUNK_WARPS,
    )  # fmt: skip
    return out
