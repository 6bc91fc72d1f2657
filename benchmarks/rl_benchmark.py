"""Issue #13's benchmark as one result: the trainer's cost and the rollout's speed, one GPU run.

The two halves come from their own scripts, run back to back on one machine:

* the trainer: ``packages/bi-train/bench/bench_trainer.py`` (fwd + bwd of a packed 16 x 2048 row,
  ``bi`` under ``batch_invariant()`` against plain ``transformers``);
* the rollout: ``benchmarks/vllm_serving.py --loads decode-heavy,single-stream --modes
  default,plugin`` with ``VLLM_BI_ATTENTION=1`` (the kit attention, as the RL check's rollouts),
  ideally with ``--rounds 2`` so that engine drift cancels.

This script joins their files into one in the common shape (``device``, ``versions``, ``date``,
``results``: each row with its value, every repetition, ``ratio_vs_default`` and the issue's
target) and says whether every target is met: the trainer at most 1.5x the default's time, the
rollout at least 0.95x default vLLM's speed on every load. It refuses files from different
GPUs, and a rollout file without both modes on a load::

    python benchmarks/rl_benchmark.py --trainer bench_trainer.json --rollout vllm_rollout.json \\
        --out benchmarks/results/rl_benchmark_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

TRAINER_MAX_TIME_RATIO = 1.5  # issue #13: the trainer at most 1.5x the default's time
ROLLOUT_MIN_SPEED_RATIO = 0.95  # issue #13: the rollout at least 0.95x default vLLM's speed
ROLLOUT_LOADS = ("decode-heavy", "single-stream")


class InputError(ValueError):
    """A result file that cannot be part of issue #13's benchmark (says which and why)."""


def gpu_name(device: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` from either script's device line (they word the rest apart)."""
    return device.split(" (", 1)[0].strip()


def trainer_row(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``bi`` trainer's row: tokens/s, every repetition, speed and time ratios to default."""
    rows = {r.get("trainer"): r for r in doc.get("results", [])}
    ours, default = rows.get("bi"), rows.get("hf_default")
    if ours is None or default is None:
        raise InputError("--trainer: needs the rows 'bi' and 'hf_default' of bench_trainer.py")
    speed = ours["tokens_per_s"] / default["tokens_per_s"]
    return {
        "part": "trainer", "load": f"fwd+bwd, packed {doc.get('batch')} x {doc.get('seq_len')}",
        "mode": "bi-train", "value": ours["tokens_per_s"], "unit": "tokens/s",
        "reps": ours["reps_s"], "reps_unit": "s", "default_value": default["tokens_per_s"],
        "ratio_vs_default": speed, "time_ratio_vs_default": 1.0 / speed,
        "target": f"time <= {TRAINER_MAX_TIME_RATIO}x default's",
        "met": 1.0 / speed <= TRAINER_MAX_TIME_RATIO,
    }  # fmt: skip


def rollout_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per rollout load: the plugin's median against default's, with every repetition."""
    out = []
    rows = doc.get("results", [])
    for load in ROLLOUT_LOADS:
        here = [r for r in rows if r.get("load") == load]
        default = [r for r in here if r.get("mode") == "default"]
        ours = [r for r in here if str(r.get("mode", "")).startswith("plugin")]
        if len(default) != 1 or len(ours) != 1:
            raise InputError(
                f"--rollout: load {load!r} needs one 'default' row and one 'plugin' row; "
                f"found modes {[r.get('mode') for r in here]}"
            )
        (base,), (row,) = default, ours
        ratio = row.get("ratio_vs_default")
        if ratio is None:
            raise InputError(f"--rollout: load {load!r} has no ratio (a failed engine?)")
        out.append({
            "part": "rollout", "load": load, "mode": row["mode"], "value": row["median"],
            "unit": row["unit"], "reps": row["reps"], "default_value": base["median"],
            "default_reps": base["reps"], "engine_medians": row.get("engine_medians"),
            "default_engine_medians": base.get("engine_medians"), "ratio_vs_default": ratio,
            "target": f"speed >= {ROLLOUT_MIN_SPEED_RATIO}x default's",
            "met": ratio >= ROLLOUT_MIN_SPEED_RATIO,
        })  # fmt: skip
    return out


def combine(trainer: dict[str, Any], rollout: dict[str, Any]) -> dict[str, Any]:
    """Issue #13's result document from the two scripts' documents."""
    devices = {gpu_name(str(d.get("device", "?"))) for d in (trainer, rollout)}
    if len(devices) != 1:
        raise InputError(f"the two files come from different GPUs: {sorted(devices)}")
    rows = [trainer_row(trainer), *rollout_rows(rollout)]
    return {
        "device": rollout.get("device"),
        "versions": {**trainer.get("versions", {}), **rollout.get("versions", {})},
        "date": max(str(trainer.get("date")), str(rollout.get("date"))),
        "sources": {"trainer": trainer.get("date"), "rollout": rollout.get("date")},
        "results": rows,
        "summary": {"met": all(r["met"] for r in rows)},
    }


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Bars of the speed ratio to default per part and load, with the rollout target's line."""
    values = {f"{r['part']}: {r['load']}": r["ratio_vs_default"] for r in doc["results"]}
    title = f"{doc.get('device')}, {doc.get('date')}"
    return _report.plot_bars(
        path, {"issue #13: speed vs default (>1 = faster)": {"batch-invariant": values}},
        ylabel="speed vs default", hline=ROLLOUT_MIN_SPEED_RATIO, title=title,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", type=Path, required=True, help="bench_trainer.py's JSON")
    parser.add_argument("--rollout", type=Path, required=True, help="vllm_serving.py's JSON")
    parser.add_argument("--out", type=Path, required=True, help="the combined JSON to write")
    args = parser.parse_args(argv)
    docs = []
    for name, path in (("--trainer", args.trainer), ("--rollout", args.rollout)):
        if not path.is_file():
            parser.error(f"{name} {path}: no such file")
        docs.append(json.loads(path.read_text()))
    try:
        doc = combine(*docs)
    except InputError as exc:
        parser.error(str(exc))
    _report.write_json(args.out, doc)
    _report.print_table(
        doc["results"], ["part", "load", "mode", "value", "unit", "ratio_vs_default", "met"],
        "issue #13: trainer and rollout against default",
    )  # fmt: skip
    print("every target met:", doc["summary"]["met"])
    plot(doc, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
