"""The varlen attention backward: float64 gradients, run-to-run bits, packing, argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from _attn_cases import DEVICE, TINY_GQA, Heads, cuda_only, needs_kernels

from bi_triton_ascend.attention import varlen_attention_backward

pytestmark = [
    needs_kernels,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
]
LENGTHS = [1, 15, 16, 17, 33]  # around the interpreter's 16-row tiles
# Worst |error| / max|reference| per gradient (fp32 accumulation either way; bf16 rounds the
# operands of every product, as FlashAttention's backward does).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _packed(
    lengths: list[int], heads: Heads, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)

    def rand(h: int) -> torch.Tensor:
        return torch.randn(total, h, heads.head_size, generator=gen).to(DEVICE or "cpu", dtype)

    q, k, v = rand(heads.num_heads), rand(heads.num_kv_heads), rand(heads.num_kv_heads)
    grad = rand(heads.num_heads)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, grad, cu.to(q.device)


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, cu: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Output and float64 autograd gradients of causal attention, one sequence at a time."""
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu.tolist()
    for beg, end in itertools.pairwise(bounds):
        qs = qd[beg:end]
        ks = kd[beg:end].repeat_interleave(group, 1)
        vs = vd[beg:end].repeat_interleave(group, 1)
        s = torch.einsum("qhd,khd->hqk", qs, ks) * q.shape[-1] ** -0.5
        n = end - beg
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), -torch.inf)
        outs.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), vs))
    out = torch.cat(outs)
    grads = torch.autograd.grad(out, (qd, kd, vd), grad.double())
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gradients_match_float64(dtype: torch.dtype) -> None:
    q, k, v, grad, cu = _packed(LENGTHS, TINY_GQA, dtype, seed=0)
    out, want = _reference(q, k, v, grad, cu)
    got = varlen_attention_backward(q, k, v, out.to(dtype), grad, cu)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.dtype == dtype and g.shape == w.shape, name
        err = float((g.double() - w).abs().max() / w.abs().max())
        assert err <= TOLERANCE[dtype], f"{name}: error {err:.3g} of the largest gradient"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("heads", [
    pytest.param(Heads(16, 8, 128), id="0.6b", marks=cuda_only),
    pytest.param(Heads(32, 8, 128), id="8b", marks=cuda_only),
])  # fmt: skip
def test_qwen3_heads_on_the_gpu(heads: Heads, dtype: torch.dtype) -> None:
    """The GPU tiles (64 x 64, head size 128) around their edges, against float64."""
    q, k, v, grad, cu = _packed([1, 63, 64, 65, 200], heads, dtype, seed=6)
    out, want = _reference(q, k, v, grad, cu)
    got = varlen_attention_backward(q, k, v, out.to(dtype), grad, cu)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        err = float((g.double() - w).abs().max() / w.abs().max())
        assert err <= TOLERANCE[torch.bfloat16], f"{name}: error {err:.3g} of the largest gradient"


def test_two_runs_give_the_same_bits() -> None:
    q, k, v, grad, cu = _packed(LENGTHS, TINY_GQA, torch.bfloat16, seed=1)
    out = _reference(q, k, v, grad, cu)[0].to(q.dtype)
    first = varlen_attention_backward(q, k, v, out, grad, cu)
    second = varlen_attention_backward(q, k, v, out, grad, cu)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("position", [0, 2, 4])
def test_a_sequences_gradients_do_not_depend_on_its_neighbours(position: int) -> None:
    """Each program reads one sequence only: packed with others or alone, the same bits."""
    q, k, v, grad, cu = _packed(LENGTHS, TINY_GQA, torch.bfloat16, seed=2)
    out = _reference(q, k, v, grad, cu)[0].to(q.dtype)
    packed = varlen_attention_backward(q, k, v, out, grad, cu)
    beg, end = int(cu[position]), int(cu[position + 1])
    alone_cu = torch.tensor([0, end - beg], dtype=torch.int32, device=q.device)
    parts = (t[beg:end] for t in (q, k, v, out, grad))
    alone = varlen_attention_backward(*parts, alone_cu)
    for a, p in zip(alone, packed, strict=True):
        assert torch.equal(a, p[beg:end])


def test_strided_views_give_the_same_bits() -> None:
    """``[B, H, S, D]`` tensors viewed as ``[T, H, D]`` (what transformers hands over)."""
    q, k, v, grad, cu = _packed([20, 20], TINY_GQA, torch.bfloat16, seed=3)
    out = _reference(q, k, v, grad, cu)[0].to(q.dtype)
    want = varlen_attention_backward(q, k, v, out, grad, cu)

    def strided(t: torch.Tensor) -> torch.Tensor:  # same values, token stride 2x the rows
        wide = torch.zeros(t.shape[0], t.shape[1], 2 * t.shape[2], dtype=t.dtype, device=t.device)
        wide[..., : t.shape[2]] = t
        return wide[..., : t.shape[2]]

    got = varlen_attention_backward(*map(strided, (q, k, v, out, grad)), cu)
    assert not strided(q).is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_max_seqlen_hint_changes_nothing() -> None:
    q, k, v, grad, cu = _packed(LENGTHS, TINY_GQA, torch.float32, seed=4)
    out = _reference(q, k, v, grad, cu)[0].float()
    want = varlen_attention_backward(q, k, v, out, grad, cu)
    got = varlen_attention_backward(q, k, v, out, grad, cu, max_seqlen=max(LENGTHS) + 7)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(("change", "message"), [
    ("k_rows", "as many key rows as query rows"),
    ("out_shape", "out must have q's shape"),
    ("dtype", "grad_out"),
    ("heads", "multiple"),
    ("cu_dtype", "cu_seqlens must be int32 or int64"),
    ("max_seqlen", "max_seqlen must be >= 0"),
])  # fmt: skip
def test_bad_arguments_name_the_argument(change: str, message: str) -> None:
    q, k, v, grad, cu = _packed([4, 5], TINY_GQA, torch.float32, seed=5)
    out, kwargs = q.clone(), {}
    if change == "k_rows":
        k, v = k[:-1], v[:-1]
    elif change == "out_shape":
        out = out[:, :1]
    elif change == "dtype":
        grad = grad.double()
    elif change == "heads":
        k, v = k[:, :1].expand(-1, 3, -1), v[:, :1].expand(-1, 3, -1)
    elif change == "cu_dtype":
        cu = cu.float()
    else:
        kwargs = {"max_seqlen": -1}
    with pytest.raises((TypeError, ValueError), match=message):
        varlen_attention_backward(q, k, v, out, grad, cu, **kwargs)
