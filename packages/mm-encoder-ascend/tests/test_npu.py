"""Ascend NPU (never run: no NPU was available). Accuracy and invariance of the unpad kernel."""

from __future__ import annotations

import pytest
import torch
from _mm_reference import assert_close, cu_from_lengths, reference

import mm_encoder_ascend as mea
from mm_encoder_ascend.ops import mm_encoder_attention as op

pytestmark = pytest.mark.npu


@pytest.mark.parametrize("head_size", [64, 72, 80, 128])
@pytest.mark.parametrize("heads", [(16, 16), (16, 4)], ids=["mha", "gqa"])
def test_unpad_matches_float64_reference(head_size, heads):
    cu = cu_from_lengths([1, 100, 1024, 333])
    q = torch.randn(1, cu[-1], heads[0], head_size, dtype=torch.bfloat16, device="npu")
    k, v = (
        torch.randn(1, cu[-1], heads[1], head_size, dtype=torch.bfloat16, device="npu")
        for _ in range(2)
    )
    out = op.impl("npu").fn(q, k, v, mea.to_device_cu_seqlens(cu, "npu"), head_size**-0.5)
    assert_close(out, reference(q, k, v, cu, head_size**-0.5), torch.bfloat16)


@pytest.mark.parametrize("count", [2, 3, 16, 17])
def test_unpad_batch_invariance(count):
    """Decides whether the ``npu`` provider may be flagged batch-invariant."""
    probe = torch.randn(1, 700, 16, 80, dtype=torch.bfloat16, device="npu")
    others = torch.randn(1, 300 * (count - 1), 16, 80, dtype=torch.bfloat16, device="npu")
    packed = torch.cat([others, probe], dim=1)
    cu = cu_from_lengths([300] * (count - 1) + [700])
    alone = op.impl("npu").fn(probe, probe, probe, mea.to_device_cu_seqlens([0, 700], "npu"), 0.1)
    batched = op.impl("npu").fn(packed, packed, packed, mea.to_device_cu_seqlens(cu, "npu"), 0.1)
    assert torch.equal(batched[0, cu[-2] :], alone[0])
