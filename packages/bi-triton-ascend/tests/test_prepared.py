"""ir-dispatch remembers the ``triton`` provider per argument layout and replays its launch plan
(the ``prepare`` hooks): the bits of the op's own path for new data, and the op's own path again
when the GEMM chain switch changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from bi_testutils import rand

import bi_triton_ascend as bta
import ir_dispatch as ird
from ir_dispatch import ops as ir_ops

bf16 = torch.bfloat16


def _cases(device: torch.device) -> list[tuple[Any, Callable[..., Any], Callable[[], tuple]]]:
    """(ir-dispatch op, bi_triton_ascend function, fresh arguments of one fixed layout)."""
    w = rand(48, 200, dtype=bf16, device=device)
    bias = rand(48, dtype=bf16, device=device)

    def x() -> torch.Tensor:
        return rand(3, 200, dtype=bf16, device=device)

    f32 = torch.float32

    def r(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return rand(*shape, dtype=dtype, device=device)

    return [
        (ir_ops.linear, bta.linear, lambda: (x(), w, bias)),
        (ir_ops.mm, bta.mm, lambda: (x(), w.t())),
        (ir_ops.addmm, bta.addmm, lambda: (bias, x(), w.t(), 0.5, 2.0)),
        (ir_ops.bmm, bta.bmm, lambda: (r(2, 3, 200), w.t().expand(2, 200, 48))),
        (ir_ops.matmul, bta.matmul, lambda: (r(2, 4, 1, 24), r(2, 4, 24, 40))),
        (ir_ops.mean, bta.mean, lambda: (r(2, 1, 300, dtype=f32), [-1], True, None)),
        (ir_ops.softmax, bta.softmax, lambda: (r(2, 4, 1, 53, dtype=f32), -1, None)),
        (ir_ops.log_softmax, bta.log_softmax, lambda: (r(3, 97), -1, torch.float32)),
        (ir_ops.rms_norm, bta.rms_norm, lambda: (x(), r(200), 1e-6)),
        (
            ir_ops.fused_add_rms_norm,
            bta.fused_add_rms_norm,
            lambda: (x(), x(), r(200), 1e-6),
        ),
    ]  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return all(_same(p, q) for p, q in zip(a, b, strict=True))
    return bool(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


@pytest.mark.parametrize("index", range(10))
def test_remembered_plan_gives_the_ops_own_bits(
    index: int, device: torch.device, prefer_triton: None
) -> None:
    op, own, make_args = _cases(device)[index]
    with ird.batch_invariant():
        for _ in range(3):  # first call: selection and the full path; then the plan
            args = make_args()
            assert _same(op.call_selected(*args), own(*args))
        remembered = op.remembered_for(*args)
        assert remembered is not None
        impl, run = remembered
        assert impl.provider == "triton" and run is not impl.fn  # the prepared plan serves


def test_remembered_linear_follows_the_chain_switch(
    device: torch.device, prefer_triton: None
) -> None:
    """A plan made on the default chain is not replayed after the switch to the K-only chain."""
    from bi_triton_ascend.ops import gemm_config

    x = rand(4, 4096, dtype=torch.float32, device=device)  # fp32 shows the chain's last bits
    w = rand(256, 4096, dtype=torch.float32, device=device)
    with ird.batch_invariant():
        default_chain = [ir_ops.linear.call_selected(x, w) for _ in range(2)][-1]
        gemm_config.set_n_independent_chain(True)
        try:
            k_only = ir_ops.linear.call_selected(x, w)
            assert torch.equal(k_only, bta.linear(x, w))
        finally:
            gemm_config.set_n_independent_chain(False)
        assert torch.equal(ir_ops.linear.call_selected(x, w), default_chain)
    assert not torch.equal(k_only, default_chain)  # the switch changes these bits


def test_out_overloads_write_in_place_with_the_ops_bits(
    device: torch.device, prefer_triton: None
) -> None:
    """``torch.mm(a, b, out=buf)`` (what Inductor's extern GEMMs call) writes the remembered
    plan's result into ``buf`` itself, with ``mm``'s bits; an ``out`` that overlaps an input,
    has another dtype or is strided still gets the right values (through a copy)."""
    a, w = rand(5, 200, dtype=bf16, device=device), rand(200, 48, dtype=bf16, device=device)
    bias = rand(48, dtype=bf16, device=device)
    want_mm, want_addmm = bta.mm(a, w), bta.addmm(bias, a, w)
    with ird.aten_overrides(), ird.batch_invariant():
        for _ in range(3):  # the first call selects and remembers; later ones write in place
            buf = torch.empty(5, 48, dtype=bf16, device=device)
            pointer = buf.data_ptr()
            assert torch.mm(a, w, out=buf) is buf and buf.data_ptr() == pointer
            assert torch.equal(buf, want_mm)
            buf2 = torch.empty(5, 48, dtype=bf16, device=device)
            torch.addmm(bias, a, w, out=buf2)
            assert torch.equal(buf2, want_addmm)
        square = rand(48, 48, dtype=bf16, device=device)
        want_square = bta.mm(square, square)
        for _ in range(2):
            alias = square.clone()
            torch.mm(alias, alias, out=alias)  # overlaps both inputs
            assert torch.equal(alias, want_square)
        strided = torch.empty(48, 5, dtype=bf16, device=device).t()
        torch.mm(a, w, out=strided)
        assert torch.equal(strided, want_mm)
        wide = torch.empty(5, 48, dtype=torch.float32, device=device)
        torch.mm(a, w, out=wide)
        assert torch.equal(wide, want_mm.float())
