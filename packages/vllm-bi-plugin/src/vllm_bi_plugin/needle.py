"""Needle in a batch: one prompt alone, then inside batches at the front, middle and back.

The experiment behind ``vllm-bi demo``, the CPU integration tests and the GPU end-to-end
script. Batch invariance holds when the needle's greedy token ids *and* their logprobs are
bitwise the same alone and in every batch; logprobs are compared as Python floats, which carry
the engine's float32 values exactly (JSON writes floats in round-trip form).

Run one configuration per process, because vLLM's mode and the plugin's hooks are per process::

    python -m vllm_bi_plugin.needle --config cfg.json --out result.json

with ``cfg.json`` holding :class:`NeedleConfig` fields. The batch-invariant switch is the
environment (``VLLM_BATCH_INVARIANT``), as for any vLLM run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import child

POSITIONS = ("front", "middle", "back")


@dataclass
class NeedleConfig:
    """One needle experiment.

    Attributes:
        model: checkpoint directory (see :func:`vllm_bi_plugin.models.write_random_qwen3`).
        batch_sizes: batch sizes to place the needle in (>= 2).
        positions: where in each batch (``front``, ``middle``, ``back``).
        needle_len: the needle prompt's token count.
        other_lens: ``(min, max)`` token counts of the other prompts (mixed lengths).
        max_tokens: greedy tokens generated per prompt.
        seed: seeds the prompts.
        vocab_size: prompts draw token ids from ``[3, vocab_size)``.
        engine: keyword arguments for ``vllm.LLM`` on top of :data:`ENGINE_DEFAULTS`
            (``enforce_eager``, ``enable_prefix_caching``, ``max_num_batched_tokens``, ...).
        cached_reference: run the needle alone twice and compare (its prefix is cached the
            second time when prefix caching is on).
        timing_repeats: extra timed runs of the largest batch (tokens/s), 0 for none.
        register_plugin: call :func:`vllm_bi_plugin.register` before building the engine, for
            machines where the plugin is importable but not installed with its entry point
            (vLLM finds plugins only through package metadata). Idempotent when vLLM also
            loads it. Needs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
    """

    model: str
    batch_sizes: list[int] = field(default_factory=lambda: [2, 9, 64])
    positions: list[str] = field(default_factory=lambda: list(POSITIONS))
    needle_len: int = 160
    other_lens: tuple[int, int] = (8, 96)
    max_tokens: int = 32
    seed: int = 0
    vocab_size: int = 32768
    engine: dict[str, Any] = field(default_factory=dict)
    cached_reference: bool = False
    timing_repeats: int = 0
    register_plugin: bool = False

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 2 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be integers >= 2, got {self.batch_sizes}")
        unknown = [p for p in self.positions if p not in POSITIONS]
        if unknown:
            raise ValueError(f"positions must be among {POSITIONS}, got {unknown}")
        lo, hi = self.other_lens
        if not 1 <= lo <= hi:
            raise ValueError(
                f"other_lens must be (min, max) with 1 <= min <= max, got {self.other_lens}"
            )
        if self.needle_len < 1 or self.max_tokens < 1:
            raise ValueError(
                "needle_len and max_tokens must be >= 1, got "
                f"{self.needle_len} and {self.max_tokens}"
            )
        self.other_lens = (lo, hi)


ENGINE_DEFAULTS: dict[str, Any] = {
    "skip_tokenizer_init": True,
    "max_model_len": 1024,
    "seed": 0,
    # vLLM's CPU build reserves a fraction of *all* host memory unless told a KV budget.
    "kv_cache_memory_bytes": 512 << 20,
}


def make_prompts(cfg: NeedleConfig) -> tuple[list[int], list[list[int]]]:
    """The needle and ``max(batch_sizes) - 1`` other prompts of mixed lengths (seeded)."""
    rng = random.Random(cfg.seed)
    needle = [rng.randrange(3, cfg.vocab_size) for _ in range(cfg.needle_len)]
    lo, hi = cfg.other_lens
    others = [
        [rng.randrange(3, cfg.vocab_size) for _ in range(rng.randint(lo, hi))]
        for _ in range(max(cfg.batch_sizes) - 1)
    ]
    return needle, others


def place(
    needle: list[int], others: Sequence[list[int]], batch_size: int, position: str
) -> tuple[list[list[int]], int]:
    """``batch_size`` prompts with the needle at ``position``; returns them and its index."""
    rest = list(others[: batch_size - 1])
    index = {"front": 0, "middle": (batch_size - 1) // 2, "back": batch_size - 1}[position]
    return [*rest[:index], needle, *rest[index:]], index


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Bitwise comparison of two generations (``tokens`` and ``logprobs`` lists)."""
    tokens_equal = reference["tokens"] == other["tokens"]
    pairs = list(zip(reference["logprobs"], other["logprobs"], strict=False))
    diffs = [abs(a - b) for a, b in pairs]
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if first is None and not tokens_equal:
        first = next(
            i
            for i, (a, b) in enumerate(zip(reference["tokens"], other["tokens"], strict=False))
            if a != b
        )
    return {
        "identical": tokens_equal and reference["logprobs"] == other["logprobs"],
        "tokens_equal": tokens_equal,
        "max_abs_logprob_diff": max(diffs) if diffs else 0.0,
        "first_diff_step": first,
    }


def _generation(output: Any) -> dict[str, Any]:
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    steps = zip(tokens, completion.logprobs, strict=True)
    logprobs = [float(step[t].logprob) for t, step in steps]
    return {"tokens": tokens, "logprobs": logprobs}


