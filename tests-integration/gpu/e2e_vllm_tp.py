"""End to end at tensor_parallel_size=2: batch invariance per mode, and TP=1 vs TP=2 bits.

For a lent 2-GPU machine with vLLM 0.26 staged (``source scripts/gpu/env.sh`` first: our
packages run from ``packages/*/src`` on ``PYTHONPATH``, nothing installed). A random-weight
Qwen3 (0.6B and/or 8B widths, few layers) is written with ``transformers``; every engine runs in
its own process (``python -m vllm_bi_plugin.needle``) under a timeout:

``batch``
    TP=2 in modes ``default`` / ``vllm-bi`` / ``plugin`` and ``plugin`` with
    ``VLLM_BI_TP_INVARIANT=1``: the needle alone vs inside batches of 2..256 (front, middle,
    back), bitwise.
``tp``
    TP=1 vs TP=2, the needle alone: ``plugin`` with ``VLLM_BI_TP_INVARIANT=1`` (expected
    identical tokens and logprobs) and without it (expected to differ).

TP=2 starts worker processes even with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; they are spawned
(``VLLM_WORKER_MULTIPROC_METHOD=spawn``) and find the plugin through vLLM's entry points, so
plugin-mode children get a throw-away ``.dist-info`` that declares the entry point on their
``PYTHONPATH`` (the sources are not installed on the lent machine).

Writes ``$OUT/e2e_vllm_tp.json`` (or ``--out``): top-level ``device``, ``versions``, ``date``,
``results`` (one row per shape, experiment, mode, TP size, batch size and position, plus one
row per TP=1 vs TP=2 comparison with its ``expected`` outcome) and ``summary`` (one entry per
engine: engine start, wall time, the plugin's log line, or the error and log tail).
Exit status 1 if a batch-invariant mode differs from its needle alone or an expectation fails.

Engines that would start after ``--deadline`` seconds (default 510, counted from the start,
under the device tool's 10 minutes) are skipped and recorded as such.

Example (about 5-8 minutes on 2 H100s)::

    source scripts/gpu/env.sh
    python tests-integration/gpu/e2e_vllm_tp.py --shapes 0.6b,8b --parallel 6
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_vllm_gpu as base  # device_name, versions, SHAPES: one definition

from vllm_bi_plugin.modes import TP_ENGINE_DEFAULTS, TP_ENV, write_entry_point

BATCH_SIZES = [2, 7, 16, 33, 64, 129, 256]
TP_INVARIANT_ENV = "VLLM_BI_TP_INVARIANT"
KV_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class Engine:
    """One engine process: mode, TP size, TP-invariant switch, and what it runs."""

    shape: str
    mode: str
    tp: int
    tp_invariant: bool
    batches: bool

    @property
    def label(self) -> str:
        # Letters, digits, '.', '_' and '-' only: the device tool brings back no other file names.
        inv = "_tpinv" if self.tp_invariant else ""
        return f"{self.shape}-{self.mode}{inv}-tp{self.tp}"

    @property
    def mode_label(self) -> str:
        return self.mode + ("+tp-invariant" if self.tp_invariant else "")


def plan(shapes: list[str]) -> list[Engine]:
    """The engines of both experiments; the TP=2 plugin runs serve both.

    The plugin's engines come first: when ``--deadline`` cuts the run short, the controls
    (vLLM's own mode, default) are the ones skipped.
    """
    engines = []
    for shape in shapes:
        engines.append(Engine(shape, "plugin", 2, True, True))
        engines += [Engine(shape, m, 2, False, True) for m in ("plugin", "vllm-bi", "default")]
        engines += [Engine(shape, "plugin", 1, inv, False) for inv in (True, False)]
    return engines


BASE_PORT = 31000
PORT_STRIDE = 50
_ENGINE_INDEX: dict[Any, int] = {}


def engine_index(engine: Any) -> int:
    """The engine's place in this run's plan (fixed once the plan is made)."""
    return _ENGINE_INDEX.get(engine, 0)


def child_env(engine: Engine, gpus: str, ep_dir: Path, log: Path) -> dict[str, str]:
    from vllm_bi_plugin.modes import tp_mode_env

    env = tp_mode_env(engine.mode, ep_dir)  # TP=1 engines get the same, for comparability
    env.pop(TP_INVARIANT_ENV, None)
    if engine.tp_invariant:
        env[TP_INVARIANT_ENV] = "1"
    env["NCCL_DEBUG"] = "WARN"
    env["CUDA_VISIBLE_DEVICES"] = gpus
    # Engines that start side by side must not race for the same rendezvous ports: vLLM scans
    # upward from VLLM_PORT, so each engine gets its own range.
    env["VLLM_PORT"] = str(BASE_PORT + PORT_STRIDE * engine_index(engine))
    env["VLLM_CACHE_ROOT"] = str(Path(tempfile.gettempdir(), "vllm-cache-tp", log.stem))
    return env


def run_engine(
    engine: Engine, model: Path, args: argparse.Namespace, ep_dir: Path, gpus: str
) -> dict[str, Any]:
    """Run one engine's needle experiment in its own process."""
    from vllm_bi_plugin.needle import NeedleConfig, run_in_child

    budget = args.deadline_at - time.monotonic()
    if budget < 90:  # not enough left for an engine start: record it rather than overrun
        return {"error": "skipped: --deadline reached", "log_tail": "", "wall": 0.0}
    sizes = [b for b in BATCH_SIZES if b <= args.max_batch] if engine.batches else [2]
    cfg = NeedleConfig(
        model=str(model),
        batch_sizes=sizes,
        positions=["front", "middle", "back"] if engine.batches else ["middle"],
        other_lens=(8, 256),
        max_tokens=args.max_tokens,
        vocab_size=base.SHAPES[engine.shape]["vocab_size"],
        engine={
            "max_model_len": 2048,
            "tensor_parallel_size": engine.tp,
            "enable_prefix_caching": False,
            "gpu_memory_utilization": 0.08,
            "kv_cache_memory_bytes": KV_CACHE_BYTES,
            **TP_ENGINE_DEFAULTS,
            **args.engine,
        },
        register_plugin=False,  # every process finds the entry point (write_entry_point)
    )
    log = args.log_dir / f"{engine.label}.log"
    env = child_env(engine, gpus, ep_dir, log)
    done = run_in_child(cfg, env, log, min(args.timeout, budget))
    wall = done.wall_seconds
    if done.result is None:
        return {"error": f"exit {done.code}", "log_tail": done.log_tail, "wall": wall}
    result = done.result
    result["wall"] = wall
    return result


def batch_rows(engine: Engine, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in result["cases"]:
        tps = c["generated_tokens"] / c["seconds"] if c["seconds"] else None
        rows.append(
            {
                "shape": engine.shape, "experiment": "needle_in_batch", "mode": engine.mode_label,
                "tp": engine.tp, "batch_size": c["batch_size"], "position": c["position"],
                "identical": c["identical"], "tokens_equal": c["tokens_equal"],
                "max_abs_logprob_diff": c["max_abs_logprob_diff"],
                "first_diff_step": c["first_diff_step"], "expected": (
                    "any" if engine.mode == "default" else "identical"
                ),
                "value": tps, "unit": "generated tokens/s (whole batch)",
            }
        )  # fmt: skip
    return rows


def tp_row(shape: str, inv: bool, one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    from vllm_bi_plugin.needle import compare

    verdict = compare(one["alone"], two["alone"])
    return {
        "shape": shape,
        "experiment": "tp1_vs_tp2",
        "mode": "plugin+tp-invariant" if inv else "plugin",
        "tp": "1 vs 2",
        **verdict,
        "expected": "identical" if inv else "differ",
        "tokens": {"tp1": one["alone"]["tokens"][:8], "tp2": two["alone"]["tokens"][:8]},
    }


def judge(doc: dict[str, Any]) -> bool:
    """Whether every batch-invariant row and every TP expectation holds."""
    ok = True
    for r in doc["results"]:
        if r["expected"] == "identical" and not r["identical"]:
            ok = False
        if r["expected"] == "differ" and r["identical"]:
            ok = False  # the experiment lost its control: report it, do not hide it
    return ok and not any("error" in s for s in doc["summary"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "e2e_vllm_tp.json"
    )
    parser.add_argument("--shapes", default="0.6b,8b", help=f"of {sorted(base.SHAPES)}")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=360.0, help="seconds per engine")
    parser.add_argument(
        "--deadline", type=float, default=510.0, help="seconds in all; later engines are skipped"
    )
    parser.add_argument("--parallel", type=int, default=6, help="engine processes at a time")
    parser.add_argument(
        "--tp2-parallel", type=int, default=1, help="TP=2 engines at a time (default 1)"
    )
    parser.add_argument("--engine", type=json.loads, default={}, help="extra vllm.LLM kwargs")
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "vllm-bi-gpu-models"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="default: <out dir>/tp-logs")
    args = parser.parse_args(argv)
    args.deadline_at = time.monotonic() + args.deadline  # counts the model writing too
    shapes = [s for s in args.shapes.split(",") if s]
    bad = [s for s in shapes if s not in base.SHAPES]
    if bad or not shapes:
        parser.error(f"--shapes: unknown {bad}; expected some of {sorted(base.SHAPES)}")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.tp2_parallel < 1:
        parser.error(f"--tp2-parallel must be >= 1, got {args.tp2_parallel}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.log_dir = args.log_dir or args.out.parent / "tp-logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)

    from vllm_bi_plugin.models import Qwen3Shape, write_random_qwen3

    models, dims = {}, {}
    for shape in shapes:
        dims[shape] = Qwen3Shape(num_layers=args.layers, **base.SHAPES[shape])
        models[shape] = write_random_qwen3(args.model_dir / dims[shape].name, dims[shape])
    ep_dir = write_entry_point(Path(tempfile.mkdtemp(prefix="vllm-bi-ep-")))
    engines = plan(shapes)
    # Largest engines first; TP=1 engines take the two GPUs in turn, TP=2 engines both.
    engines.sort(key=lambda e: (-e.tp, shapes.index(e.shape)))
    _ENGINE_INDEX.update({e: i for i, e in enumerate(engines)})
    t0 = time.perf_counter()
    # TP=2 engines span both GPUs: at most --tp2-parallel of them at a time (on 2026-11-25 four
    # side by side all died together with illegal memory accesses); TP=1 engines fill in.
    tp2_slots = threading.Semaphore(args.tp2_parallel)

    def run(e: Engine, gpus: str) -> dict[str, Any]:
        if e.tp == 1:
            return run_engine(e, models[e.shape], args, ep_dir, gpus)
        with tp2_slots:
            return run_engine(e, models[e.shape], args, ep_dir, gpus)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {
            pool.submit(run, e, "0,1" if e.tp == 2 else str(i % 2)): e
            for i, e in enumerate(engines)
        }
        results = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}

    doc: dict[str, Any] = {
        "device": base.device_name() + " x2",
        "versions": base.versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "models": {s: asdict(d) for s, d in dims.items()},
        "engine": {**TP_ENGINE_DEFAULTS, **args.engine},
        "child_env": {**TP_ENV, "NCCL_DEBUG": "WARN"},
        "wall_seconds": time.perf_counter() - t0,
        "results": [],
        "summary": [],
    }
    for e in engines:
        r = results[e]
        entry = {"engine": e.label, "mode": e.mode_label, "tp": e.tp, "shape": e.shape}
        if "error" in r:
            doc["summary"].append({**entry, **r})
            print(f"== {e.label}: FAILED {r['error']}\n{r['log_tail'][-1500:]}", flush=True)
            continue
        doc["summary"].append(
            {**entry, "engine_seconds": r["engine_seconds"], "wall_seconds": r["wall"],
             "plugin": r["plugin"]}
        )  # fmt: skip
        if e.batches:
            rows = batch_rows(e, r)
            doc["results"].extend(rows)
            same = sum(x["identical"] for x in rows)
            print(f"== {e.label}: needle identical in {same}/{len(rows)} batches", flush=True)
    for shape in shapes:
        for inv in (True, False):
            one = results[Engine(shape, "plugin", 1, inv, False)]
            two = results[Engine(shape, "plugin", 2, inv, True)]
            if "error" in one or "error" in two:
                continue
            row = tp_row(shape, inv, one, two)
            doc["results"].append(row)
            print(
                f"== {shape} TP=1 vs TP=2, {row['mode']}: identical={row['identical']} "
                f"(expected {row['expected']}, max |dlogprob| {row['max_abs_logprob_diff']:.3g})",
                flush=True,
            )
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out} after {doc['wall_seconds']:.0f} s")
    return 0 if judge(doc) else 1


if __name__ == "__main__":
    raise SystemExit(main())
