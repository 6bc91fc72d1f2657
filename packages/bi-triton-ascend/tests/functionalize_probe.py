"""Which GEMM arguments torch's functionalization would copy; run by ``test_lowered.py``.

A separate process: the kernels must be ``triton.jit`` functions here (not the interpreter's),
so that ``wrap_triton`` traces them as its higher-order op. Tracing with fake tensors launches
nothing. Prints ``<M> <tensors_to_clone>`` per case.
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


if __name__ == "__main__":
    if "--declare" in sys.argv:
        lowered.declare_kernel_writes()
    for m in (5, 4096):
        print(m, " ".join(clones(m)), flush=True)
