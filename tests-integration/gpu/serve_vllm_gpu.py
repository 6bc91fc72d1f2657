"""``vllm serve`` on the GPU: 64 concurrent requests give the needle the offline engine's bits.

For a lent GPU machine with vLLM 0.26 staged (``source scripts/gpu/env.sh`` first: our
packages run from ``packages/*/src``). A random-weight Qwen3 (0.6B width, ``--layers`` layers)
is written with ``transformers``; then, per mode (``plugin``, and ``default`` as the control
that must be able to differ):

1. the offline engine (``python -m vllm_bi_plugin.needle`` in its own process) generates the
   needle's greedy tokens with logprobs alone;
2. vLLM's OpenAI-compatible server starts on loopback with the same engine settings (its
   default multi-process engine: the plugin loads in the server and in the engine core,
   through an entry point written by :func:`vllm_bi_plugin.modes.write_entry_point`);
3. the needle is sent alone, then inside a burst of ``--concurrent`` requests (the needle at
   the front, middle and back, mixed-length others), all at once.

Each served needle is compared bitwise with the offline one. Writes ``$OUT/serve_vllm_gpu.json``
(or ``--out``): ``device``, ``versions``, ``date``, ``results`` (one row per mode and needle
position, with ``expected``: ``identical`` for the plugin, ``any`` for default) and ``summary``
(per mode: engine and server start, the plugin's log line, errors). Exit status 1 if a plugin
row differs or a step failed.

Example (about 4 minutes on one H100)::

    source scripts/gpu/env.sh && python tests-integration/gpu/serve_vllm_gpu.py
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_vllm_gpu as base  # device_name, versions, SHAPES: one definition

from vllm_bi_plugin.modes import entry_point_env, write_entry_point
from vllm_bi_plugin.needle import NeedleConfig, compare, make_prompts

MAX_MODEL_LEN = 2048
KV_CACHE_BYTES = 4 << 30
GPU_MEMORY_UTILIZATION = 0.3  # a start gate only: the KV cache size is fixed above
SERVER_MARKER = "vllm-bi-plugin: batch-invariant mode on"


def needle_config(model: Path, args: argparse.Namespace) -> NeedleConfig:
    return NeedleConfig(
        model=str(model),
        batch_sizes=[2],
        positions=["middle"],
        other_lens=(8, 256),
        max_tokens=args.max_tokens,
        vocab_size=base.SHAPES[args.shape]["vocab_size"],
        engine={
            "max_model_len": MAX_MODEL_LEN,
            "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
            "kv_cache_memory_bytes": KV_CACHE_BYTES,
        },
        register_plugin=False,  # the entry point on PYTHONPATH loads it (see child_env)
    )


def child_env(mode: str, entry_points: Path, multiprocess: bool) -> dict[str, str]:
    """``mode``'s environment; plugin children find the plugin through ``entry_points``."""
    env = entry_point_env(mode, entry_points)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocess else "0"
    return env


def offline_alone(
    cfg: NeedleConfig, mode: str, entry_points: Path, log: Path, timeout_s: float
) -> dict[str, Any]:
    """The needle alone through ``vllm.LLM`` in a child process (tokens, logprobs)."""
    from vllm_bi_plugin.needle import run_in_child

    done = run_in_child(cfg, child_env(mode, entry_points, multiprocess=False), log, timeout_s)
    if done.result is None:
        raise RuntimeError(f"offline engine exit {done.code}:\n{done.log_tail[-3000:]}")
    return done.result


