"""Issue #4's GEMM benchmark: ours vs cuBLAS vs cuBLAS without split-K vs upstream BI kernels.

bf16 ``x [M, K] @ W[N, K].T`` on the Qwen3-0.6B and Qwen3-8B linear shapes, M from 1 to 8192.
Columns:

* ``ours``: ``bi_triton_ascend.linear`` (batch-invariant).
* ``cublas``: ``torch.mm`` (batch-variant; the baseline of every ratio).
* ``cublas_nosplit``: ``torch.mm`` in a child process with ``CUBLAS_WORKSPACE_CONFIG=:16:8``
  and ``CUBLASLT_WORKSPACE_SIZE=1`` (vLLM's Hopper recipe to disable split-K).
* ``tml`` / ``vllm``: the published batch-invariant persistent Triton matmuls, loaded at run
  time from ``--tml PATH`` (Thinking Machines' ``batch_invariant_ops.py``) and ``--vllm PATH``
  (vLLM's ``batch_invariant.py``; needs vLLM importable) - skipped without a path.

Timing: every implementation runs captured in a CUDA graph over rotating weight copies (more
than L2 together), as in a model's decode step; medians of the graph replays.

Prints TFLOP/s, ratios to cuBLAS and geomeans (overall and per M band: M<=32, 128-512,
>=2048), checks bitwise batch invariance of every implementation per shape (row 0 computed
alone equals row 0 at every M; same for the last row), writes JSON + PNG under ``$OUT``.

    python bench/bench_gemm.py [--tml path/batch_invariant_ops.py] [--vllm path] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import _common
import torch

_common.add_src_paths()

QWEN_SHAPES = {
    "0.6B qkv": (4096, 1024), "0.6B o": (1024, 2048), "0.6B gate_up": (6144, 1024),
    "0.6B down": (1024, 3072), "8B qkv": (6144, 4096), "8B o": (4096, 4096),
    "8B gate_up": (24576, 4096), "8B down": (4096, 12288),
}  # fmt: skip
MS = [1, 8, 32, 128, 512, 2048, 8192]
BANDS = {"M<=32": (1, 32), "128-512": (128, 512), ">=2048": (2048, 1 << 30)}
Mm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _load(path: str, name: str) -> ModuleType:
    """Import a module from a file path (an upstream kernel file we do not vendor)."""
    file = Path(path)
    if file.is_dir():
        file = file / "batch_invariant_ops.py"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _upstream_mm(mod: ModuleType, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Both upstream files expose ``matmul_persistent(a [M, K], b [K, N])``."""
    out: torch.Tensor = mod.matmul_persistent(x, w.t())
    return out


def _impls(args: argparse.Namespace) -> dict[str, Mm]:
    import bi_triton_ascend as bta

    impls: dict[str, Mm] = {
        "ours": lambda x, w: bta.linear(x, w),
        "cublas": lambda x, w: torch.mm(x, w.t()),
    }
    for name, path in (("tml", args.tml), ("vllm", args.vllm)):
        if not path:
            print(f"no --{name} path: column skipped")
            continue
        try:
            mod = _load(path, f"upstream_{name}")
            if name == "vllm" and getattr(mod, "_NUM_SMS", 1) <= 0:
                sms = torch.cuda.get_device_properties(0).multi_processor_count
                vars(mod)["_NUM_SMS"] = sms  # vLLM sets it when its BI mode starts
        except Exception as exc:  # report and go on without that column
            print(f"--{name} {path}: could not load ({type(exc).__name__}: {exc}); skipped")
            continue
        impls[name] = functools.partial(_upstream_mm, mod)
    return impls


def _measure(impls: dict[str, Mm], shapes: dict[str, tuple[int, int]], ms: list[int], rep: int
             ) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for label, (n, k) in shapes.items():
        torch.manual_seed(0)
        # Rotating weight copies (> L2 together), so weights stream from HBM as in a model.
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
              for _ in range(_common.copies_for(n * k * 2))]  # fmt: skip
        w = ws[0]
        x = torch.randn(max(ms), k, device="cuda", dtype=torch.bfloat16)
        for impl, fn in impls.items():
            first = fn(x[:1], w)
            for m in ms:
                xm = x[:m]
                out = fn(xm, w)
                last = fn(xm[-1:], w)
                invariant = bool(torch.equal(out[:1], first) and torch.equal(out[-1:], last))
                calls = [functools.partial(fn, xm, w) for w in ws]
                times = _common.time_graph_ms(calls, reps=rep)
                t = _common.median(times)
                rows.append({
                    "shape": label, "N": n, "K": k, "M": m, "impl": impl, "ms": t,
                    "TFLOPs": 2 * m * n * k / t / 1e9, "invariant": invariant, "ms_all": times,
                })  # fmt: skip
            print(f"{label:>12} {impl:>14}: done")
    return rows


