"""``vllm-bi demo``: vLLM on CPU with and without batch invariance, side by side.

Builds the small random Qwen3 (once, in the cache), then runs the needle experiment
(:mod:`vllm_bi_plugin.needle`) twice, each in its own process because the mode is per process:
plain vLLM, and vLLM with ``VLLM_BATCH_INVARIANT=1`` (this plugin). Prints a table (identical
or not per placement, the largest logprob difference, tokens/s) and saves a PNG and the JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .child import KILLED, log_tail
from .models import QWEN3_0_6B, Qwen3Shape, default_cache_dir, write_random_qwen3
from .needle import NeedleConfig, run_in_child

MODES = (
    ("default", "vLLM default", False),
    ("plugin", "vLLM + vllm-bi-plugin", True),
)


@dataclass
class DemoOptions:
    """What ``vllm-bi demo`` runs.

    Attributes:
        out_dir: where the PNG, the JSON and the engine logs go.
        cache_dir: where the model checkpoint is cached.
        batch_sizes: batches the needle is placed in.
        positions: where in each batch.
        max_tokens: greedy tokens per prompt.
        compile: run vLLM's default torch.compile mode instead of eager (slower to start).
        shape: the random model's dimensions.
        timeout_s: the most one engine run may take.
    """

    out_dir: Path
    cache_dir: Path
    batch_sizes: tuple[int, ...] = (4, 16)
    positions: tuple[str, ...] = ("front", "middle", "back")
    max_tokens: int = 32
    compile: bool = False
    shape: Qwen3Shape = QWEN3_0_6B
    timeout_s: float = 1200.0


def _child_env(batch_invariant: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.pop("VLLM_BATCH_INVARIANT", None)
    if batch_invariant:
        env["VLLM_BATCH_INVARIANT"] = "1"
    return env


def run_needle_process(
    cfg: NeedleConfig,
    env: dict[str, str],
    log_path: Path,
    say: Callable[[str], None],
    timeout_s: float,
) -> dict[str, Any]:
    """Run the needle experiment in a child process; stream its progress; return its result.

    Raises:
        RuntimeError: the child failed or ran past ``timeout_s`` (the log tail is in the message).
    """
    done = run_in_child(cfg, env, log_path, timeout_s, say)
    if done.result is None:
        why = f"killed after {timeout_s:.0f} s" if done.code == KILLED else f"exit {done.code}"
        raise RuntimeError(
            f"the engine run failed ({why}); log {log_path}:\n{log_tail(log_path, 25)}"
        )
    return done.result


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the model, run both modes, return ``{"model", "modes": {name: needle result}}``."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    s = options.shape
    say(
        f"[1/3] random Qwen3 (hidden {s.hidden_size}, {s.num_layers} layers, vocab {s.vocab_size}) "
        f"in {options.cache_dir}"
    )
    t0 = time.perf_counter()
    model = write_random_qwen3(options.cache_dir / s.name, s)
    say(f"      ready in {time.perf_counter() - t0:.1f} s")
    cfg = NeedleConfig(
        model=str(model),
        batch_sizes=list(options.batch_sizes),
        positions=list(options.positions),
        max_tokens=options.max_tokens,
        vocab_size=s.vocab_size,
        engine={} if options.compile else {"enforce_eager": True},
    )
    modes: dict[str, Any] = {}
    for step, (name, label, bi) in enumerate(MODES, start=2):
        switch = "VLLM_BATCH_INVARIANT=1" if bi else "VLLM_BATCH_INVARIANT unset"
        say(f"[{step}/3] {label} ({switch})")
        modes[name] = run_needle_process(
            cfg,
            _child_env(bi),
            options.out_dir / "logs" / f"{name}.log",
            lambda msg: say(f"      {msg}"),
            options.timeout_s,
        )
    return {"model": asdict(s), "compile": options.compile, "modes": modes}


def _throughput(result: dict[str, Any]) -> float:
    tokens = sum(c["generated_tokens"] for c in result["cases"])
    seconds = sum(c["seconds"] for c in result["cases"])
    return tokens / seconds if seconds else 0.0


def summarize(demo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per mode: identical cases, the largest logprob difference, tokens/s, engine start."""
    out = {}
    for name, result in demo["modes"].items():
        cases = result["cases"]
        out[name] = {
            "identical": sum(c["identical"] for c in cases),
            "cases": len(cases),
            "max_abs_logprob_diff": max((c["max_abs_logprob_diff"] for c in cases), default=0.0),
            "tokens_per_s": _throughput(result),
            "engine_seconds": result["engine_seconds"],
        }
    return out


def _verdict(case: dict[str, Any]) -> str:
    if case["identical"]:
        return "identical"
    return f"differs ({case['max_abs_logprob_diff']:.2g}, step {case['first_diff_step']})"


