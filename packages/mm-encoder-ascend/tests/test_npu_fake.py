"""The NPU path without an NPU: a fake ``torch_npu`` checks every argument of the unpad kernel."""

from __future__ import annotations

import pytest
import torch
from _mm_reference import assert_close, cu_from_lengths, reference

import mm_encoder_ascend as mea


@pytest.mark.parametrize(
    ("head_size", "kernel_head_size"), [(64, 64), (72, 128), (80, 128), (128, 128), (40, 40)]
)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_kernel_arguments(fake_npu, head_size, kernel_head_size, heads):
    hq, hkv = heads
    lengths = [6, 0, 11, 1]  # a padded (empty) image in the middle
    cu = cu_from_lengths(lengths)
    attn = mea.MMEncoderAttention(hq, head_size, num_kv_heads=hkv, provider="npu")
    q = torch.randn(1, cu[-1], hq, head_size, dtype=torch.bfloat16)
    k, v = (torch.randn(1, cu[-1], hkv, head_size, dtype=torch.bfloat16) for _ in range(2))
    out = attn(q, k, v, cu_seqlens=mea.to_device_cu_seqlens(cu, "cpu"))

    (call,) = fake_npu.calls
    tokens = cu[-1]
    assert call.query.shape == (tokens, hq, kernel_head_size)
    assert call.key.shape == call.value.shape == (tokens, hkv, kernel_head_size)
    assert call.num_heads == hq and call.num_kv_heads == hkv
    assert call.seq_len.device.type == "cpu" and call.seq_len.dtype == torch.int32
    assert call.seq_len.tolist() == [6, 11, 1]  # empty images are not passed
    assert call.scale_value == head_size**-0.5  # from the unpadded head size
    assert call.out.shape == (tokens, hq, kernel_head_size) and call.out.dtype == torch.bfloat16
    if kernel_head_size != head_size:  # zero padding: the kernel sees the data, then zeros
        assert torch.equal(call.query[..., :head_size], q[0])
        assert not call.query[..., head_size:].any() and not call.value[..., head_size:].any()
    assert out.shape == q.shape
    assert_close(out, reference(q, k, v, cu, head_size**-0.5), torch.bfloat16)


def test_3d_inputs_and_custom_scale(fake_npu):
    attn = mea.MMEncoderAttention(2, 80, scale=0.3, provider="npu")
    q, k, v = (torch.randn(1, 10, 160, dtype=torch.float16) for _ in range(3))
    out = attn(q, k, v, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32))
    assert out.shape == (1, 10, 160)
    assert fake_npu.calls[0].scale_value == 0.3
    expected = reference(*(t.unflatten(2, (2, 80)) for t in (q, k, v)), [0, 4, 10], 0.3)
    assert_close(out.unflatten(2, (2, 80)), expected, torch.float16)


def test_equal_lengths_without_cu_seqlens(fake_npu):
    attn = mea.MMEncoderAttention(2, 64, provider="npu")
    q, k, v = (torch.randn(3, 5, 2, 64, dtype=torch.bfloat16) for _ in range(3))
    attn(q, k, v)
    assert fake_npu.calls[0].seq_len.tolist() == [5, 5, 5]
    assert fake_npu.calls[0].query.shape == (15, 2, 64)


def test_trailing_padding_tokens_are_not_sent_and_come_back_zero(fake_npu):
    attn = mea.MMEncoderAttention(2, 72, provider="npu")
    q, k, v = (torch.randn(1, 16, 2, 72, dtype=torch.bfloat16) for _ in range(3))
    out = attn(q, k, v, cu_seqlens=torch.tensor([0, 7, 12, 12], dtype=torch.int32))
    assert fake_npu.calls[0].query.shape[0] == 12
    assert not out[0, 12:].any()


def test_fp32_is_declined_not_silently_converted(fake_npu):
    attn = mea.MMEncoderAttention(2, 64, provider="npu")
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(ValueError, match="fp16/bf16"):
        attn(q, q, q, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
    assert not fake_npu.calls


def test_without_torch_npu_the_provider_declines(monkeypatch):
    import sys

    from mm_encoder_ascend import _platform

    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.setattr(_platform.ird_platform, "_import_torch_npu", lambda: False)
    attn = mea.MMEncoderAttention(2, 64, provider="npu")
    q = torch.randn(1, 4, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="torch_npu is not importable"):
        attn(q, q, q)
    with pytest.raises(ImportError, match="torch-npu"):
        _platform.torch_npu()
