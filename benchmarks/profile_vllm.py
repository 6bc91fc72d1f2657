"""Where a vLLM step's GPU time goes, default vs the plugin: kernels ranked by device time.

The serving benchmark (``vllm_serving.py``) says *how much* slower a mode is; this says *where*.
Each mode runs in its own child process with one engine in that process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``torch.profiler`` sees the model's kernels. After
one warm-up, one ``generate`` of the chosen load runs under the profiler. Per mode the script
keeps the ``--top`` kernels and ops by self device time (CPU time on a machine without a GPU,
where the script runs as a check), their total and the wall time.

Loads: ``prefill`` (``--prompts`` x ``--prompt-len`` tokens in, 1 out, default 2048) or
``decode`` (``--prompts`` x ``--prompt-len`` in, default 16, ``--max-tokens`` out). Greedy by
default; ``--temperature 1 --logprobs 0`` samples and returns the sampled tokens' logprobs, as an
RL rollout does. Decode steps replayed from CUDA graphs are profiled kernel by kernel; their
host-side ops are not (use ``--enforce-eager`` to see those).

Writes ``profile_vllm.json`` under ``--out`` (default ``$OUT`` or ``benchmarks/results``):
``device``, ``versions``, ``date``, ``results``. Each row is one (mode, kernel) with
``value`` = self device µs and ``reps`` = [value] (one profiled run). A ``TOTAL`` row per mode
carries ``ratio_vs_default`` = default's total over this mode's (above 1 = less GPU time).

    source scripts/gpu/env.sh && python benchmarks/profile_vllm.py --shape 0.6b --load prefill
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _report  # noqa: E402
import vllm_serving as serving  # noqa: E402  (shapes, model writing, engine settings)

from vllm_bi_plugin.modes import MODES, mode_env, needs_register_in_child  # noqa: E402

CHILD_PREFIX = "[profile] "
SAMPLING_SEED = 0  # sampled loads (--temperature > 0) draw the same tokens in every mode


def device_times(prof: Any, on_device: bool) -> tuple[list[dict[str, Any]], float]:
    """Every profiled op/kernel with its self time (µs, on the device or, without one, the
    CPU), sorted, and their sum."""
    rows = []
    for evt in prof.key_averages():
        cpu = float(evt.self_cpu_time_total)
        dev = float(
            getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        )
        value = dev if on_device else cpu
        if value <= 0:
            continue
        rows.append({"name": evt.key[:160], "calls": int(evt.count), "us": value,
                     "cpu_us": cpu})  # fmt: skip
    rows.sort(key=lambda r: -r["us"])
    return rows, sum(r["us"] for r in rows)


def child_main(config_path: Path, out_path: Path) -> int:
    """One engine, one warm-up, one profiled ``generate``; JSON to ``out_path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg = json.loads(config_path.read_text())
    if needs_register_in_child(cfg["mode"]):
        import vllm_bi_plugin

        vllm_bi_plugin.register()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=cfg["model"], **serving.engine_kwargs(cfg["engine"]))
    load = serving.Load(**cfg["load"])
    prompts = [TokensPrompt(prompt_token_ids=p)
               for p in serving.random_prompts(load, cfg["vocab_size"], 0)]  # fmt: skip
    params = SamplingParams(
        temperature=cfg.get("temperature", 0.0), seed=SAMPLING_SEED, logprobs=cfg.get("logprobs"),
        ignore_eos=True, max_tokens=load.max_tokens,
    )  # fmt: skip
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        llm.generate(prompts, params, use_tqdm=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    on_device = torch.cuda.is_available()
    rows, total = device_times(prof, on_device)
    out = {"device": serving.device_name(), "versions": serving.versions(), "wall_s": wall,
           "unit": "device us" if on_device else "cpu us (no GPU)", "total_us": total,
           "kernels": rows[: cfg["top"]]}  # fmt: skip
    _report.write_json(out_path, out, announce=False)
    print(f"{CHILD_PREFIX}wall {wall:.3f} s, {out['unit']} {total / 1e3:.1f} ms", file=sys.stderr)
    return 0


def rows_for(mode: str, data: dict[str, Any], default_total: float | None) -> list[dict]:
    total, unit = data["total_us"], data["unit"]
    rows = [
        {
            "mode": mode,
            "kernel": "TOTAL",
            "value": total,
            "reps": [total],
            "unit": unit,
            "wall_s": data["wall_s"],
            "ratio_vs_default": default_total / total if default_total and total else None,
        }
    ]
    for k in data["kernels"]:
        rows.append({"mode": mode, "kernel": k["name"], "value": k["us"], "reps": [k["us"]],
                     "unit": unit, "calls": k["calls"],
                     "share": k["us"] / total if total else None})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(serving.SHAPES), default="0.6b")
    p.add_argument("--layers", type=int, help="decoder layers (default: as vllm_serving.py)")
    p.add_argument("--tiny", action="store_true", help="tiny width for CPU checks")
    p.add_argument("--load", choices=("prefill", "decode"), default="prefill")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, help="tokens per prompt (prefill 2048, decode 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="decode load's output tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--logprobs", type=int, help="logprobs per step (0: the sampled token's)")
    p.add_argument("--modes", default="default,plugin")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--timeout", type=float, default=400.0, help="seconds per child")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path, help="folder (default $OUT or benchmarks/results)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child_main(args.child, args.child_out)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: expected some of {', '.join(MODES)}; got {args.modes!r}")
    if args.prompt_len is None:
        args.prompt_len = 2048 if args.load == "prefill" else 16
    if min(args.prompts, args.prompt_len, args.max_tokens, args.top) < 1:
        p.error("--prompts, --prompt-len, --max-tokens and --top must be >= 1")
    layers = args.layers or (
        serving.TINY_LAYERS if args.tiny else serving.DEFAULT_LAYERS[args.shape]
    )
    model_args = argparse.Namespace(tiny=args.tiny, shape=args.shape, layers=layers,
                                    model_dir=args.model_dir)  # fmt: skip
    model = serving.write_model(model_args)
    vocab = (serving.TINY if args.tiny else serving.SHAPES[args.shape])["vocab_size"]
    if args.load == "prefill":
        load = serving.Load("prefill", args.prompts, args.prompt_len, 1, serving.UNIT_TOTAL_TPS)
    else:
        load = serving.Load(
            "decode", args.prompts, args.prompt_len, args.max_tokens, serving.UNIT_GEN_TPS
        )
    engine = {"max_model_len": max(load.tokens_needed, 256), "gpu_memory_utilization": 0.85,
              "enforce_eager": args.enforce_eager or None}  # fmt: skip
    out_dir = args.out or _report.out_dir(HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    head: dict[str, Any] = {}
    default_total = None
    for mode in modes:
        cfg = {"model": str(model), "mode": mode, "load": serving.asdict(load),
               "vocab_size": vocab, "engine": engine, "top": args.top,
               "temperature": args.temperature, "logprobs": args.logprobs}  # fmt: skip
        env = {**mode_env(mode), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        log = out_dir / "profile_vllm_logs" / f"{args.shape}-{args.load}-{mode}.log"
        data, error = serving.run_child(
            cfg, env, log, args.timeout, script=Path(__file__).resolve(), prefix=CHILD_PREFIX
        )
        if error or data is None:
            failures[mode] = error or "no result"
            print(f"  [{mode}] FAILED: {failures[mode].splitlines()[0]}", flush=True)
            continue
        head = head or _report.header(data["device"], data["versions"])
        if mode == "default":
            default_total = data["total_us"]
        rows += rows_for(mode, data, default_total)
    if not head:
        head = _report.header("?", {})
    _report.print_table([r for r in rows if r["kernel"] == "TOTAL"] or [{"mode": "-"}],
                        ["mode", "value", "wall_s", "ratio_vs_default"])  # fmt: skip
    for mode in modes:
        top = [r for r in rows if r["mode"] == mode and r["kernel"] != "TOTAL"][:12]
        _report.print_table(top, ["kernel", "calls", "value", "share"], f"{mode}: top kernels")
    _report.write_results(out_dir / "profile_vllm.json", head, rows,
                          load=serving.asdict(load), shape=args.shape, layers=layers,
                          engine=engine, failures=failures,
                          sampling={"temperature": args.temperature, "logprobs": args.logprobs,
                                    "seed": SAMPLING_SEED})  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
