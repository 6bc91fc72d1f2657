"""Shared benchmark plumbing: environment record, timing, tables, JSON and PNG output.

Every benchmark of this package writes one JSON file with top-level ``device``, ``versions``,
``date`` and ``results`` (rows holding the measured value, every repetition and the ratio to
the baseline), prints a table, and draws a PNG when matplotlib is installed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent


def add_src_paths() -> None:
    """Make ``bi_triton_ascend`` and ``ir_dispatch`` importable from the source tree."""
    for src in (PACKAGE / "src", PACKAGE.parent / "ir-dispatch" / "src"):
        if str(src) not in sys.path:
            sys.path.insert(0, str(src))


def out_dir(default_name: str = "results") -> Path:
    """``$OUT`` if set (device runs), else ``bench/results``."""
    path = Path(os.environ.get("OUT") or HERE / default_name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> dict[str, Any]:
    """Device, versions and date for the JSON header."""
    import triton

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name} ({props.multi_processor_count} SMs, sm{props.major}{props.minor})"
    else:
        device = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(fn: Callable[[], Any], warmup_ms: int = 10, rep_ms: int = 40) -> list[float]:
    """Every repetition's time in ms (CUDA events, L2 flushed between runs: do_bench)."""
    from triton.testing import do_bench

    times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    return [float(t) for t in times]


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


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def geomean(xs: Iterable[float]) -> float:
    vals = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else float("nan")


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    """A plain fixed-width table of ``rows`` (dicts) restricted to ``columns``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
        for i, c in enumerate(columns)
    ]
    if title:
        print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_json(path: Path, results: Any, **extra: Any) -> Path:
    payload = {**environment(), **extra, "results": results}
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}")
    return path


def plot_lines(
    path: Path,
    panels: dict[str, dict[str, list[tuple[float, float]]]],
    xlabel: str,
    ylabel: str,
    logx: bool = True,
    logy: bool = False,
) -> Path | None:
    """One subplot per panel, one line per series of (x, y) points; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for name, pts in series.items():
            pts = sorted(p for p in pts if math.isfinite(p[1]))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_title(title, fontsize=9)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path
