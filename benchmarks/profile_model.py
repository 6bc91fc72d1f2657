"""Where the model-level time goes (issue #4): GPU kernels and host time of one Qwen3 forward.

``model_decoder.py`` reports tokens/s; this names the kernels behind them. For each case
(decode of a batch after a prompt, or one prefill) it runs the eager model of
``model_decoder.py`` in default and batch-invariant mode under ``torch.profiler``, and
records per mode: the wall time of the profiled steps, the GPU time summed over all kernels
(less than the wall time when the host is the bottleneck), the kernels that cost most GPU time
with their call counts, and (from a second run under cProfile) the Python functions that cost
most host time. Outside any profiler it also records the unprofiled wall time, the host time
to enqueue the steps (``host_ms``, no synchronize), how many calls synchronized with the GPU
(``torch.cuda.set_sync_debug_mode``), and how often ``bi_triton_ascend``'s launch table and
launch plans missed (``launch_counts``): a miss on every step would mean the host path is not
the cached one. A diagnostic, not a target: no ratio is asserted.

    source scripts/gpu/env.sh && python benchmarks/profile_model.py --shape 0.6b
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report
import model_decoder as md


def python_profile(run: Any, top: int) -> list[str]:
    """The ``top`` Python functions by own time over one ``run()`` (cProfile), as text lines."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run()
    md.sync()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return [line for line in buf.getvalue().splitlines() if line.strip()]


