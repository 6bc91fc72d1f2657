"""End to end on a GPU: the needle alone vs inside batches, plugin vs vLLM's own mode vs default.

For the lent H100 with vLLM 0.26.0 staged as in ``shared/gpu-vllm/README.md``. A random-weight
Qwen3 at the 0.6B shape (4 layers by default; ``--shape 8b`` for Qwen3-8B's width) is written
with ``transformers``; each (mode, case) then runs in its own process
(``python -m vllm_bi_plugin.needle``) with vLLM's defaults (torch.compile + CUDA graphs):

modes
    ``default``   ``VLLM_BATCH_INVARIANT`` unset.
    ``vllm-bi``   ``VLLM_BATCH_INVARIANT=1`` with the plugin kept out (``VLLM_PLUGINS=none``).
    ``plugin``    ``VLLM_BATCH_INVARIANT=1`` with vllm-bi-plugin (through its entry point when
                  installed with metadata, else registered by the child before the engine).
cases
    ``cold``      batches of 2..256 at front/middle/back, nothing cached.
    ``prefix``    prefix caching on; the needle runs alone twice first, so its prefix is cached.
    ``chunked``   ``max_num_batched_tokens=128`` with a 300-token needle: its prefill spans steps.
    ``fp8``       ``quantization="fp8"`` on the bf16 random weights.

Writes ``$OUT/e2e_vllm_gpu.json`` (or ``--out``): top-level ``device``, ``versions``, ``date``,
``results`` (one row per mode, case, batch size and position: identical or not, the largest
logprob difference, tokens/s with every repetition and the ratio to default's), and
``summary`` (per mode and case: identical placements, engine start, the plugin's log line).
Rows of earlier calls in the same file are kept, so the cases can be split over several calls.
Exit status 1 if a batch-invariant mode ever differs from its needle alone.

Example (one device call per case keeps each under the 10-minute limit)::

    export PYTHONPATH=/tmp/vllm-site:packages/ir-dispatch/src:packages/bi-triton-ascend/src:\\
packages/bi-cutlass-fp8/src:packages/vllm-bi-plugin/src
    python tests-integration/gpu/e2e_vllm_gpu.py --cases cold,prefix --parallel 6 --gpus 0,1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vllm_bi_plugin.modes import MODES

BATCH_SIZES = [2, 7, 16, 33, 64, 129, 256]
SHAPES = {
    # Qwen3-0.6B and Qwen3-8B widths; fewer layers keep engine starts short.
    "0.6b": {"hidden_size": 1024, "num_heads": 16, "num_kv_heads": 8, "head_dim": 128,
             "intermediate_size": 3072, "vocab_size": 151936},
    "8b": {"hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
           "intermediate_size": 12288, "vocab_size": 151936},
}  # fmt: skip
CASES: dict[str, dict[str, Any]] = {
    "cold": {"batch_sizes": BATCH_SIZES, "engine": {"enable_prefix_caching": False}},
    "prefix": {
        "batch_sizes": [9, 64, 256],
        "cached_reference": True,
        "engine": {"enable_prefix_caching": True},
    },
    "chunked": {
        "batch_sizes": [9, 64, 256],
        "needle_len": 300,
        "engine": {
            "enable_chunked_prefill": True,
            "max_num_batched_tokens": 128,
            "enable_prefix_caching": False,
        },
    },
    "fp8": {
        "batch_sizes": [9, 64, 256],
        "engine": {"quantization": "fp8", "enable_prefix_caching": False},
    },
}
GPU_ENGINE = {"max_model_len": 2048}
KV_CACHE_BYTES = 4 << 30
"""Fixed KV cache per engine: skips vLLM's memory profiling, which misreads memory that
concurrent engines on the same GPU allocate or free while it measures."""


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in (
        "vllm",
        "torch",
        "triton",
        "transformers",
        "vllm-bi-plugin",
        "ir-dispatch",
        "bi-triton-ascend",
        "bi-cutlass-fp8",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    for module, dist in (
        ("vllm", "vllm"),
        ("vllm_bi_plugin", "vllm-bi-plugin"),
        ("ir_dispatch", "ir-dispatch"),
    ):
        if out.get(dist) is None:
            with contextlib.suppress(Exception):  # not importable here: leave None
                out[dist] = getattr(__import__(module), "__version__", None)
    return out


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} (sm{p.major}{p.minor}, {p.multi_processor_count} SMs)"


def engine_memory(jobs_per_gpu: int) -> dict[str, Any]:
    """Memory settings that let ``jobs_per_gpu`` engines start side by side on one GPU.

    With ``kv_cache_memory_bytes`` set, ``gpu_memory_utilization`` only gates the start (free
    memory must exceed that share of the card), so it is kept small when engines share a card.
    """
    share = 0.6 if jobs_per_gpu == 1 else 0.08
    return {"gpu_memory_utilization": share, "kv_cache_memory_bytes": KV_CACHE_BYTES}


def run_one(
    model: Path,
    mode: str,
    case: str,
    args: argparse.Namespace,
    log_dir: Path,
    gpu: str | None = None,
) -> dict[str, Any]:
    """Run one (mode, case) needle experiment in its own process, on ``gpu`` if given."""
    from vllm_bi_plugin.modes import mode_env, needs_register_in_child
    from vllm_bi_plugin.needle import NeedleConfig, run_in_child

    spec = CASES[case]
    batch_sizes = [b for b in spec["batch_sizes"] if b <= args.max_batch]
    cfg = NeedleConfig(
        model=str(model),
        batch_sizes=batch_sizes,
        needle_len=spec.get("needle_len", 160),
        other_lens=(8, 256),
        max_tokens=args.max_tokens,
        vocab_size=SHAPES[args.shape]["vocab_size"],
        engine={**GPU_ENGINE, **engine_memory(args.jobs_per_gpu), **spec["engine"], **args.engine},
        cached_reference=spec.get("cached_reference", False),
        register_plugin=needs_register_in_child(mode),
    )
    log = log_dir / f"{args.shape}-{case}-{mode}.log"
    env = mode_env(mode)
    # One compile cache per engine: engines that start side by side must not race on one.
    env["VLLM_CACHE_ROOT"] = str(Path(tempfile.gettempdir(), "vllm-cache", log.stem))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    done = run_in_child(cfg, env, log, args.timeout)
    wall = done.wall_seconds
    if done.result is None:
        return {"error": f"exit {done.code}", "log_tail": done.log_tail, "wall_seconds": wall}
    result = done.result
    result["wall_seconds"] = wall
    result["plugin_loaded_by"] = (
        None
        if mode != "plugin"
        else ("vllm entry point" if not cfg.register_plugin else "register() in the child")
    )
    return result


def rows_for(case: str, mode: str, result: dict[str, Any], shape: str) -> list[dict[str, Any]]:
    rows = []
    for c in result["cases"]:
        tps = c["generated_tokens"] / c["seconds"] if c["seconds"] else None
        rows.append(
            {
                "shape": shape, "case": case, "mode": mode, "batch_size": c["batch_size"],
                "position": c["position"], "identical": c["identical"],
                "tokens_equal": c["tokens_equal"],
                "max_abs_logprob_diff": c["max_abs_logprob_diff"],
                "first_diff_step": c["first_diff_step"],
                "value": tps, "unit": "generated tokens/s (whole batch)", "reps": [tps],
                "seconds": c["seconds"], "generated_tokens": c["generated_tokens"],
            }
        )  # fmt: skip
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    base = {
        (r["shape"], r["case"], r["batch_size"], r["position"]): r["value"]
        for r in rows
        if r["mode"] == "default" and r.get("value")
    }
    for r in rows:
        b = base.get((r["shape"], r["case"], r["batch_size"], r["position"]))
        r["ratio_vs_default"] = (r["value"] / b) if (b and r.get("value")) else None


def record(doc: dict[str, Any], shape: str, case: str, mode: str, result: dict[str, Any]) -> bool:
    """Put one (mode, case) outcome into ``doc``; return whether it breaks batch invariance."""

    def other(row: dict[str, Any]) -> bool:
        return not (row["shape"] == shape and row["case"] == case and row["mode"] == mode)

    doc["results"] = [r for r in doc["results"] if other(r)]
    doc["summary"] = [s for s in doc["summary"] if other(s)]
    if "error" in result:
        print(f"== {shape} {case} / {mode}: FAILED {result['error']}", flush=True)
        print(result["log_tail"][-1500:], flush=True)
        doc["summary"].append({"shape": shape, "case": case, "mode": mode, **result})
        return mode != "default"
    rows = rows_for(case, mode, result, shape)
    doc["results"].extend(rows)
    same = sum(r["identical"] for r in rows)
    again = result.get("alone_again")
    doc["summary"].append(
        {
            "shape": shape, "case": case, "mode": mode, "identical": same,
            "placements": len(rows),
            "alone_again_identical": None if again is None else again["identical"],
            "engine_seconds": result["engine_seconds"],
            "wall_seconds": result["wall_seconds"],
            "plugin": result["plugin"], "plugin_loaded_by": result["plugin_loaded_by"],
            "kit_providers": result.get("kit_providers"),
        }
    )  # fmt: skip
    print(
        f"== {shape} {case} / {mode}: identical {same}/{len(rows)}; "
        f"engine {result['engine_seconds']:.0f} s",
        flush=True,
    )
    return mode != "default" and (
        same != len(rows) or (again is not None and not again["identical"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "e2e_vllm_gpu.json"
    )
    parser.add_argument("--cases", default="cold,prefix,chunked,fp8")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=256, help="drop batch sizes above this")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per engine process")
    parser.add_argument("--log-dir", type=Path, default=None, help="default: <out dir>/e2e-logs")
    parser.add_argument("--parallel", type=int, default=1, help="engine processes at a time")
    parser.add_argument(
        "--gpus", default="", help="GPU ids the processes take in turn, e.g. 0,1 (default: all)"
    )
    parser.add_argument(
        "--engine",
        type=json.loads,
        default={},
        help="extra vllm.LLM keyword arguments as JSON, e.g. '{\"gpu_memory_utilization\": 0.5}'",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "vllm-bi-gpu-models"
    )
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    n_gpus = max(1, len([g for g in args.gpus.split(",") if g]))
    args.jobs_per_gpu = -(-args.parallel // n_gpus)
    cases = [c for c in args.cases.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [c for c in cases if c not in CASES] + [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown cases/modes {unknown}; cases: {sorted(CASES)}, modes: {MODES}")

    from vllm_bi_plugin.models import Qwen3Shape, write_random_qwen3

    shape = Qwen3Shape(num_layers=args.layers, max_position_embeddings=4096, **SHAPES[args.shape])
    model = write_random_qwen3(args.model_dir / shape.name, shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.log_dir or args.out.parent / "e2e-logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    doc: dict[str, Any] = {
        "device": None,
        "versions": None,
        "date": None,
        "results": [],
        "summary": [],
    }
    if args.out.exists():
        doc = json.loads(args.out.read_text())
    doc["device"], doc["versions"] = device_name(), versions()
    doc["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc["model"] = asdict(shape)
    doc.setdefault("models", {})[args.shape] = asdict(shape)
    doc["engines_side_by_side"] = args.parallel
    if args.parallel > 1:
        doc["timing_note"] = (
            f"{args.parallel} engines shared the GPUs: the tokens/s here are no speed "
            "measurement (benchmarks/vllm_serving.py is)"
        )
    jobs = [(case, mode) for case in cases for mode in modes]
    gpus = [g for g in args.gpus.split(",") if g] or [None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {
            pool.submit(run_one, model, mode, case, args, log_dir, gpus[i % len(gpus)]): (
                case,
                mode,
            )
            for i, (case, mode) in enumerate(jobs)
        }
        outcomes = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}
    failed = False
    for case, mode in jobs:
        failed = record(doc, args.shape, case, mode, outcomes[case, mode]) or failed
    add_ratios(doc["results"])
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
