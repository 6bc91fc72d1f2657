"""Float64 reference attention and test shapes shared by the test modules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

# Qwen3-VL's vision tower: 16 heads of 72. Qwen2.5-VL's: 16 heads of 80.
QWEN3_VL_HEADS, QWEN3_VL_HEAD_SIZE = 16, 72
QWEN25_VL_HEAD_SIZE = 80

# (atol, rtol) against the float64 reference, per input dtype. Why these:
# float32: SDPA's fp32 math drifts ~1e-7 per op over <=256 keys; 2e-5 leaves room for exp().
# bfloat16: inputs are bf16 (8-bit mantissa) and the output is rounded to bf16 (relative 2^-8
#   ~ 4e-3 of values ~1-3); kernels round the probabilities to bf16 before P @ V as well.
# float16: 11-bit mantissa, same reasoning, 8x tighter than bf16.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 1e-5),
    torch.bfloat16: (3e-2, 2e-2),
    torch.float16: (4e-3, 3e-3),
}


def cu_from_lengths(lengths: Sequence[int]) -> list[int]:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu: Sequence[int] | None,
    scale: float,
) -> torch.Tensor:
    """Explicit float64 softmax(q k^T * scale) v under a block-diagonal mask.

    ``query [B, S, Hq, D]``, ``key``/``value [B, S_kv, Hkv, D]``; ``cu`` host offsets of the
    packed ``B * S`` tokens (tokens after ``cu[-1]`` get zeros) or ``None`` (one sequence per
    row). Written without SDPA, so it shares no code with the kernels under test.
    """
    b, s, hq, d = query.shape
    hkv = key.shape[2]
    group = hq // hkv
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (query, key, value))
    if cu is None:
        qs = [q64[i] for i in range(b)]
        ks = [k64[i] for i in range(b)]
        vs = [v64[i] for i in range(b)]
    else:
        qf, kf, vf = (t.reshape(b * s, t.shape[2], d) for t in (q64, k64, v64))
        spans = list(itertools.pairwise(cu))
        qs = [qf[a:e] for a, e in spans]
        ks = [kf[a:e] for a, e in spans]
        vs = [vf[a:e] for a, e in spans]
    outs = []
    for q, k, v in zip(qs, ks, vs, strict=True):
        k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]: query head h uses kv head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        probs = torch.softmax(scores, dim=-1) if scores.shape[-1] else scores
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
    if cu is None:
        return torch.stack(outs).cpu()
    out = torch.zeros(b * s, hq, d, dtype=torch.float64, device=q64.device)
    if outs:
        out[: cu[-1]] = torch.cat(outs)
    return out.reshape(b, s, hq, d).cpu()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().to("cpu", torch.float64), expected, atol=atol, rtol=rtol
    )
