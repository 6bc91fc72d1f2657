"""Sweep GEMM tile configurations on Qwen3 shapes; check that every one gives the same bits.

Tiles may follow M because the accumulation chain does not (see ``ops/gemm_config.py``); this
script measures candidate tiles per M band against cuBLAS and checks, per shape, that every
candidate reproduces the bits of the default configuration at M=1 (and of each other).

    python bench/tune_gemm.py [--quick] [--shapes 4096x1024,...] [--ms 1,32,2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import _common
import torch

_common.add_src_paths()

from bi_triton_ascend.ops import gemm_config  # noqa: E402
from bi_triton_ascend.ops.gemm import batched_gemm  # noqa: E402
from bi_triton_ascend.ops.gemm_config import Tiles, chain_for, force_tiles  # noqa: E402

QWEN_SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072),
               (6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)]  # fmt: skip


def _split(bm: int, bn: int, warps: int, stages: int) -> Tiles:
    return Tiles(True, bm, bn, warps, stages)


def _pers(bm: int, bn: int, warps: int, stages: int) -> Tiles:
    return Tiles(False, bm, bn, warps, stages, flatten=True)


# Candidates per M band ("S": split-K/plain kernel, "P": persistent, flattened loops).
SMALL = [_split(16, 16, 4, 6), _split(16, 16, 4, 8), _split(16, 32, 4, 6), _split(16, 32, 4, 4),
         _split(16, 64, 4, 4), _split(32, 32, 4, 5), _split(64, 32, 4, 5), _split(64, 16, 4, 6),
         _split(32, 16, 4, 6)]  # fmt: skip
MID = [_split(64, 16, 4, 6), _split(64, 32, 4, 5), _split(64, 64, 4, 4), _split(128, 32, 4, 4),
       _split(128, 16, 4, 6), _pers(64, 64, 4, 4), _pers(64, 128, 4, 4), _pers(128, 64, 4, 4),
       _pers(128, 128, 4, 4), _pers(128, 256, 8, 3)]  # fmt: skip
LARGE = [_pers(128, 256, 8, 3), _pers(128, 128, 8, 3), _pers(128, 128, 4, 4), _pers(64, 256, 8, 3),
         _pers(64, 128, 4, 4)]  # fmt: skip


def _with_groups(cands: list[Tiles], groups: list[int]) -> list[Tiles]:
    """Each split candidate once per tile order in ``groups`` (none given: as listed)."""
    if not groups:
        return cands
    out: list[Tiles] = []
    for tiles in cands:
        if tiles.split:
            out += [dataclasses.replace(tiles, group_m=g) for g in groups]
        else:
            out.append(tiles)
    return out


def _label(tiles: Tiles) -> str:
    """``S64x32w4s5`` (``g1`` appended when the tile order is not the default 8)."""
    kind = "S" if tiles.split else "P"
    order = "" if tiles.group_m == 8 else f"g{tiles.group_m}"
    return f"{kind}{tiles.block_m}x{tiles.block_n}w{tiles.num_warps}s{tiles.num_stages}{order}"


def _mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return batched_gemm(x.unsqueeze(0), w.t().unsqueeze(0))[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in QWEN_SHAPES))
    parser.add_argument("--ms", default="1,8,32,128,512,2048,8192")
    parser.add_argument("--rep", type=int, default=20)
    parser.add_argument("--target", type=int, default=0, help="override split-K target programs")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--split-groups", default="",
        help="also time each split candidate with these tile orders (group_m, e.g. 1,8)",
    )  # fmt: skip
    args = parser.parse_args()
    groups = [int(g) for g in args.split_groups.split(",") if g]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(m) for m in args.ms.split(",")]
    if args.target:
        gemm_config._TARGET_PROGRAMS = args.target
    torch.manual_seed(0)
    rows: list[dict] = []
    bad: list[str] = []
    for n, k in shapes:
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
              for _ in range(_common.copies_for(n * k * 2))]  # fmt: skip
        w = ws[0]
        x = torch.randn(max(ms), k, device="cuda", dtype=torch.bfloat16)
        ref_row = _mm(x[:1], w)
        chain = chain_for(n, k, torch.bfloat16)
        for m in ms:
            xm = x[:m]
            cublas = _common.median(
                _common.time_graph_ms(
                    [functools.partial(torch.mm, xm, w.t()) for w in ws], args.rep
                )
            )
            flop = 2 * m * n * k
            cands = _with_groups(SMALL if m <= 64 else MID if m <= 512 else LARGE, groups)
            best = None
            for tiles in cands:
                with force_tiles(tiles):
                    try:
                        out = _mm(xm, w)
                    except Exception as exc:  # a config that does not compile: report, go on
                        print(f"{n}x{k} M={m} {tiles}: {type(exc).__name__}: {str(exc)[:120]}")
                        continue
                    ok = torch.equal(out[:1], ref_row)
                    want = xm.float() @ w.float().t()
                    err = ((out.float() - want).norm() / want.norm()).item()
                    ok &= err < 1e-2
                    if m > 2:
                        mid = m // 2
                        ok &= torch.equal(out[mid : mid + 1], _mm(xm[mid : mid + 1], w))
                        ok &= torch.equal(out[-1:], _mm(xm[-1:], w))
                    t = _common.median(
                        _common.time_graph_ms([functools.partial(_mm, xm, w) for w in ws], args.rep)
                    )
                if not ok:
                    bad.append(f"{n}x{k} M={m} {tiles}")
                tf = flop / t / 1e9
                row = {"shape": f"{n}x{k}", "segs": chain.num_segs, "M": m,
                       "tiles": _label(tiles),
                       "us": t * 1e3, "TFLOPs": tf, "cublas_us": cublas * 1e3,
                       "ratio": cublas / t, "bitwise": ok, "rel_err": err}  # fmt: skip
                rows.append(row)
                if best is None or row["ratio"] > best["ratio"]:
                    best = row
            if best is not None:
                print(f"best {n}x{k} M={m}: {best['tiles']} {best['us']:.1f}us "
                      f"ratio {best['ratio']:.2f} (cuBLAS {cublas * 1e3:.1f}us)")  # fmt: skip
    _common.print_table(rows, ["shape", "segs", "M", "tiles", "us", "TFLOPs", "cublas_us",
                               "ratio", "bitwise"], "all candidates")  # fmt: skip
    _common.write_json(_common.out_dir() / f"tune_gemm{args.tag}.json", rows, bitwise_failures=bad)
    print("BITWISE FAILURES:", bad if bad else "none")


if __name__ == "__main__":
    main()
