"""Probe: do TMA tensor-descriptor loads speed up the one-segment GEMM chain on Hopper?

The kit's GEMM loads its operand tiles through pointers (``cp.async``). At M = 128-512 the
narrow Qwen3 outputs (N = 1024 and 4096, one K segment) reach 0.67-0.85x cuBLAS with every
pointer-kernel tile tried (``tune_gemm_mid_h100.json``). This script times kernels that load
the same tiles through host-side TMA descriptors, walk K in the same ``BLOCK_K`` steps with the
same ``tl.dot`` and add nothing else, and checks that they give the *bits* of
``batched_gemm`` (so the chain is unchanged), against cuBLAS, on the Qwen3 shapes whose chain
has one segment.

    python bench/probe_tma_gemm.py [--ms 128,256,512] [--rep 20]
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any

import _common
import torch
import triton
import triton.language as tl

_common.add_src_paths()

from bi_triton_ascend.ops.gemm import _tile_coords, batched_gemm  # noqa: E402
from bi_triton_ascend.ops.gemm_config import chain_for  # noqa: E402

ONE_SEGMENT_SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072),
                      (6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)]  # fmt: skip


@triton.jit
def _store_tile_product(
    a_desc, b_desc, c_ptr, tile, tiles_m, tiles_n, M, N, K, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Output tile ``tile`` (grouped order): A ``[M, K]`` and W ``[N, K]`` tiles through TMA."""
    _, pid_m, pid_n = _tile_coords(tile, tiles_m, tiles_n, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
        b = b_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
        acc = tl.dot(a, b.T, acc)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tma_tile_kernel(
    a_desc, b_desc, c_ptr, M, N, K, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """One output tile per program."""
    _store_tile_product(
        a_desc, b_desc, c_ptr, tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
        M, N, K, stride_cm, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
    )  # fmt: skip


@triton.jit
def _tma_persistent_kernel(
    a_desc, b_desc, c_ptr, M, N, K, stride_cm, NUM_PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip
    """A grid of ``NUM_PROGRAMS`` walking output tiles; the tile loop is flattened with K's."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True,
        warp_specialize=WARP_SPECIALIZE,
    ):  # fmt: skip
        _store_tile_product(
            a_desc, b_desc, c_ptr, tile, tiles_m, tiles_n, M, N, K, stride_cm,
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
        )  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    persistent: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    warp_specialize: bool = False

    def label(self) -> str:
        kind = "TP" if self.persistent else "T"
        ws = "ws" if self.warp_specialize else ""
        return (
            f"{kind}{self.block_m}x{self.block_n}w{self.num_warps}s{self.num_stages}"
            f"g{self.group_m}{ws}"
        )


def tma_mm(x: torch.Tensor, w: torch.Tensor, cand: Candidate, programs: int) -> torch.Tensor:
    """``x @ w.T`` through the TMA kernels (bf16, contiguous ``x [M, K]``, ``w [N, K]``)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = x.shape
    n = w.shape[0]
    block_k = chain_for(n, k, x.dtype).block_k
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    a_desc = TensorDescriptor.from_tensor(x, [cand.block_m, block_k])
    b_desc = TensorDescriptor.from_tensor(w, [cand.block_n, block_k])
    tiles = triton.cdiv(m, cand.block_m) * triton.cdiv(n, cand.block_n)
    common: dict[str, Any] = {
        "BLOCK_M": cand.block_m, "BLOCK_N": cand.block_n, "BLOCK_K": block_k,
        "GROUP_M": cand.group_m, "num_warps": cand.num_warps, "num_stages": cand.num_stages,
    }  # fmt: skip
    if cand.persistent:
        grid = min(programs, tiles)
        _tma_persistent_kernel[(grid,)](
            a_desc, b_desc, out, m, n, k, out.stride(0), NUM_PROGRAMS=grid,
            WARP_SPECIALIZE=cand.warp_specialize, **common,
        )  # fmt: skip
    else:
        _tma_tile_kernel[(tiles,)](a_desc, b_desc, out, m, n, k, out.stride(0), **common)
    return out


def _ours(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return batched_gemm(x.unsqueeze(0), w.t().unsqueeze(0))[0]


def candidates(m: int) -> list[Candidate]:
    """Tile-kernel candidates for one M (persistent ones won no shape by over 1% in probe 1)."""
    if m <= 64:
        shapes = [(16, 32, 4, 6), (16, 32, 4, 8), (16, 64, 4, 6), (32, 32, 4, 6), (32, 64, 4, 6),
                  (64, 32, 4, 6), (64, 64, 4, 6), (16, 128, 4, 4), (32, 128, 4, 4)]  # fmt: skip
    else:
        shapes = [(64, 16, 4, 8), (64, 32, 4, 6), (64, 32, 4, 8), (64, 64, 4, 5), (64, 64, 4, 6),
                  (64, 64, 4, 8), (64, 128, 4, 4), (64, 128, 4, 5), (64, 128, 4, 6),
                  (128, 64, 4, 5), (128, 64, 4, 6), (128, 128, 8, 3), (128, 128, 8, 4),
                  (128, 256, 8, 3), (128, 64, 8, 6)]  # fmt: skip
    return [Candidate(False, bm, bn, w, s) for bm, bn, w, s in shapes]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", default="32,128,256,512")
    parser.add_argument("--rep", type=int, default=20)
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in ONE_SEGMENT_SHAPES))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    programs = torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for n, k in shapes:
        if chain_for(n, k, torch.bfloat16).num_segs != 1:
            print(f"{n}x{k}: several segments, not probed")
            continue
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
              for _ in range(_common.copies_for(n * k * 2))]  # fmt: skip
        x = torch.randn(max(ms), k, device="cuda", dtype=torch.bfloat16)
        for m in ms:
            xm = x[:m].contiguous()
            cublas_calls = [functools.partial(torch.mm, xm, w.t()) for w in ws]
            cublas = _common.median(_common.time_graph_ms(cublas_calls, args.rep))
            ours = _common.median(
                _common.time_graph_ms([functools.partial(_ours, xm, w) for w in ws], args.rep)
            )
            want = _ours(xm, ws[0])
            best = None
            for cand in candidates(m):
                try:
                    got = tma_mm(xm, ws[0], cand, programs)
                except Exception as exc:  # a config that does not compile: report, go on
                    print(f"{n}x{k} M={m} {cand.label()}: {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                same = torch.equal(got, want)
                if not same:
                    bad.append(f"{n}x{k} M={m} {cand.label()}")
                t = _common.median(
                    _common.time_graph_ms(
                        [functools.partial(tma_mm, xm, w, cand, programs) for w in ws], args.rep
                    )
                )
                row = {"shape": f"{n}x{k}", "M": m, "tiles": cand.label(), "us": t * 1e3,
                       "ours_us": ours * 1e3, "cublas_us": cublas * 1e3, "ratio": cublas / t,
                       "ours_ratio": cublas / ours, "bitwise": same}  # fmt: skip
                rows.append(row)
                if same and (best is None or row["ratio"] > best["ratio"]):
                    best = row
            if best is not None:
                print(f"best {n}x{k} M={m}: {best['tiles']} {best['us']:.1f}us ratio "
                      f"{best['ratio']:.3f} (ours now {cublas / ours:.3f}, cuBLAS "
                      f"{cublas * 1e3:.1f}us)", flush=True)  # fmt: skip
    _common.print_table(rows, ["shape", "M", "tiles", "us", "ours_us", "cublas_us", "ratio",
                               "ours_ratio", "bitwise"], "TMA candidates")  # fmt: skip
    _common.write_json(_common.out_dir() / f"probe_tma_gemm{args.tag}.json", rows,
                       bitwise_failures=bad)  # fmt: skip
    print("BITWISE FAILURES:", bad if bad else "none")


if __name__ == "__main__":
    main()
