"""Benchmark plumbing of bi-cutlass-fp8: source paths and this package's JSON header.

Timing, the table, the JSON writer and the plots are the repository's shared
``benchmarks/_report.py`` (one JSON shape for all results: top-level ``device``, ``versions``,
``date`` and ``results``; each result row holds the measured median, every repetition and its
ratios to the baselines); this module adds what is particular to this package.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
PACKAGES = PACKAGE.parent
REPO = PACKAGES.parent

if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

import _report  # noqa: E402
from _report import geomean, median, print_table, time_ms  # noqa: E402

__all__ = [
    "PACKAGE",
    "PACKAGES",
    "add_src_paths",
    "environment",
    "geomean",
    "median",
    "out_dir",
    "plot_panels",
    "print_table",
    "time_ms",
    "write_json",
]


def add_src_paths() -> None:
    """Put this package, ir-dispatch and bi-triton-ascend (the dequant baseline) on sys.path."""
    for name in ("bi-triton-ascend", "ir-dispatch", "bi-cutlass-fp8"):
        src = PACKAGES / name / "src"
        if src.is_dir() and str(src) not in sys.path:
            sys.path.insert(0, str(src))


def out_dir() -> Path:
    """``$OUT`` on the device machine, else ``bench/results``."""
    return _report.out_dir(HERE / "results")


def environment() -> dict[str, Any]:
    """Device, versions and date for the JSON header."""
    import torch

    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for module in ("triton", "bi_cutlass_fp8", "ir_dispatch"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # missing or broken optional module: record it as absent
            versions[module] = None
    try:
        from bi_cutlass_fp8 import _jit

        versions["nvidia_cutlass"] = _jit.cutlass_version()
    except Exception:
        versions["nvidia_cutlass"] = None
    return _report.header(_report.cuda_device(platform.machine()), versions)


def write_json(path: Path, results: Any, **extra: Any) -> Path:
    """``results`` under this package's header (plus ``extra``) as one JSON file."""
    return _report.write_results(path, environment(), results, **extra)


def plot_panels(path: Path, panels: _report.Panels, ylabel: str) -> Path | None:
    """One subplot per panel (x = M, log2), one line per series; skipped without matplotlib."""
    return _report.plot_lines(path, panels, "M (tokens)", ylabel, panel_size=(4.4, 3.4))
