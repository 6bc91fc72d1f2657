"""Benchmark reporting shared by every package's bench scripts: header, timing, table, JSON, PNG.

Why one module: the repository keeps one JSON shape for all results (top-level ``device``,
``versions``, ``date`` and ``results``; each row holding the measured value, every repetition
and the ratio to the baseline), so the header, the writer and the plots live here once. Bench
scripts run from the checkout and put this directory on ``sys.path`` (it is no package).
Only the standard library is imported at module level; torch, triton and matplotlib are
imported where needed, so a CPU-only script loads this without a GPU stack.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Panels = dict[str, dict[str, list[tuple[float, float]]]]


def utc_date() -> str:
    """Now in UTC, ISO 8601 to the second: the ``date`` of every result file."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cuda_device(cpu: str) -> str:
    """GPU 0 as ``"<name> (<SMs> SMs, sm<major><minor>)"``, else ``"cpu (<cpu>)"``."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.multi_processor_count} SMs, sm{props.major}{props.minor})"
    return f"cpu ({cpu})"


def header(device: str, versions: dict[str, Any]) -> dict[str, Any]:
    """The top-level ``device``, ``versions`` and ``date`` of a result file, in that order."""
    return {"device": device, "versions": versions, "date": utc_date()}


def out_dir(default: Path) -> Path:
    """``$OUT`` if set (device runs), else ``default``; created if missing."""
    path = Path(os.environ.get("OUT") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def time_ms(fn: Callable[[], Any], warmup_ms: int = 10, rep_ms: int = 40) -> list[float]:
    """Every repetition's time in ms: CUDA events around each call, L2 flushed before each."""
    from triton.testing import do_bench

    return [float(t) for t in do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")]


def median(xs: Iterable[float]) -> float:
    """The median as a plain float (JSON-friendly)."""
    return float(statistics.median(list(xs)))


def geomean(xs: Iterable[float]) -> float:
    """Geometric mean of the positive finite values (NaN when there are none)."""
    vals = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else float("nan")


def _cell(v: Any, blank: str | None) -> str:
    if blank is not None and (v is None or (isinstance(v, float) and not math.isfinite(v))):
        return blank
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(
    rows: list[dict[str, Any]], columns: list[str], title: str = "", *, blank: str | None = "-"
) -> None:
    """A fixed-width table of ``rows`` (dicts) restricted to ``columns``.

    Args:
        rows: one dict per line.
        columns: the keys to show, in order.
        title: printed above the table when given.
        blank: what a missing key, ``None`` or a non-finite float prints as; ``None`` prints
            such values as they are (``nan``, ``None``) and a missing key as nothing.
    """
    missing = "" if blank is None else None
    cells = [[_cell(r.get(c, missing), blank) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if title:
        print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_json(path: Path, payload: dict[str, Any], *, announce: bool = True) -> Path:
    """Write ``payload`` as indented JSON (unknown objects as ``str``); say so unless told not."""
    path.write_text(json.dumps(payload, indent=1, default=str))
    if announce:
        print(f"wrote {path}")
    return path


def write_results(path: Path, head: dict[str, Any], results: Any, **extra: Any) -> Path:
    """Write ``head`` (see :func:`header`), then ``extra``, then ``results`` as one JSON file."""
    return write_json(path, {**head, **extra, "results": results})


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_lines(
    path: Path,
    panels: Panels,
    xlabel: str,
    ylabel: str,
    logx: bool = True,
    logy: bool = False,
    panel_size: tuple[float, float] = (4.2, 3.2),
) -> Path | None:
    """One subplot per panel, one line per series of (x, y) points; skipped without matplotlib.

    Args:
        path: the PNG to write.
        panels: panel title -> series name -> (x, y) points (non-finite y are dropped).
        xlabel, ylabel: axis labels of every panel.
        logx: x on a log2 axis.
        logy: y on a log10 axis.
        panel_size: width and height of one panel in inches.
    """
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no plot")
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False
    )
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


BarPanels = dict[str, dict[str, dict[str, float]]]


def plot_bars(
    path: Path,
    panels: BarPanels,
    ylabel: str,
    hline: float | None = None,
    panel_size: tuple[float, float] = (5.5, 3.4),
    title: str = "",
) -> Path | None:
    """One subplot per panel of grouped bars (one bar per series); skipped without matplotlib.

    Args:
        path: the PNG to write.
        panels: panel title -> series name -> category -> value (non-finite values are left out).
        ylabel: the y-axis label of every panel.
        hline: draw a dashed reference line at this y (e.g. 1.0 for ratios).
        panel_size: width and height of one panel in inches.
        title: the figure's title (device, versions, date), when given.
    """
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no plot")
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False
    )
    for ax, (panel_title, series) in zip(axes.flat, panels.items(), strict=False):
        cats = list(dict.fromkeys(c for values in series.values() for c in values))
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            finite = [j for j, c in enumerate(cats) if math.isfinite(values.get(c, math.nan))]
            xs = [j + i * width for j in finite]
            ys = [values[cats[j]] for j in finite]
            ax.bar(xs, ys, width=width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
        ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=7)
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(panel_title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path