def burst_of(needle: list[int], others: list[list[int]], size: int) -> tuple[list, dict]:
    """``size`` prompts with the needle at the front, middle and back; its indices by name."""
    where = {"front": 0, "middle": size // 2, "back": size - 1}
    rest = iter(others)
    prompts = [needle if i in where.values() else next(rest) for i in range(size)]
    return prompts, where


def served(
    cfg: NeedleConfig, mode: str, entry_points: Path, log: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The needle alone, then inside the burst, from one server; plus the server's start time."""
    from vllm_bi_plugin.serving import free_port, greedy_completion, running_server, server_command

    needle, others = make_prompts(NeedleConfig(**{**asdict(cfg), "batch_sizes": [args.concurrent]}))
    prompts, where = burst_of(needle, others, args.concurrent)
    port = free_port()
    cmd = server_command(cfg.model, port, [
        "--max-model-len", str(MAX_MODEL_LEN), "--seed", str(cfg.seed),
        "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION),
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
    ])  # fmt: skip
    env = child_env(mode, entry_points, multiprocess=True)
    t0 = time.perf_counter()
    with running_server(cmd, env, log, port, args.startup_timeout) as url:
        started = time.perf_counter() - t0

        def ask(prompt: list[int]) -> dict[str, Any]:
            return greedy_completion(url, cfg.model, prompt, cfg.max_tokens)

        alone = ask(needle)
        with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
            answers = list(pool.map(ask, prompts))
    text = log.read_text(errors="replace")
    line = next((x for x in text.splitlines() if "vllm-bi-plugin:" in x), None)
    return {
        "alone": alone,
        "in_burst": {pos: answers[i] for pos, i in where.items()},
        "server_seconds": started,
        "plugin_line": line[-300:] if line else None,
        "plugin_in_engine": SERVER_MARKER in text,
    }


def run_mode(model: Path, mode: str, args: argparse.Namespace, entry_points: Path) -> dict:
    """Offline reference and served answers of one mode, as result rows and a summary entry."""
    cfg = needle_config(model, args)
    summary: dict[str, Any] = {"mode": mode}
    try:
        offline = offline_alone(cfg, mode, entry_points, args.log_dir / f"offline-{mode}.log",
                                args.startup_timeout)  # fmt: skip
        summary["engine_seconds"] = offline.get("engine_seconds")
        result = served(cfg, mode, entry_points, args.log_dir / f"server-{mode}.log", args)
    except Exception as err:  # recorded; main() fails the run
        summary["error"] = f"{type(err).__name__}: {err}"[-3000:]
        return {"rows": [], "summary": summary}
    summary.update({k: result[k] for k in ("server_seconds", "plugin_line", "plugin_in_engine")})
    expected = "identical" if mode == "plugin" else "any"
    rows = []
    for position, answer in [("alone", result["alone"]), *result["in_burst"].items()]:
        rows.append({"mode": mode, "concurrent": args.concurrent, "position": position,
                     **compare(offline["alone"], answer), "expected": expected,
                     "tokens": answer["tokens"][:8]})  # fmt: skip
    return {"rows": rows, "summary": summary}


def judge(doc: dict[str, Any]) -> bool:
    """Every plugin row identical, and every mode ran (with the plugin seen in its engine)."""
    bad = [r for r in doc["results"] if r["expected"] == "identical" and not r["identical"]]
    failed = [s for s in doc["summary"] if "error" in s]
    unseen = [s for s in doc["summary"] if s["mode"] == "plugin" and not s.get("plugin_in_engine")]
    return not bad and not failed and not unseen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "serve_vllm_gpu.json"
    )
    parser.add_argument("--shape", default="0.6b", choices=sorted(base.SHAPES))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--modes", default="plugin,default")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "vllm-bi-gpu-models"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="default: <out dir>/serve-logs")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("plugin", "default", "vllm-bi") for m in modes):
        parser.error(f"--modes: expected some of plugin, default, vllm-bi; got {args.modes!r}")
    if args.concurrent < 4:
        parser.error(
            f"--concurrent must be >= 4 (the needle goes in three places), got {args.concurrent}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.log_dir = args.log_dir or args.out.parent / "serve-logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)

    from vllm_bi_plugin.models import Qwen3Shape, write_random_qwen3

    dims = Qwen3Shape(num_layers=args.layers, **base.SHAPES[args.shape])
    model = write_random_qwen3(args.model_dir / dims.name, dims)
    entry_points = write_entry_point(Path(tempfile.mkdtemp(prefix="vllm-bi-ep-")))
    doc: dict[str, Any] = {
        "device": base.device_name(),
        "versions": base.versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": asdict(dims),
        "results": [],
        "summary": [],
    }
    for mode in modes:
        out = run_mode(model, mode, args, entry_points)
        doc["results"] += out["rows"]
        doc["summary"].append(out["summary"])
        same = sum(r["identical"] for r in out["rows"])
        print(f"== {mode}: served needle == offline in {same}/{len(out['rows'])} "
              f"{out['summary'].get('error', '')}", flush=True)  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0 if judge(doc) else 1


if __name__ == "__main__":
    raise SystemExit(main())
