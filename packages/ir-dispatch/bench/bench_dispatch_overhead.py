"""Per-call Python overhead of ``ir_dispatch.ops.<op>(...)`` on tiny CPU tensors.

Each op is timed at every layer of a call, in batch-invariant mode, on tensors so small that
the kernels cost next to nothing: the plain torch op, the selected implementation's function,
``IrOp.select``, ``IrOp.call_selected``, the op through the previous registration (a
``torch.library.custom_op`` and output normalisation rebuilt here as ir-dispatch had them) and
the op as shipped (``ir_dispatch.ops.<op>``: a ``torch.library.Library`` fragment). Each
repetition times ``--calls`` calls (process CPU time by default: ``--clock cpu``, one thread)
and reports microseconds per call; a row keeps every repetition, their median and
``ratio_vs_default``: that median over the previous registration's.

    PYTHONPATH=packages/ir-dispatch/src python \
        packages/ir-dispatch/bench/bench_dispatch_overhead.py \
        --out packages/ir-dispatch/bench/results
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import _report

import ir_dispatch as ird
from ir_dispatch.registry import IrOp

LEGACY_NAMESPACE = "ir_dispatch_bench_legacy"


def legacy_normalize(result: Any, args: tuple) -> Any:
    """The output normalisation as it was before (same results, a list and ``any`` per call)."""
    if isinstance(result, tuple):
        return tuple(legacy_normalize(r, args) for r in result)
    if not isinstance(result, torch.Tensor):
        return result
    if not result.is_contiguous():
        return result.contiguous()
    if args and result.numel():
        storage = result.untyped_storage().data_ptr()
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.numel()]
        if any(a.untyped_storage().data_ptr() == storage for a in inputs):
            return result.clone()
    return result


def legacy_custom_op(op: IrOp) -> Any:
    """The op registered as before: ``torch.library.custom_op`` over select + run + normalize."""
    call, native, normalize = op.call_selected, op.native, legacy_normalize

    def run(*args: Any, **kwargs: Any) -> Any:
        return normalize(call(*args, **kwargs), args)

    def fake(*args: Any, **kwargs: Any) -> Any:
        return normalize(native(*args, **kwargs), ())

    # ``run`` with the native's signature and globals, so torch infers the schema from it.
    like = types.FunctionType(
        run.__code__, native.__globals__, native.__name__, None, run.__closure__
    )
    like.__signature__ = inspect.signature(native)  # type: ignore[attr-defined]
    like.__annotations__ = dict(native.__annotations__)
    like.__module__, like.__qualname__ = native.__module__, native.__qualname__
    custom = torch.library.custom_op(f"{LEGACY_NAMESPACE}::{op.name}", like, mutates_args=())
    custom.register_fake(fake)
    return custom


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def per_call_us(
    fn: Callable[[], object], calls: int, reps: int, clock: Callable[[], float]
) -> list[float]:
    for _ in range(max(calls // 10, 10)):
        fn()
    times = []
    for _ in range(reps):
        start = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - start) / calls * 1e6)
    return times


def cases() -> list[tuple[IrOp, tuple[Any, ...], Callable[[], object]]]:
    """(op, arguments, the plain torch call) on tiny CPU tensors."""
    ops = ird.ops
    a, b = torch.randn(1, 8), torch.randn(8, 8)
    x, w = torch.randn(2, 8), torch.ones(8)
    return [
        (ops.mm, (a, b), lambda: torch.mm(a, b)),
        (ops.linear, (x, b, None), lambda: torch.nn.functional.linear(x, b)),
        (ops.rms_norm, (x, w, 1e-6), lambda: torch.nn.functional.rms_norm(x, (8,), w, 1e-6)),
        (ops.log_softmax, (x, -1, None), lambda: torch.log_softmax(x, -1)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu = process CPU time: steadier on a shared machine (with --threads 1)",
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ird.set_batch_invariant(True)
    results = []
    for op, op_args, torch_call in cases():
        legacy = legacy_custom_op(op)
        impl = op.select(*op_args)
        layers: list[tuple[str, Callable[[], object]]] = [
            ("torch", torch_call),
            ("impl.fn", lambda impl=impl, op_args=op_args: impl.fn(*op_args)),
            ("select", lambda op=op, op_args=op_args: op.select(*op_args)),
            ("call_selected", lambda op=op, op_args=op_args: op.call_selected(*op_args)),
            ("custom_op (previous)", lambda legacy=legacy, op_args=op_args: legacy(*op_args)),
            ("ir_dispatch.ops (Library)", lambda op=op, op_args=op_args: op(*op_args)),
        ]
        for mechanism, (_, fn) in zip(("legacy", "shipped"), layers[-2:], strict=True):
            torch.testing.assert_close(fn(), impl.fn(*op_args), rtol=0, atol=0, msg=mechanism)
        timed = {
            name: per_call_us(fn, args.calls, args.reps, CLOCKS[args.clock]) for name, fn in layers
        }
        default = _report.median(timed["custom_op (previous)"])
        for name, reps in timed.items():
            results.append(
                {
                    "op": op.name,
                    "provider": impl.provider,
                    "layer": name,
                    "median_us": _report.median(reps),
                    "ratio_vs_default": _report.median(reps) / default,
                    "reps_us": reps,
                }
            )
    _report.print_table(
        results, ["op", "provider", "layer", "median_us", "ratio_vs_default"], "us per call"
    )
    head = _report.header(
        f"{platform.processor() or platform.machine()} CPU, {args.threads} threads "
        f"({os.cpu_count()} logical CPUs; shared machine)",
        {
            "torch": torch.__version__,
            "ir_dispatch": ird.__version__,
            "python": platform.python_version(),
        },
    )
    path = _report.out_dir(args.out) / "bench_dispatch_overhead_cpu.json"
    _report.write_results(
        path,
        head,
        results,
        clock=args.clock,
        calls_per_rep=args.calls,
        default="custom_op (previous): the torch.library.custom_op registration used before",
    )


if __name__ == "__main__":
    main()
