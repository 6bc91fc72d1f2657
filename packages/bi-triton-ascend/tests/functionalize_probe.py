"""Which kernel arguments torch's functionalization would copy; run by ``test_lowered.py``.

A separate process: the kernels must be ``triton.jit`` functions here (not the interpreter's),
so that ``wrap_triton`` traces them as its higher-order op. Tracing with fake tensors launches
nothing. Prints ``<M> <tensors_to_clone>`` per GEMM case; with ``--rows``, ``<case>
<tensors_to_clone>;...`` (one group per launch) per row-reduction case instead.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.library import wrap_triton

from bi_triton_ascend.ops import lowered


def clones(m: int) -> list[str]:
    """``tensors_to_clone`` of the GEMM launch for ``m`` rows of a ``[200] x [200, 48]`` GEMM."""

    def gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return lowered.launch_gemm(a, b, None, 1.0, 1.0, wrap_triton)

    a = torch.randn(1, m, 200, dtype=torch.bfloat16)
    b = torch.randn(1, 200, 48, dtype=torch.bfloat16)
    traced = make_fx(torch.func.functionalize(gemm), tracing_mode="fake")(a, b)
    found = [n for n in traced.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    return list(found[0].kwargs["tensors_to_clone"])


def launch_clones(fn: object, x: torch.Tensor) -> str:
    """``tensors_to_clone`` of every kernel launch ``fn(x)`` traces, ``;`` between launches."""
    traced = make_fx(torch.func.functionalize(fn), tracing_mode="fake")(x)
    found = [n for n in traced.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    return ";".join(" ".join(n.kwargs["tensors_to_clone"]) for n in found)


def row_cases() -> list[tuple[str, object, torch.Tensor]]:
    """The reductions' launches: one pass, and chunked rows (two kernels each)."""

    def mean(x: torch.Tensor) -> torch.Tensor:
        return lowered.launch_mean(x, [-1], True, None, wrap_triton)

    def softmax(x: torch.Tensor) -> torch.Tensor:
        return lowered.launch_softmax(x, -1, None, False, wrap_triton)

    bf16 = torch.bfloat16
    return [
        ("mean", mean, torch.randn(5, 300, dtype=bf16)),
        ("mean-chunked", mean, torch.randn(2, 16385, dtype=bf16)),
        ("softmax", softmax, torch.randn(4, 530, dtype=bf16)),
        ("softmax-chunked", softmax, torch.randn(2, 8193, dtype=bf16)),
    ]


if __name__ == "__main__":
    if "--declare" in sys.argv:
        lowered.declare_kernel_writes()
    if "--rows" in sys.argv:
        for name, fn, x in row_cases():
            print(name, launch_clones(fn, x), flush=True)
    else:
        for m in (5, 4096):
            print(m, " ".join(clones(m)), flush=True)