def format_table(demo: dict[str, Any]) -> str:
    """The side-by-side table ``vllm-bi demo`` prints."""
    names = [n for n, _, _ in MODES if n in demo["modes"]]
    labels = {n: label for n, label, _ in MODES}
    rows: list[list[str]] = [["needle placement", *(labels[n] for n in names)]]
    first = demo["modes"][names[0]]["cases"]
    for i, case in enumerate(first):
        place = f"batch {case['batch_size']:>3}, {case['position']}"
        rows.append([place, *(_verdict(demo["modes"][n]["cases"][i]) for n in names)])
    summary = summarize(demo)
    rows.append(
        ["identical to alone", *(f"{summary[n]['identical']}/{summary[n]['cases']}" for n in names)]
    )
    rows.append(
        ["largest |logprob diff|", *(f"{summary[n]['max_abs_logprob_diff']:.3g}" for n in names)]
    )
    rows.append(["tokens/s (all batches)", *(f"{summary[n]['tokens_per_s']:.1f}" for n in names)])
    rows.append(["engine start (s)", *(f"{summary[n]['engine_seconds']:.1f}" for n in names)])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip())
        if k == 0 or k == len(first):
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(demo: dict[str, Any], path: Path) -> Path:
    """Save a two-panel PNG: logprob difference per placement, tokens/s per batch size.

    Raises:
        ModuleNotFoundError: matplotlib is missing (``pip install "vllm-bi-plugin[cpu]"``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            'the demo plot needs matplotlib: pip install "vllm-bi-plugin[cpu]"'
        ) from exc
    names = [n for n, _, _ in MODES if n in demo["modes"]]
    labels = {n: label for n, label, _ in MODES}
    colors = {"default": "#d62728", "plugin": "#2ca02c"}
    cases = demo["modes"][names[0]]["cases"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    floor = 1e-9
    for k, n in enumerate(names):
        diffs = [max(c["max_abs_logprob_diff"], floor) for c in demo["modes"][n]["cases"]]
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(cases))]
        left.bar(xs, diffs, width, label=labels[n], color=colors.get(n))
        for x, c in zip(xs, demo["modes"][n]["cases"], strict=False):
            if c["identical"]:
                left.text(x, floor * 1.5, "0", ha="center", va="bottom", fontsize=8)
    left.set_yscale("log")
    left.set_ylim(floor / 2, 1.0)  # headroom above the bars for the legend
    left.set_xticks(range(len(cases)))
    left.set_xticklabels([f"{c['batch_size']}/{c['position'][0]}" for c in cases], fontsize=8)
    left.set_xlabel("batch size / needle position (f, m, b)")
    left.set_ylabel("max |logprob - logprob alone|  (0 = bitwise)")
    left.set_title("Needle logprobs vs. the needle alone")
    left.legend()
    sizes = sorted({c["batch_size"] for c in cases})
    for n in names:
        per_size = []
        for b in sizes:
            sel = [c for c in demo["modes"][n]["cases"] if c["batch_size"] == b]
            per_size.append(
                sum(c["generated_tokens"] for c in sel) / sum(c["seconds"] for c in sel)
            )
        right.plot(sizes, per_size, marker="o", label=labels[n], color=colors.get(n))
    right.set_xscale("log", base=2)
    right.set_xticks(sizes, [str(b) for b in sizes])
    right.set_xlabel("batch size")
    right.set_ylabel("generated tokens/s")
    right.set_title("Throughput (vLLM on CPU)")
    right.legend()
    mode = "torch.compile" if demo.get("compile") else "eager"
    tokens = demo["modes"][names[0]]["config"]["max_tokens"]
    fig.suptitle(f"Random Qwen3 on vLLM (CPU), {mode}, {tokens} greedy tokens per prompt")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    batch_sizes: Sequence[int] = DemoOptions.batch_sizes,
    max_tokens: int = 32,
    compile: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo end to end and write ``vllm-bi-demo.json`` and ``vllm-bi-demo.png``."""
    options = DemoOptions(
        out_dir=out_dir or Path.cwd() / "vllm-bi-demo",
        cache_dir=cache_dir or default_cache_dir(),
        batch_sizes=tuple(batch_sizes),
        max_tokens=max_tokens,
        compile=compile,
    )
    demo = run_demo(options, say)
    say("")
    say(format_table(demo))
    json_path = options.out_dir / "vllm-bi-demo.json"
    json_path.write_text(json.dumps(demo, indent=1))
    png = plot(demo, options.out_dir / "vllm-bi-demo.png")
    say("")
    say(f"saved {png} and {json_path}")
    return demo
