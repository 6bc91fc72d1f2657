"""Overhead of the batch-invariant ``cpu`` provider over torch's own CPU kernels.

Shapes are Qwen3-0.6B's (hidden 1024): the four linear layers at decode and prefill M, RMSNorm,
and log-softmax over its 151936 vocab. Each row is the best of ``--reps`` runs (the dev machine
is shared, so the minimum is the least noisy estimate), with every repetition kept.
``--clock cpu --threads 1`` measures CPU time, which other tenants of the machine disturb least.

    PYTHONPATH=packages/ir-dispatch/src python packages/ir-dispatch/bench/bench_cpu_provider.py \
        --threads 1 --clock cpu --out packages/ir-dispatch/bench/results
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import _report

import ir_dispatch as ird
from ir_dispatch.providers import cpu_gemm, cpu_rows

# Qwen3-0.6B: hidden 1024, 16 q heads + 8 kv heads of 128, intermediate 3072, vocab 151936.
QWEN3_0_6B_LINEARS = {
    "qkv": (1024, 4096),
    "o": (2048, 1024),
    "gate_up": (1024, 6144),
    "down": (3072, 1024),
}
HIDDEN, VOCAB = 1024, 151936


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def best_ms(fn: Callable[[], object], reps: int) -> list[float]:
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return times


def row(
    name: str,
    shape: str,
    dtype: torch.dtype,
    torch_fn: Callable[[], object],
    ours_fn: Callable[[], object],
    reps: int,
) -> dict:
    t_torch = best_ms(torch_fn, reps)
    t_ours = best_ms(ours_fn, reps)
    result = {
        "case": name,
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_ms": min(t_torch),
        "cpu_provider_ms": min(t_ours),
        "ratio": min(t_ours) / min(t_torch),
        "torch_reps_ms": t_torch,
        "cpu_provider_reps_ms": t_ours,
    }
    print(
        f"{name:<14} {shape:<22} {result['dtype']:<9} torch {result['torch_ms']:8.3f} ms   "
        f"cpu {result['cpu_provider_ms']:8.3f} ms   x{result['ratio']:.2f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 32, 128, 256, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu = process CPU time: steadier on a shared machine (use with --threads 1)",
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for name, (k, n) in QWEN3_0_6B_LINEARS.items():
            w = (torch.randn(n, k) / k**0.5).to(dtype)
            for m in args.m:
                x = torch.randn(m, k).to(dtype)
                results.append(
                    row(
                        f"linear {name}",
                        f"{m}x{k} @ {k}x{n}",
                        dtype,
                        partial(torch.nn.functional.linear, x, w),
                        partial(cpu_gemm.mm, x, w.t()),
                        args.reps,
                    )
                )
        weight = torch.randn(HIDDEN).to(dtype)
        for m in args.m:
            x = torch.randn(m, HIDDEN).to(dtype)
            results.append(
                row(
                    "rms_norm",
                    f"{m}x{HIDDEN}",
                    dtype,
                    partial(ird.ops.rms_norm.native, x, weight, 1e-6),
                    partial(cpu_rows.rms_norm, x, weight, 1e-6),
                    args.reps,
                )
            )
        for m in (1, 8, 32):
            x = torch.randn(m, VOCAB).to(dtype)
            results.append(
                row(
                    "log_softmax",
                    f"{m}x{VOCAB}",
                    dtype,
                    partial(torch.log_softmax, x, -1, dtype=torch.float32),
                    partial(cpu_rows.log_softmax, x, -1, torch.float32),
                    args.reps,
                )
            )
    report = {
        "device": f"{platform.processor() or platform.machine()} CPU, {args.threads} threads "
        f"({os.cpu_count()} logical CPUs; shared machine)",
        "clock": args.clock,
        "versions": {
            "torch": torch.__version__,
            "ir_dispatch": ird.__version__,
            "python": platform.python_version(),
            "gemm_rows": cpu_gemm.GEMM_ROWS,
        },
        "date": _report.utc_date(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_cpu_provider_{args.threads}t_{args.clock}.json"
    _report.write_json(path, report)


if __name__ == "__main__":
    main()
