"""Accuracy against a float64 reference and bitwise batch invariance across images (CPU)."""

from __future__ import annotations

import random

import pytest
import torch
from _mm_reference import assert_close, cu_from_lengths, reference

import ir_dispatch as ird
import mm_encoder_ascend as mea
from mm_encoder_ascend.ops import mm_encoder_attention as op

HEAD_SIZES = [64, 72, 80, 128]
IMAGE_SETS = [
    pytest.param([7], id="1-image"),
    pytest.param([5, 17, 1], id="3-images-one-token"),
    pytest.param([33, 64, 2, 65, 20], id="5-images"),
]
HEADS = [
    pytest.param((4, 4), id="mha"),
    pytest.param((4, 2), id="gqa"),
    pytest.param((4, 1), id="mqa"),
]
CPU_PROVIDERS = ["per_sequence", "native", "npu"]


def _qkv(tokens: int, hq: int, hkv: int, d: int, dtype: torch.dtype, batch: int = 1):
    q = torch.randn(batch, tokens, hq, d, dtype=dtype)
    k = torch.randn(batch, tokens, hkv, d, dtype=dtype)
    v = torch.randn(batch, tokens, hkv, d, dtype=dtype)
    return q, k, v


def _run(provider: str, *args):
    return op.impl(provider).fn(*args)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("lengths", IMAGE_SETS)
