"""Registration table of ``mm_encoder_attention`` and what dispatch picks per mode."""

from __future__ import annotations

import pytest
import torch

import ir_dispatch as ird
import mm_encoder_ascend as mea
from ir_dispatch import PlatformKind
from mm_encoder_ascend.ops import mm_encoder_attention as op

ALL = frozenset(PlatformKind)
TABLE = {
    # provider: (platforms, priority, batch-invariant)
    "npu": (frozenset({PlatformKind.NPU}), 30, False),
    "varlen": (frozenset({PlatformKind.CUDA}), 20, True),
    "per_sequence": (ALL, 10, True),
    "native": (ALL, 0, True),  # flagged, then marked variant on every platform below
}


def test_registration_table():
    assert ird.get_op("mm_encoder_attention") is op is mea.mm_encoder_attention
    assert [i.provider for i in op.impls] == ["npu", "varlen", "per_sequence", "native"]
    for impl in op.impls:
        platforms, priority, invariant = TABLE[impl.provider]
        assert (impl.platforms, impl.priority, impl.batch_invariant) == (
            platforms,
            priority,
            invariant,
        )
        assert impl.note
    assert all(not op.impl("native").is_batch_invariant_on(p) for p in PlatformKind)


@pytest.mark.parametrize("bi", [False, True], ids=["default", "batch-invariant"])
def test_cpu_dispatch(bi):
    q = torch.randn(1, 6, 2, 64)
    with ird.batch_invariant(bi):
        assert (
            op.select(q, q, q, torch.tensor([0, 6], dtype=torch.int32), 0.1).provider
            == "per_sequence"
        )


def test_explain_names_why_each_provider_is_skipped():
    q = torch.randn(1, 6, 2, 64)
    text = str(ird.explain("mm_encoder_attention", q, q, q, None, 0.1, batch_invariant=True))
    assert "per_sequence" in text and "runs on npu" in text and "runs on cuda" in text


@pytest.mark.parametrize("heads", [(16, 16), (16, 4), (16, 1)], ids=["mha", "gqa", "mqa"])
def test_varlen_kernel_call_binds_on_meta_tensors(heads):
    """The CUDA kernel's aten call, checked for arguments and shapes without a GPU."""
    from mm_encoder_ascend._seqlens import HostSeqLens
    from mm_encoder_ascend.ops import attend_varlen

    hq, hkv = heads
    q = torch.empty(1, 50, hq, 72, device="meta", dtype=torch.bfloat16)
    k = torch.empty(1, 50, hkv, 72, device="meta", dtype=torch.bfloat16)
    cu = torch.empty(4, device="meta", dtype=torch.int32)
    out = attend_varlen(q, k, k, cu, HostSeqLens((0, 10, 40, 45)), 0.1)  # 5 padding tokens
    assert out.shape == q.shape and out.dtype == q.dtype


def test_varlen_declines_cpu_tensors_with_a_reason():
    from mm_encoder_ascend.providers import varlen_supports

    q = torch.randn(1, 4, 2, 64, dtype=torch.bfloat16)
    assert "NVIDIA GPU" in str(varlen_supports(q, q, q, None, 0.1))
