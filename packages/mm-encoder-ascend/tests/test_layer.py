"""The layer: vLLM's constructor/forward, shapes in and out, argument errors, compile."""

from __future__ import annotations

import pytest
import torch
from _mm_reference import QWEN3_VL_HEAD_SIZE, QWEN3_VL_HEADS, assert_close, reference

import mm_encoder_ascend as mea
from mm_encoder_ascend.ops import mm_encoder_attention as op


def _cu(*lengths: int) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("heads", [(4, None), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_3d_in_3d_out(heads):
    hq, hkv = heads
    kv = hq if hkv is None else hkv
    attn = mea.MMEncoderAttention(hq, 72, num_kv_heads=hkv)
    q = torch.randn(1, 20, hq * 72)
    k, v = torch.randn(1, 20, kv * 72), torch.randn(1, 20, kv * 72)
    cu = _cu(5, 15)
    out = attn(q, k, v, cu_seqlens=cu)
    assert out.shape == (1, 20, hq * 72)
    expected = reference(
        q.unflatten(2, (hq, 72)),
        k.unflatten(2, (kv, 72)),
        v.unflatten(2, (kv, 72)),
        cu.tolist(),
        72**-0.5,
    )
    assert_close(out.unflatten(2, (hq, 72)), expected, torch.float32)


def test_4d_in_4d_out_qwen_layout():
    """Qwen2.5/3-VL pass [1, T, H, D] views of one qkv tensor plus max_seqlen on the host."""
    h, d = QWEN3_VL_HEADS, QWEN3_VL_HEAD_SIZE
    qkv = torch.randn(1, 30, 3, h, d)
    q, k, v = qkv.unbind(dim=2)
    attn = mea.MMEncoderAttention(h, d, scale=d**-0.5, prefix="visual.blocks.0.attn.attn")
    cu = _cu(10, 20)
    out = attn(
        query=q, key=k, value=v, cu_seqlens=cu, max_seqlen=torch.tensor(20), sequence_lengths=None
    )
    assert out.shape == (1, 30, h, d)
    assert_close(out, reference(q, k, v, cu.tolist(), d**-0.5), torch.float32)


def test_batch_rows_without_cu_seqlens():
    attn = mea.MMEncoderAttention(2, 64)
    q, k, v = (torch.randn(3, 7, 128) for _ in range(3))
    out = attn(q, k, v)
    assert out.shape == (3, 7, 128)
    expected = reference(*(t.unflatten(2, (2, 64)) for t in (q, k, v)), None, 64**-0.5)
    assert_close(out.unflatten(2, (2, 64)), expected, torch.float32)


def test_scale_is_settled_in_init():
    assert mea.MMEncoderAttention(2, 80).scale == pytest.approx(80**-0.5)
    attn = mea.MMEncoderAttention(2, 80, scale=0.5)
    assert attn.scale == 0.5
    q, k, v = (torch.randn(1, 9, 2, 80) for _ in range(3))
    assert_close(attn(q, k, v, cu_seqlens=_cu(9)), reference(q, k, v, [0, 9], 0.5), torch.float32)


@pytest.mark.parametrize(
    ("head_size", "kernel"),
    [(32, 32), (64, 64), (72, 128), (80, 128), (96, 128), (127, 128), (128, 128), (160, 160)],
)
def test_npu_head_size_decided_in_init(head_size, kernel):
    assert mea.MMEncoderAttention(2, head_size).npu_kernel_head_size == kernel


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param({"num_heads": 0, "head_size": 8}, ValueError, "num_heads", id="zero-heads"),
        pytest.param({"num_heads": 2.0, "head_size": 8}, TypeError, "num_heads", id="float-heads"),
        pytest.param(
            {"num_heads": 4, "head_size": 8, "num_kv_heads": 3},
            ValueError,
            "multiple",
            id="kv-heads",
        ),
        pytest.param(
            {"num_heads": 4, "head_size": 8, "scale": "x"}, TypeError, "scale", id="scale"
        ),
        pytest.param(
            {"num_heads": 4, "head_size": 8, "provider": "cudnn"},
            ValueError,
            "registered",
            id="provider",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        mea.MMEncoderAttention(**kwargs)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        pytest.param(((1, 4, 12), (1, 4, 16), (1, 4, 16)), "query must end in", id="3d-hidden"),
        pytest.param(((1, 4, 2, 8), (1, 4, 16), (1, 4, 16)), "must all be 3-D", id="mixed-rank"),
        pytest.param(((4, 2, 8),) * 3, "query must end in", id="3d-misread"),
        pytest.param(((2, 8),) * 3, "must all be 3-D", id="2d"),
    ],
)
def test_bad_input_shapes(shapes, match):
    attn = mea.MMEncoderAttention(2, 8)
    with pytest.raises(ValueError, match=match):
        attn(*(torch.randn(s) for s in shapes))


def test_pinned_provider_that_declines_raises():
    attn = mea.MMEncoderAttention(2, 64, provider="varlen")
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(ValueError, match="provider 'varlen' declines"):
        attn(q, q, q, cu_seqlens=_cu(4))


def test_custom_op_opcheck():
    q, k, v = (torch.randn(1, 12, 2, 64) for _ in range(3))
    torch.library.opcheck(op.torch_op, (q, k, v, _cu(5, 7), 0.125))
    torch.library.opcheck(op.torch_op, (q, k, v, None, 0.125))


@pytest.mark.parametrize("use_compile", [False, True], ids=["eager", "compiled"])
def test_torch_compile_fullgraph(use_compile):
    """Compiled, the layer is one opaque ir_dispatch::mm_encoder_attention node."""
    attn = mea.MMEncoderAttention(2, 64)

    def block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        return attn(q, k, v, cu_seqlens=cu) * 2.0

    fn = torch.compile(block, fullgraph=True, backend="eager") if use_compile else block
    q, k, v = (torch.randn(1, 12, 128) for _ in range(3))
    cu = _cu(5, 7)
    expected = 2.0 * reference(*(t.unflatten(2, (2, 64)) for t in (q, k, v)), [0, 5, 12], 0.125)
    assert_close(fn(q, k, v, cu).unflatten(2, (2, 64)), expected, torch.float32)