@pytest.mark.parametrize("head_size", HEAD_SIZES)
def test_matches_float64_reference(provider, heads, lengths, head_size, request):
    dtype = torch.float32 if provider != "npu" else torch.bfloat16
    if provider == "npu":
        request.getfixturevalue("fake_npu")
    hq, hkv = heads
    cu = cu_from_lengths(lengths)
    q, k, v = _qkv(cu[-1], hq, hkv, head_size, dtype)
    scale = head_size**-0.5
    out = _run(provider, q, k, v, torch.tensor(cu, dtype=torch.int32), scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, reference(q, k, v, cu, scale), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_size", HEAD_SIZES)
def test_half_precision_per_sequence(dtype, head_size):
    cu = cu_from_lengths([9, 40, 3])
    q, k, v = _qkv(cu[-1], 4, 2, head_size, dtype)
    out = _run("per_sequence", q, k, v, torch.tensor(cu, dtype=torch.int32), 0.1)
    assert_close(out, reference(q, k, v, cu, 0.1), dtype)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_equal_lengths_without_cu_seqlens(provider, request):
    dtype = torch.float32 if provider != "npu" else torch.bfloat16
    if provider == "npu":
        request.getfixturevalue("fake_npu")
    q, k, v = _qkv(11, 4, 2, 72, dtype, batch=3)
    out = _run(provider, q, k, v, None, 0.2)
    assert out.shape == q.shape
    assert_close(out, reference(q, k, v, None, 0.2), dtype)


@pytest.mark.parametrize("provider", ["per_sequence", "native"])
def test_key_longer_than_query_without_cu_seqlens(provider):
    q = torch.randn(2, 5, 4, 64)
    k, v = torch.randn(2, 9, 2, 64), torch.randn(2, 9, 2, 64)
    out = _run(provider, q, k, v, None, 0.125)
    assert_close(out, reference(q, k, v, None, 0.125), torch.float32)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_padded_cu_seqlens_and_trailing_tokens(provider, request):
    """vLLM pads cu_seqlens with repeated offsets (empty images) and may pad the tokens."""
    dtype = torch.float32 if provider != "npu" else torch.bfloat16
    if provider == "npu":
        request.getfixturevalue("fake_npu")
    cu = [0, 6, 6, 19, 19, 19]
    q, k, v = _qkv(24, 4, 4, 80, dtype)  # 5 tokens after cu[-1]
    out = _run(provider, q, k, v, torch.tensor(cu, dtype=torch.int32), 0.1)
    assert torch.equal(out[0, 19:], torch.zeros_like(out[0, 19:]))
    assert_close(out, reference(q, k, v, cu, 0.1), dtype)


@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_no_tokens(provider, request):
    if provider == "npu":
        request.getfixturevalue("fake_npu")
    q, k, v = _qkv(0, 2, 2, 64, torch.bfloat16)
    out = _run(provider, q, k, v, torch.tensor([0], dtype=torch.int32), 0.1)
    assert out.shape == q.shape


def test_cu_seqlens_past_the_tokens_raises():
    q, k, v = _qkv(10, 2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens ends at 12"):
        _run("per_sequence", q, k, v, torch.tensor([0, 12], dtype=torch.int32), 0.1)


@pytest.mark.parametrize(
    ("cu", "match"),
    [
        pytest.param([1, 5], "start at 0", id="no-leading-zero"),
        pytest.param([0, 5, 3], "non-decreasing", id="decreasing"),
    ],
)
def test_bad_cu_seqlens_values_raise(cu, match):
    q, k, v = _qkv(10, 2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=match):
        _run("per_sequence", q, k, v, torch.tensor(cu, dtype=torch.int32), 0.1)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        pytest.param(((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2)), "value must be 4-D", id="3d-value"),
        pytest.param(((1, 4, 3, 8), (1, 4, 2, 8), (1, 4, 2, 8)), "multiple of", id="heads"),
        pytest.param(((1, 4, 2, 8), (1, 4, 2, 4), (1, 4, 2, 4)), "key must be", id="head-size"),
        pytest.param(((1, 4, 2, 8), (1, 4, 2, 8), (1, 5, 2, 8)), "same shape", id="kv-mismatch"),
    ],
)
def test_bad_shapes_raise(shapes, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        _run("per_sequence", q, k, v, None, 0.1)


# ---------------------------------------------------------------- batch invariance (bitwise)
# Probe lengths straddle the CPU flash-attention q/kv split sizes (32, 64; 256 from 768 on).
PROBE_LENGTHS = [1, 31, 32, 33, 64, 65, 129]
IMAGE_COUNTS = [1, 2, 3, 15, 16, 17]


def _batch_with_probe(probe: torch.Tensor, count: int, where: str, rng: random.Random):
    """Pack ``count`` images (lengths 1..48), the probe at front/middle/back."""
    others = [
        torch.randn(rng.randint(1, 48), *probe.shape[1:], dtype=probe.dtype)
        for _ in range(count - 1)
    ]
    pos = {"front": 0, "middle": (count - 1) // 2, "back": count - 1}[where]
    images = [*others[:pos], probe, *others[pos:]]
    return torch.cat(images), cu_from_lengths([t.shape[0] for t in images]), pos


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("where", ["front", "middle", "back"])
@pytest.mark.parametrize("count", IMAGE_COUNTS)
def test_image_output_independent_of_other_images(count, where, dtype):
    rng = random.Random(count * 7 + len(where))
    hq, hkv, d = 4, 2, 72
    attn = mea.MMEncoderAttention(hq, d, num_kv_heads=hkv)
    for length in PROBE_LENGTHS:
        # q, k and v of each image packed side by side, as a qkv projection makes them.
        probe = torch.randn(length, hq + 2 * hkv, d, dtype=dtype)
        packed, cu, pos = _batch_with_probe(probe, count, where, rng)
        with ird.batch_invariant():
            alone = attn(
                *_split(probe[None]), cu_seqlens=torch.tensor([0, length], dtype=torch.int32)
            )
            batched = attn(*_split(packed[None]), cu_seqlens=torch.tensor(cu, dtype=torch.int32))
        got = batched[0, cu[pos] : cu[pos + 1]]
        assert torch.equal(got, alone[0]), f"probe of {length} tokens among {count} images"


def _split(qkv: torch.Tensor):
    """Non-contiguous q/k/v views of one packed [B, S, Hq + 2 Hkv, D] tensor."""
    return qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:8]


def test_batch_invariant_mode_picks_per_sequence_on_cpu():
    q, k, v = _qkv(8, 2, 2, 64, torch.float32)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    with ird.batch_invariant(), ird.recording() as rec:
        op.call_selected(q, k, v, cu, 0.1)
    assert rec.providers() == {"mm_encoder_attention": ["per_sequence"]}
    assert not op.impl("native").is_batch_invariant_on(ird.PlatformKind.CPU)


def test_native_reference_is_batch_variant_so_the_check_can_fail():
    """The masked native SDPA changes an image's bits when other images join: why it is flagged."""
    differs = []
    for length in (31, 33, 65, 129):
        probe, others = torch.randn(1, length, 4, 72), torch.randn(1, 300, 4, 72)
        packed = torch.cat([others, probe], dim=1)
        alone = _run("native", probe, probe, probe, torch.tensor([0, length]), 0.1)
        batched = _run("native", packed, packed, packed, torch.tensor([0, 300, 300 + length]), 0.1)
        differs.append(not torch.equal(alone[0], batched[0, 300:]))
    assert any(differs)