def run(cfg: NeedleConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the engine in this process and run the needle alone and in every batch.

    Returns:
        ``{"config", "engine_seconds", "plugin", "alone", "alone_again", "cases": [...],
        "timing": [...], "kit_providers": {...}}``; each case holds its batch size, position,
        the needle's generation, its comparison with the alone run, the batch's wall time and
        generated tokens. ``kit_providers`` says which ir-dispatch providers served which ops in
        this process (eager calls and CUDA-graph captures; replays run no Python) and how many
        FP8 GEMM calls fell back to vLLM's CUTLASS path.
    """
    import ir_dispatch

    from . import _fp8

    with ir_dispatch.recording() as rec:
        result = _run(cfg, progress)
    result["kit_providers"] = {"ops": rec.providers(), "fp8_fallback_calls": _fp8.fallback_calls()}
    return result


def _run(cfg: NeedleConfig, progress: Callable[[str], None] | None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from . import plugin

    needle, others = make_prompts(cfg)
    if cfg.register_plugin:
        plugin.register()
    started = time.perf_counter()
    llm = LLM(model=cfg.model, **{**ENGINE_DEFAULTS, **cfg.engine})
    engine_seconds = time.perf_counter() - started
    say(f"engine up in {engine_seconds:.1f} s")
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, logprobs=1, ignore_eos=True)

    def generate(prompts: list[list[int]]) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        return outs, time.perf_counter() - t0

    outs, seconds = generate([needle])
    alone = {**_generation(outs[0]), "seconds": seconds}
    say(f"needle alone: {seconds:.1f} s")
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "engine_seconds": engine_seconds,
        "plugin": None if plugin.installed() is None else plugin.installed().summary(),  # type: ignore[union-attr]
        "alone": alone,
        "cases": [],
        "timing": [],
    }
    if cfg.cached_reference:
        outs, seconds = generate([needle])
        again = _generation(outs[0])
        result["alone_again"] = {**again, "seconds": seconds, **compare(alone, again)}
    for bs in cfg.batch_sizes:
        for pos in cfg.positions:
            batch, index = place(needle, others, bs, pos)
            outs, seconds = generate(batch)
            gen = _generation(outs[index])
            produced = sum(len(o.outputs[0].token_ids) for o in outs)
            verdict = compare(alone, gen)
            result["cases"].append(
                {"batch_size": bs, "position": pos, "index": index, **gen, **verdict,
                 "seconds": seconds, "generated_tokens": produced}
            )  # fmt: skip
            mark = (
                "identical"
                if verdict["identical"]
                else f"DIFFERS ({verdict['max_abs_logprob_diff']:.3g})"
            )
            say(f"batch {bs:>3} {pos:<6}: {mark}, {produced / seconds:.1f} tok/s")
    biggest = max(cfg.batch_sizes)
    for _ in range(cfg.timing_repeats):
        batch, _ = place(needle, others, biggest, "middle")
        outs, seconds = generate(batch)
        produced = sum(len(o.outputs[0].token_ids) for o in outs)
        result["timing"].append(
            {"batch_size": biggest, "seconds": seconds, "generated_tokens": produced}
        )
    return result


LOG_TAIL_CHARS = 4000


@dataclass
class ChildRun:
    """One needle experiment run by :func:`run_in_child`.

    Attributes:
        code: the child's exit status (:data:`vllm_bi_plugin.child.KILLED` at the timeout).
        result: what :func:`run` returned in the child, or ``None`` when it failed.
        wall_seconds: the child's wall time, engine start included.
        log_tail: the end of the child's log when it failed (else empty).
    """

    code: int
    result: dict[str, Any] | None
    wall_seconds: float
    log_tail: str = ""


def run_in_child(
    cfg: NeedleConfig,
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    say: Callable[[str], None] | None = None,
) -> ChildRun:
    """``python -m vllm_bi_plugin.needle`` for ``cfg`` in a child process with ``env``.

    A child because vLLM's mode and the plugin's hooks are per process; everything that
    compares modes (``vllm-bi demo``, the CPU integration tests, the GPU end-to-end, tensor
    parallel and ``vllm serve`` scripts) starts its engines here. The child's output goes to
    ``log``, its progress lines to ``say``; it is killed after ``timeout_s`` seconds.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp, "cfg.json"), Path(tmp, "out.json")
        cfg_path.write_text(json.dumps(asdict(cfg)))
        cmd = [sys.executable, "-m", "vllm_bi_plugin.needle", "--config", str(cfg_path),
               "--out", str(out_path)]  # fmt: skip
        t0 = time.perf_counter()
        code = child.run_streaming(cmd, env, log, timeout_s, "[needle] ", say or (lambda _: None))
        wall = time.perf_counter() - t0
        if code == 0 and out_path.exists():
            return ChildRun(code, json.loads(out_path.read_text()), wall)
    tail = log.read_text()[-LOG_TAIL_CHARS:] if log.exists() else ""
    return ChildRun(code, None, wall, tail)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vllm_bi_plugin.needle --config cfg.json --out result.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m vllm_bi_plugin.needle", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="JSON file with NeedleConfig fields")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        raw = json.load(f)
    if "other_lens" in raw:
        raw["other_lens"] = tuple(raw["other_lens"])
    cfg = NeedleConfig(**raw)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[needle] {msg}", file=sys.stderr, flush=True)

    result = run(cfg, progress)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
