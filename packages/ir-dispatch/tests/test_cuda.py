"""Dispatch on a real GPU: CUDA-graph capture/replay and compiled graphs (skip without CUDA)."""

from __future__ import annotations

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import IrOp, PlatformKind

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]


def _rowwise_sum(x: torch.Tensor) -> torch.Tensor:
    # Fixed order per row: a sequential cumulative sum never depends on the other rows.
    return x.float().cumsum(-1)[..., -1].to(x.dtype)


def test_platform_is_cuda() -> None:
    p = ird.current_platform()
    assert p.kind is PlatformKind.CUDA
    assert p.dispatch_key == "CUDA"
    assert p.compute_units == torch.cuda.get_device_properties(0).multi_processor_count


def test_cuda_graph_capture_and_replay_dispatches_at_capture(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("rowwise", batch_invariant=True, platforms=["cuda"])(_rowwise_sum)
    static_x = torch.randn(64, 128, device="cuda")
    with ird.batch_invariant():
        row_sum_op(static_x)  # warm-up outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = row_sum_op(static_x)
    for _ in range(3):
        fresh = torch.randn(64, 128, device="cuda")
        static_x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, _rowwise_sum(fresh))


def test_aten_overrides_install_on_cuda_key_and_restore() -> None:
    before = torch._C._dispatch_dump("aten::mm")
    with ird.aten_overrides():
        assert ird.installed_overrides()[0] == "CUDA"  # type: ignore[index]
        a, b = torch.randn(8, 16, device="cuda"), torch.randn(16, 4, device="cuda")
        with ird.recording() as rec:
            torch.testing.assert_close(
                torch.mm(a, b), (a.double() @ b.double()).float(), rtol=1e-2, atol=1e-2
            )
        assert rec.providers()["mm"]
    assert torch._C._dispatch_dump("aten::mm") == before


def test_compiled_graph_with_cuda_graphs(row_sum_op: IrOp) -> None:
    row_sum_op.register_impl("rowwise", batch_invariant=True, platforms=["cuda"])(_rowwise_sum)
    f = torch.compile(lambda x: row_sum_op(x) * 2, fullgraph=True, mode="reduce-overhead")
    x = torch.randn(32, 64, device="cuda")
    with ird.batch_invariant():
        for _ in range(3):
            out = f(x)
    assert torch.equal(out, _rowwise_sum(x) * 2)