def _child_nosplit(shapes: dict[str, tuple[int, int]], ms: list[int], rep: int) -> list[dict]:
    """Run the cuBLAS-without-split-K column in a child process with vLLM's env recipe."""
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":16:8", CUBLASLT_WORKSPACE_SIZE="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nosplit.json"
        cmd = [sys.executable, __file__, "--child", str(out), "--rep", str(rep),
               "--ms", ",".join(map(str, ms)), "--shapes", ",".join(shapes)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0 or not out.exists():
            print(f"cublas_nosplit child failed (rc {proc.returncode}); column skipped")
            return []
        return json.loads(out.read_text())


def _summarize(rows: list[dict[str, Any]]) -> tuple[list[dict], dict[str, dict[str, float]]]:
    base = {(r["shape"], r["M"]): r["ms"] for r in rows if r["impl"] == "cublas"}
    for r in rows:
        r["ratio_vs_cublas"] = base[(r["shape"], r["M"])] / r["ms"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    table = []
    for (shape, m), _ in base.items():
        row: dict[str, Any] = {"shape": shape, "M": m}
        for r in rows:
            if r["shape"] == shape and r["M"] == m:
                row[f"{r['impl']} TF/s"] = r["TFLOPs"]
                if r["impl"] != "cublas":
                    row[f"{r['impl']} x"] = r["ratio_vs_cublas"]
        table.append(row)
    geo: dict[str, dict[str, float]] = {}
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        geo[impl] = {"all": _common.geomean(r["ratio_vs_cublas"] for r in mine)}
        for band, (lo, hi) in BANDS.items():
            geo[impl][band] = _common.geomean(
                r["ratio_vs_cublas"] for r in mine if lo <= r["M"] <= hi
            )
    return table, geo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tml", default="", help="Thinking Machines batch_invariant_ops.py")
    parser.add_argument("--vllm", default="", help="vLLM's batch_invariant.py (vLLM importable)")
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--shapes", default=",".join(QWEN_SHAPES))
    parser.add_argument("--rep", type=int, default=20, help="timed graph replays")
    parser.add_argument("--no-nosplit", action="store_true", help="skip the child-process column")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    shapes = {s: QWEN_SHAPES[s] for s in args.shapes.split(",")}
    if args.child:
        cublas: dict[str, Mm] = {"cublas_nosplit": lambda x, w: torch.mm(x, w.t())}
        Path(args.child).write_text(json.dumps(_measure(cublas, shapes, ms, args.rep)))
        return
    rows = _measure(_impls(args), shapes, ms, args.rep)
    if not args.no_nosplit:
        rows += _child_nosplit(shapes, ms, args.rep)
    table, geo = _summarize(rows)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    cols = (
        ["shape", "M"] + [f"{i} TF/s" for i in impls] + [f"{i} x" for i in impls if i != "cublas"]
    )
    _common.print_table(table, cols, "bf16 GEMM TFLOP/s and ratio to cuBLAS")
    print("\ngeomean ratio to cuBLAS:")
    for impl, g in geo.items():
        print(f"  {impl:>15}: " + "  ".join(f"{band} {v:.3f}" for band, v in g.items()))
    bad = sorted({(r["impl"], r["shape"]) for r in rows if not r["invariant"]})
    print("batch-variant (impl, shape):", bad or "none")
    out = _common.out_dir()
    _common.write_json(out / "bench_gemm.json", rows, geomean_vs_cublas=geo, variant=bad)
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        panels.setdefault(r["shape"], {}).setdefault(r["impl"], []).append((r["M"], r["TFLOPs"]))
    _common.plot_lines(out / "bench_gemm.png", panels, "M (tokens)", "TFLOP/s", logy=True)


if __name__ == "__main__":
    main()