class _Counter:
    """Counts table and plan hits/misses by wrapping the lookups (restored afterwards)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def bump(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


@contextlib.contextmanager
def launch_counts() -> Iterator[dict[str, int]]:
    """How the launches inside the block went (CUDA only; empty elsewhere).

    ``direct_launch``: kernels launched through a compiled launcher without Triton's binding;
    ``table_hit``/``table_miss``: lookups of :func:`launch_kernel`'s table; ``prepared_miss``:
    prepared launches (the plans') that went through Triton; ``plan_hit_N``/``plan_miss_N``:
    lookups of the ops' own plan tables (bound ``N``), which calls remembered by ir-dispatch
    skip.
    """
    from bi_triton_ascend import _launch_cache
    from bi_triton_ascend.ops import _plans

    counter = _Counter()
    entries, first_launch, find = (
        _launch_cache._entries,
        _launch_cache._first_launch,
        _plans.PlanTable.find,
    )
    entry_call, prepared_first = _launch_cache._Entry.__call__, _launch_cache.PreparedLaunch._first

    class CountingEntries(dict):  # type: ignore[type-arg]
        def get(self, key: Any, default: Any = None) -> Any:
            hit = super().get(key, default)
            counter.bump("table_hit" if hit is not None else "table_miss")
            return hit

    def counting_first_launch(*args: Any) -> Any:
        counter.bump("first_launch")
        return first_launch(*args)

    def counting_find(self: Any, key: Any) -> Any:
        plan = find(self, key)
        counter.bump(("plan_hit" if plan is not None else "plan_miss") + f"_{self.limit}")
        return plan

    def counting_entry_call(self: Any, *args: Any) -> None:
        counter.bump("direct_launch")
        entry_call(self, *args)

    def counting_prepared_first(self: Any, *args: Any) -> Any:
        counter.bump("prepared_miss")
        return prepared_first(self, *args)

    _launch_cache._entries = CountingEntries(entries)
    _launch_cache._first_launch = counting_first_launch
    _plans.PlanTable.find = counting_find  # type: ignore[method-assign]
    _launch_cache._Entry.__call__ = counting_entry_call  # type: ignore[method-assign]
    _launch_cache.PreparedLaunch._first = counting_prepared_first  # type: ignore[method-assign]
    try:
        yield counter.counts
    finally:
        entries.update(_launch_cache._entries)
        _launch_cache._entries = entries
        _launch_cache._first_launch = first_launch
        _plans.PlanTable.find = find  # type: ignore[method-assign]
        _launch_cache._Entry.__call__ = entry_call  # type: ignore[method-assign]
        _launch_cache.PreparedLaunch._first = prepared_first  # type: ignore[method-assign]


def host_diagnostics(run: Any, setup: Any) -> dict[str, Any]:
    """Unprofiled wall and enqueue time of ``run``, GPU synchronizations, table/plan counts."""
    if setup:
        setup()
    md.sync()
    started = time.perf_counter()
    run()
    host_ms = (time.perf_counter() - started) * 1e3
    md.sync()
    wall_ms = (time.perf_counter() - started) * 1e3
    if setup:
        setup()
    syncs: list[str] = []
    if torch.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)]
    if setup:
        setup()
    with launch_counts() as counts:
        run()
    return {"wall_unprofiled_ms": wall_ms, "host_ms": host_ms, "gpu_syncs": len(syncs),
            "gpu_sync_examples": sorted(set(syncs))[:5], "launch_counts": dict(counts)}  # fmt: skip


def kernel_table(prof: Any, top: int) -> tuple[float, list[dict[str, Any]]]:
    """(GPU ms of all kernels, the ``top`` kernels by GPU time) from a finished profile."""
    rows = []
    total_us = 0.0
    for event in prof.key_averages():
        gpu_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
        if gpu_us <= 0:
            continue
        total_us += gpu_us
        rows.append({"kernel": event.key[:120], "gpu_ms": gpu_us / 1e3, "calls": event.count})
    rows.sort(key=lambda r: -r["gpu_ms"])
    return total_us / 1e3, rows[:top]


@torch.inference_mode()
def profile_case(
    model: torch.nn.Module,
    case: md.Case,
    mode: str,
    steps: int,
    vocab: int,
    top: int,
    compile_mode: str = "eager",
) -> dict[str, Any]:
    """Profile ``steps`` decode steps (or one prefill) of ``case`` in ``mode``."""
    from torch.profiler import ProfilerActivity, profile

    with md.run_mode(mode):
        fn = md.forward_fn(model, compile_mode)  # compiled in the warm-up, inside the mode
        if case.phase == "prefill":
            ids = md.random_ids(case.batch, case.seq, vocab)
            run = md.prefill_step(fn, ids)
            setup = None
        else:
            runner = md.DecodeRunner(model, fn, case, steps, vocab)
            run, setup = runner.steps, runner.prefill
        for _ in range(2):  # JIT compiles and autotuning outside the profile
            if setup:
                setup()
            run()
        diagnostics = host_diagnostics(run, setup)
        if setup:
            setup()
        md.sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            run()
            md.sync()
            wall_ms = (time.perf_counter() - started) * 1e3
        if setup:
            setup()
        python_top = python_profile(run, 3 * top)
    gpu_ms, kernels = kernel_table(prof, top)
    return {"phase": case.phase, "batch": case.batch, "seq": case.seq, "mode": mode,
            "compile": compile_mode,
            "steps": steps if case.phase == "decode" else 1, "wall_ms": wall_ms,
            "gpu_ms": gpu_ms, "gpu_busy": gpu_ms / wall_ms, "top_kernels": kernels,
            "python_top": python_top, **diagnostics}  # fmt: skip


def parse_cases(text: str, prompt: int) -> list[md.Case]:
    """``decode:B`` (batch B after a ``prompt``-token cache) and ``prefill:BxS`` cases."""
    cases = []
    for item in text.split(","):
        phase, _, size = item.strip().partition(":")
        try:
            if phase == "decode":
                cases.append(md.Case("decode", int(size), prompt))
                continue
            if phase == "prefill":
                batch, _, seq = size.partition("x")
                cases.append(md.Case("prefill", int(batch), int(seq)))
                continue
        except ValueError:
            pass
        raise ValueError(f"--cases: expected decode:B or prefill:BxS items, got {item!r}")
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="0.6b", choices=sorted(md.SHAPES), help="tiny: CPU, CI")
    p.add_argument("--layers", type=int, help="default: model_decoder's per shape")
    p.add_argument("--steps", type=int, default=8, help="decode steps profiled")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--compile", default="eager", choices=md.COMPILE_MODES)
    p.add_argument(
        "--cases",
        help="comma list of decode:B and prefill:BxS (default: decode:1,decode:32,"
        "prefill:1x2048; tiny: decode:1,decode:2,prefill:1x64)",
    )
    p.add_argument("--out", type=Path, help="default: $OUT or benchmarks/results")
    args = p.parse_args(argv)
    import bi_triton_ascend  # noqa: F401  (registers the batch-invariant kernels)

    shape = md.SHAPES[args.shape]
    layers = args.layers or shape.layers
    tiny = shape.name == "tiny"
    prompt = 16 if tiny else 512
    cases = parse_cases(args.cases, prompt) if args.cases else [
        md.Case("decode", 1, prompt), md.Case("decode", 2 if tiny else 32, prompt),
        md.Case("prefill", 1, 64 if tiny else 2048),
    ]  # fmt: skip
    model = md.build_model(shape, layers, prompt + args.steps + 8)
    rows = []
    for case in cases:
        for mode in md.MODES:
            row = {
                "shape": shape.name,
                "layers": layers,
                **profile_case(
                    model, case, mode, args.steps, shape.vocab_size, args.top, args.compile
                ),
            }
            rows.append(row)
            print(f"{shape.name} {case.phase} b{case.batch} {mode}: wall {row['wall_ms']:.2f} ms, "
                  f"GPU {row['gpu_ms']:.2f} ms ({row['gpu_busy']:.0%} busy); unprofiled "
                  f"{row['wall_unprofiled_ms']:.2f} ms, host {row['host_ms']:.2f} ms, "
                  f"{row['gpu_syncs']} syncs, {row['launch_counts']}")  # fmt: skip
            for example in row["gpu_sync_examples"]:
                print(f"    sync: {example}")
            for k in row["top_kernels"]:
                print(f"    {k['gpu_ms']:8.3f} ms {k['calls']:6d}x  {k['kernel'][:90]}")
            print("\n".join(row["python_top"][:30]))
    out = args.out or _report.out_dir(Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    head = _report.header(_report.cuda_device("cpu"), md.versions())
    for row in rows:  # wall time relative to the default mode's, same case
        base = next(r for r in rows if r["mode"] == "default" and r["phase"] == row["phase"]
                    and r["batch"] == row["batch"])  # fmt: skip
        row["ratio_vs_default"] = base["wall_ms"] / row["wall_ms"]
        row["value"], row["unit"], row["reps"] = row["wall_ms"], "ms (profiled)", [row["wall_ms"]]
    suffix = "" if args.compile == "eager" else f"_{args.compile}"
    _report.write_results(out / f"profile_model_{shape.name}{suffix}.json", head, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
