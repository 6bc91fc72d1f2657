"""Can the attention's key loop overlap a tile's softmax with the next tile's score MMA on sm90?

Not in plain Triton 3.6. Two tries, both compiled for sm90 with ``bench/sm90_ptx.py``:

* ``tl.range(..., warp_specialize=True)``: no warp-specialized region;
* scores one tile ahead (branch ``wip/attn-scores-ahead``): ``wgmma.wait_group 0`` right
  after the early MMA.

In Gluon (``triton.experimental.gluon``, shipped with Triton 3.6), the kernel states its own
waits: ``warpgroup_mma(..., is_async=True)`` and ``warpgroup_mma_wait(num_outstanding=N)``.
This probe is a stripped key loop:

* 64 query rows, 64-key tiles, head 128, 4 warps;
* no masks, no paged cache, no chunk folds;
* tile i + 1's scores are issued before tile i's softmax.

It compiles for sm90 on a machine without a GPU (``JITFunction.run`` is never called) and
reports where the waits fall. Measured here (2026-11-28, Triton 3.6.0):

* the loop issues the next scores, then runs the softmax's ``ex2`` while they are in flight,
  then the P·V MMA, then ``wgmma.wait_group 1``;
* 176 registers, no spill, 64 KiB of shared memory.

It is a starting point for an sm90 fast path of the attention, not a kernel of the package:

* its values are not checked against anything;
* it has never run on a GPU;
* a Gluon attention is only useful if its bits equal the Triton kernels'. The trainer, decode
  and every non-NVIDIA device run those kernels.

    python bench/probe_gluon_overlap.py [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, whatever the caller's shell says

import sm90_ptx
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

BLOCK_M, BLOCK_N, HEAD, WARPS = 64, 64, 128, 4


@gluon.jit
def _scores_ahead_kernel(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, o_ptr, n_tiles,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD, 16]
    )
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    blocked: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    q_shared: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD], gl.bfloat16)
    kt_shared: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HEAD, BLOCK_N], gl.bfloat16)
    v_shared: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD], gl.bfloat16)

    rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, blocked))
    cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, blocked))
    dims = gl.arange(0, HEAD, layout=gl.SliceLayout(1, blocked))
    keys = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, blocked))
    key_rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, blocked))
    q = gl.load(q_ptr + rows[:, None] * HEAD + cols[None, :])
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, HEAD], q_shared, q)
    kt_smem = gl.allocate_shared_memory(gl.bfloat16, [2, HEAD, BLOCK_N], kt_shared)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_N, HEAD], v_shared)

    kt_smem.index(0).store(gl.load(k_ptr + keys[None, :] * HEAD + dims[:, None]))
    fence_async_shared()
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    s = warpgroup_mma(q_smem, kt_smem.index(0), zero_s, use_acc=False, is_async=True)
    acc = gl.zeros([BLOCK_M, HEAD], gl.float32, o_layout)
    m = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    for i in range(n_tiles):
        nxt = (i + 1) % 2
        k_next = k_ptr + (i + 1) * BLOCK_N * HEAD
        kt_smem.index(nxt).store(gl.load(k_next + keys[None, :] * HEAD + dims[:, None]))
        v_tile = v_ptr + i * BLOCK_N * HEAD
        v_smem.store(gl.load(v_tile + key_rows[:, None] * HEAD + cols[None, :]))
        fence_async_shared()
        s_cur = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        # Tile i + 1's scores go in flight before tile i's softmax.
        s = warpgroup_mma(q_smem, kt_smem.index(nxt), zero_s, use_acc=False, is_async=True)
        m_new = gl.maximum(m, gl.max(s_cur, 1))
        p = gl.exp2(s_cur - m_new[:, None])
        alpha = gl.convert_layout(gl.exp2(m - m_new), gl.SliceLayout(1, o_layout))
        m = m_new
        acc = acc * alpha[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_operand), v_smem, acc,
                            is_async=True)  # fmt: skip
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
    acc, s = warpgroup_mma_wait(num_outstanding=0, deps=(acc, s))
    out_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
    out_cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, o_layout))
    gl.store(o_ptr + out_rows[:, None] * HEAD + out_cols[None, :], acc)


def compile_for_sm90() -> Any:
    """The probe kernel compiled for :data:`sm90_ptx.TARGET`, without a device."""
    bf16 = torch.empty(BLOCK_M * HEAD, dtype=torch.bfloat16)
    args = (bf16, bf16, bf16, torch.empty(BLOCK_M * HEAD), 8, BLOCK_M, BLOCK_N, HEAD)
    return sm90_ptx.compile_gluon(_scores_ahead_kernel, args, num_warps=WARPS)


def loop_order(ptx: str) -> list[str]:
    """The key loop's MMA issues, MMA waits and ``ex2`` runs, in program order (runs merged).

    The loop body is the block from the loop header's label to the loop exit's label.
    """
    start = ptx.index("$L__BB0_2:")
    end = ptx.find("$L__BB0_3:", start)
    return sm90_ptx.mma_events(ptx[start : end if end >= 0 else len(ptx)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    args = parser.parse_args()
    kernel = compile_for_sm90()
    report = {
        "loop": loop_order(kernel.asm["ptx"]),
        **sm90_ptx.resource_usage(kernel),
        "shared_bytes": kernel.metadata.shared,
    }
    print("loop:", " -> ".join(report["loop"]))
    print("resources:", {k: v for k, v in report.items() if k != "loop"})
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
