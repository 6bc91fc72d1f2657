"""Benchmark plumbing of bi-triton-ascend: source paths, JSON header, CUDA-graph timing.

The table, the JSON writer, the plots and ``do_bench`` timing are the repository's shared
``benchmarks/_report.py``: every benchmark of this package writes one JSON file with top-level
``device``, ``versions``, ``date`` and ``results`` (rows holding the measured value, every
repetition and the ratio to the baseline), prints a table, and draws a PNG when matplotlib is
installed.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parent.parent

if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

import _report  # noqa: E402
from _report import geomean, median, plot_lines, time_ms  # noqa: E402

__all__ = [
    "add_src_paths",
    "copies_for",
    "environment",
    "geomean",
    "median",
    "out_dir",
    "plot_lines",
    "print_table",
    "time_graph_ms",
    "time_ms",
    "write_json",
]


def add_src_paths() -> None:
    """Make ``bi_triton_ascend`` and ``ir_dispatch`` importable from the source tree."""
    for src in (PACKAGE / "src", PACKAGE.parent / "ir-dispatch" / "src"):
        if str(src) not in sys.path:
            sys.path.insert(0, str(src))


def out_dir(default_name: str = "results") -> Path:
    """``$OUT`` if set (device runs), else ``bench/results``."""
    return _report.out_dir(HERE / default_name)


def environment() -> dict[str, Any]:
    """Device, versions and date for the JSON header."""
    import triton

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    return _report.header(_report.cuda_device(platform.processor() or platform.machine()), versions)


def time_graph_ms(fns: Sequence[Callable[[], Any]], reps: int = 30, warmup: int = 3) -> list[float]:
    """Per-call time in ms of ``fns`` captured back to back in one CUDA graph, per replay.

    Why not ``do_bench``: its L2 flush runs between calls, so a Python launch path slower than
    the flush (~85 us on H100) shows up as GPU idle time, while real decode runs under CUDA
    graphs. Here the callables take *different* inputs (rotating copies whose total exceeds L2),
    so weights stream from HBM as in a model, and launch overhead is graph-replay overhead.

    Args:
        fns: callables, typically the same op on rotating input copies.
        reps: timed replays (each one time per replay is returned).
        warmup: untimed replays first.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:  # compile, autotune, allocate outside the capture
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    del graph
    return times


def copies_for(nbytes: int, footprint: int = 160 << 20, most: int = 32) -> int:
    """How many rotating input copies make ``footprint`` bytes (3x an H100's 50 MB L2)."""
    return max(1, min(most, -(-footprint // max(nbytes, 1))))


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    """A plain fixed-width table of ``rows`` (dicts) restricted to ``columns``.

    Cells print as they are (``nan``, ``None``; a missing key as nothing).
    """
    _report.print_table(rows, columns, title, blank=None)


def write_json(path: Path, results: Any, **extra: Any) -> Path:
    """``results`` under this package's header (plus ``extra``) as one JSON file."""
    return _report.write_results(path, environment(), results, **extra)
