"""NVIDIA GPU: accuracy, bitwise invariance across images, and no host syncs after layer 0."""

from __future__ import annotations

import random

import pytest
import torch
from _mm_reference import (
    QWEN3_VL_HEAD_SIZE,
    QWEN3_VL_HEADS,
    assert_close,
    cu_from_lengths,
    reference,
)

import ir_dispatch as ird
import mm_encoder_ascend as mea
from mm_encoder_ascend.ops import mm_encoder_attention as op

pytestmark = pytest.mark.cuda

PROVIDERS = ["varlen", "per_sequence"]
HEADS = [
    pytest.param((16, 16), id="mha"),
    pytest.param((16, 4), id="gqa"),
    pytest.param((16, 1), id="mqa"),
]
LAYERS = 24


def _qkv(tokens: int, hq: int, hkv: int, d: int, dtype: torch.dtype):
    """q/k/v as non-contiguous views of one packed projection, like Qwen's vision attention."""
    qkv = torch.randn(1, tokens, hq + 2 * hkv, d, dtype=dtype, device="cuda")
    return qkv[:, :, :hq], qkv[:, :, hq : hq + hkv], qkv[:, :, hq + hkv :]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_size", [64, 72, 80, 128])
@pytest.mark.parametrize("heads", HEADS)
def test_matches_float64_reference(provider, dtype, head_size, heads):
    lengths = [1, 100, 1024, 333, 0, 64]
    cu = cu_from_lengths(lengths)
    q, k, v = _qkv(cu[-1], *heads, head_size, dtype)
    out = op.impl(provider).fn(q, k, v, mea.to_device_cu_seqlens(cu, "cuda"), head_size**-0.5)
    assert out.shape == q.shape and out.device.type == "cuda"
    assert_close(out, reference(q, k, v, cu, head_size**-0.5), dtype)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_equal_lengths_and_padding(provider):
    q, k, v = (torch.randn(3, 50, 16, 72, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    assert_close(
        op.impl(provider).fn(q, k, v, None, 0.1), reference(q, k, v, None, 0.1), torch.bfloat16
    )
    cu = [0, 20, 20, 130]  # an empty image and 20 trailing padding tokens
    out = op.impl(provider).fn(q, k, v, torch.tensor(cu, dtype=torch.int32, device="cuda"), 0.1)
    assert not out.reshape(150, 16, 72)[130:].any()
    assert_close(out, reference(q, k, v, cu, 0.1), torch.bfloat16)


PROBE_LENGTHS = [1, 63, 64, 65, 127, 128, 129, 1024, 1500]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("heads", HEADS[:2])
@pytest.mark.parametrize("where", ["front", "middle", "back"])
@pytest.mark.parametrize("count", [1, 2, 3, 15, 16, 17])
def test_image_output_independent_of_other_images(provider, heads, where, count):
    rng = random.Random(count * 31 + len(where))
    hq, hkv = heads
    d = QWEN3_VL_HEAD_SIZE
    width = hq + 2 * hkv
    for length in PROBE_LENGTHS:
        probe = torch.randn(length, width, d, dtype=torch.bfloat16, device="cuda")
        others = [
            torch.randn(rng.randint(1, 2048), width, d, dtype=torch.bfloat16, device="cuda")
            for _ in range(count - 1)
        ]
        pos = {"front": 0, "middle": (count - 1) // 2, "back": count - 1}[where]
        images = [*others[:pos], probe, *others[pos:]]
        cu = cu_from_lengths([t.shape[0] for t in images])
        packed = torch.cat(images)[None]

        def run(x: torch.Tensor, offsets: list[int]) -> torch.Tensor:
            q, k, v = x[:, :, :hq], x[:, :, hq : hq + hkv], x[:, :, hq + hkv :]
            return op.impl(provider).fn(q, k, v, mea.to_device_cu_seqlens(offsets, "cuda"), d**-0.5)

        alone = run(probe[None], [0, length])
        batched = run(packed, cu)
        got = batched[0, cu[pos] : cu[pos + 1]]
        assert torch.equal(got, alone[0]), (
            f"{provider}: probe of {length} tokens at {where} of {count} images differs by "
            f"{(got.float() - alone[0].float()).abs().max().item():.3g}"
        )


@pytest.mark.parametrize("provider", [*PROVIDERS, None], ids=[*PROVIDERS, "dispatch"])
@pytest.mark.parametrize("handover", [True, False], ids=["host-offsets", "device-only"])
def test_no_sync_after_layer_zero(provider, handover):
    """24 layers; with the host offsets handed over not even layer 0 synchronises."""
    host = cu_from_lengths([1024, 333, 2048, 64])
    cu = (
        mea.to_device_cu_seqlens(host, "cuda")
        if handover
        else torch.tensor(host, dtype=torch.int32, device="cuda")
    )
    layers = [
        mea.MMEncoderAttention(QWEN3_VL_HEADS, QWEN3_VL_HEAD_SIZE, provider=provider)
        for _ in range(LAYERS)
    ]
    x = torch.randn(
        1, host[-1], QWEN3_VL_HEADS * QWEN3_VL_HEAD_SIZE, dtype=torch.bfloat16, device="cuda"
    )
    torch.cuda.synchronize()
    with mea.encoder_forward() as fwd:
        if not handover:
            x = x + layers[0](x, x, x, cu_seqlens=cu)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for layer in layers[0 if handover else 1 :]:
                x = x + layer(x, x, x, cu_seqlens=cu)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert fwd.host_reads == (0 if handover else 1)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("bi", [False, True], ids=["default", "batch-invariant"])
def test_dispatch_picks_varlen(bi):
    q = torch.randn(1, 8, 16, 72, dtype=torch.bfloat16, device="cuda")
    cu = torch.tensor([0, 8], dtype=torch.int32, device="cuda")
    with ird.batch_invariant(bi):
        assert op.select(q, q, q, cu, 0.1).provider == "varlen"
    assert op.select(q.float(), q.float(), q.float(), cu, 0.1).provider == "per_sequence"
