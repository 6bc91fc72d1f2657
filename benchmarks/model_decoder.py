"""Model-level speed of batch-invariant mode (issue #4): tokens/s of a Qwen3 decoder, BI vs default.

Issue #4's model target: a Qwen3-0.6B-shaped and a Qwen3-8B-shaped decoder (random weights,
fewer layers allowed), prefill and decode, eager and ``torch.compile``, where batch-invariant
mode must reach >= 0.8x the tokens/s of the default mode. The model is ``transformers``'
Qwen3ForCausalLM (bf16, eager attention) put in batch-invariant mode exactly as
``tests-integration/gpu/transformers_bi.py`` does: ``ir_dispatch.aten_overrides()`` plus
``ir_dispatch.batch_invariant()``, with ``bi_triton_ascend`` imported to register its kernels.

Measured per shape, in one run and side by side (default mode, then BI mode, per case):

* prefill: batch 1 x 2048 and batch 16 x 512 tokens (one forward, logits of the last token
  only, as vLLM's prefill);
* decode: batch 1 and batch 32, one new token per step on a static KV cache after a prompt of
  ``--decode-prompt`` tokens, timed over ``--steps`` steps;
* each in eager and in ``torch.compile`` (default mode; a failure is recorded in its row);
  with ``--compile ...,graphs`` also in ``torch.compile(mode="reduce-overhead")``, which
  replays CUDA graphs as vLLM's decode steps do. That column shows the kernels without the
  per-op host cost; it is reported beside the issue's target and not counted in it.

With ``--interleave`` the two modes take turns repetition by repetition, the order flipped each
time, so that a host slowdown lasting seconds (seen on the lent machines: a whole round of one
mode at half speed) lands on both modes alike; BI rows then also carry ``paired_ratio``, the
median over repetition pairs of BI tokens/s over default's. Under compile each mode then runs
its own compiled wrapper (:func:`mode_forward`), traced whole (``fullgraph``), so that neither
mode can reach a graph the other compiled.

After each compile mode's timings, the run checks what the speed is for: per mode, a probe
prompt's logits alone against its logits at the first, middle and last row of the largest
prefill batch, and its greedy decode steps alone against the same rows of the largest decode
batch, bit for bit (``invariance`` in the JSON; ``summary.bi_invariant``). Under compile that is
a fresh graph per batch size; ``--no-invariance`` skips it.

Every repetition is kept; the median is reported. Each row also lists the providers the
registry dispatched to in its first run (``providers_used``; empty in default mode): a BI row
with none under compile means the compiled graph bypassed the aten overrides, so that row did
not run the batch-invariant kernels and its ratio says nothing about them. Under compile, the
GEMMs that ir-dispatch's lowering pass put in the graph (Inductor launches their kernels
itself) are counted once, when the graph is compiled.

Run on the GPU machine from the repository root::

    source scripts/gpu/env.sh && python benchmarks/model_decoder.py --shapes 0.6b,8b

On CPU: ``TRITON_INTERPRET=1 python benchmarks/model_decoder.py --tiny --compile eager``.
Re-plot a result file: ``python benchmarks/model_decoder.py --replot model_decoder.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report
import torch

import ir_dispatch as ird
from ir_dispatch.lowering import lowering_enabled, lowerings_registered, reductions_routed

TARGET_RATIO = 0.8
MODES = ("default", "batch_invariant")
COMPILE_MODES = ("eager", "compile", "graphs")
TARGET_COMPILE_MODES = ("eager", "compile")
"""The modes issue #4's target names; ``graphs`` (compile with CUDA graphs) is a diagnostic."""
TABLE_COLUMNS = [
    "shape", "phase", "batch", "seq", "compile", "mode", "median", "unit", "ratio_vs_default",
    "paired_ratio",
]  # fmt: skip
INVARIANCE_COLUMNS = [
    "shape", "compile", "mode", "phase", "batch", "seq", "probe_rows", "bitwise_equal", "error",
]  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """The Qwen3 config fields that set the cost of a forward (layers may be cut)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    layers: int
    full_layers: int
    tie_word_embeddings: bool


SHAPES = {
    "0.6b": ModelShape("0.6b", 1024, 3072, 16, 8, 128, 151936, 8, 28, True),
    "8b": ModelShape("8b", 4096, 12288, 32, 8, 128, 151936, 4, 36, False),
    "tiny": ModelShape("tiny", 32, 64, 2, 1, 16, 256, 1, 1, True),
}


@dataclass(frozen=True)
class Case:
    """One measured workload: a phase at a batch size and sequence length."""

    phase: str  # "prefill" or "decode"
    batch: int
    seq: int  # prefill: tokens per row; decode: prompt tokens already in the cache

    def tokens(self, steps: int) -> int:
        """Tokens produced by one repetition (decode: one per row per step)."""
        return self.batch * (self.seq if self.phase == "prefill" else steps)


@dataclass(frozen=True)
class Settings:
    """What one run measures; ``--tiny`` swaps in a config small enough for CPU tests."""

    shapes: tuple[str, ...]
    compile_modes: tuple[str, ...]
    cases: tuple[Case, ...]
    steps: int
    reps: int
    warmup: int
    layers: int | None
    rounds: int = 1
    interleave: bool = False
    check_invariance: bool = True


def full_cases(decode_prompt: int) -> tuple[Case, ...]:
    """Issue #4's workloads: prefill 1x2048 and 16x512, decode at batch 1 and 32."""
    return (
        Case("prefill", 1, 2048),
        Case("prefill", 16, 512),
        Case("decode", 1, decode_prompt),
        Case("decode", 32, decode_prompt),
    )


TINY_CASES = (
    Case("prefill", 1, 8),
    Case("prefill", 2, 4),
    Case("decode", 1, 4),
    Case("decode", 2, 4),
)


# ------------------------------------------------------------------------------ model
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(shape: ModelShape, layers: int, max_len: int) -> torch.nn.Module:
    """A random-weight bf16 Qwen3ForCausalLM of ``shape``, as transformers_bi.py builds it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=max(4096, max_len),
        tie_word_embeddings=shape.tie_word_embeddings,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).to(device=device(), dtype=torch.bfloat16).eval()


def static_cache(model: torch.nn.Module, batch: int, max_len: int) -> Any:
    """A StaticCache for ``batch`` rows (fixed shapes, so one compiled decode graph serves all
    steps); transformers 5 sizes it lazily, 4.x wants batch, device and dtype up front."""
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        return StaticCache(
            config=model.config, max_batch_size=batch, max_cache_len=max_len,
            device=device(), dtype=torch.bfloat16,
        )  # fmt: skip


@contextmanager
def run_mode(mode: str) -> Iterator[None]:
    """Default mode as is; BI mode entered as transformers_bi.py does."""
    with ExitStack() as stack:
        if mode == "batch_invariant":
            stack.enter_context(ird.aten_overrides())
            stack.enter_context(ird.batch_invariant())
        yield


def mode_forward(model: torch.nn.Module, compile_mode: str, mode: str) -> Callable[..., Any]:
    """``mode``'s forward when the modes take turns: eager, or a compiled wrapper of its own.

    Dynamo keys its graphs on the code object it traces and its guards do not see the dispatch
    mode, so each mode gets a wrapper with a code object of its own. ``fullgraph``: a graph
    break would leave the model's inner frames to a cache both modes share (an error instead).
    """
    if compile_mode == "eager":
        return model

    def forward(*args: Any, **kwargs: Any) -> Any:
        return model(*args, **kwargs)

    forward.__code__ = forward.__code__.replace(co_name=f"forward_{mode}")
    return torch.compile(forward, fullgraph=True, **compile_options(compile_mode))


def forward_fn(model: torch.nn.Module, compile_mode: str) -> Callable[..., Any]:
    """The model's forward, eager or freshly compiled (dynamo's cache dropped first, since its
    guards do not see the dispatch mode and would reuse the other mode's graph)."""
    if compile_mode == "eager":
        return model
    torch._dynamo.reset()
    return torch.compile(model, **compile_options(compile_mode))


def compile_options(compile_mode: str) -> dict[str, Any]:
    """``torch.compile``'s arguments for ``compile`` or ``graphs`` (CUDA graphs replayed)."""
    graphs = {"mode": "reduce-overhead"} if compile_mode == "graphs" else {}
    return {"dynamic": False, **graphs}


# ------------------------------------------------------------------------------ workloads
def random_ids(batch: int, seq: int, vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch * 100_003 + seq)
    return torch.randint(0, vocab, (batch, seq), generator=gen).to(device())


def prefill_step(fn: Callable[..., Any], ids: torch.Tensor) -> Callable[[], Any]:
    """One prefill forward without a cache, logits of the last position only (as vLLM)."""
    return lambda: fn(input_ids=ids, use_cache=False, logits_to_keep=1)


class DecodeRunner:
    """Greedy decode on a static KV cache: :meth:`prefill` (untimed) then :meth:`steps`."""

    def __init__(
        self, model: torch.nn.Module, fn: Callable[..., Any], case: Case, steps: int, vocab: int
    ) -> None:
        self.model, self.fn, self.case, self.n_steps = model, fn, case, steps
        self.prompt = random_ids(case.batch, case.seq, vocab)
        self.cache = static_cache(model, case.batch, case.seq + steps)
        self.next_ids = self.prompt[:, -1:]

    def prefill(self) -> None:
        """Reset the cache and fill it with the prompt (eager model: one graph fewer)."""
        self.cache.reset()
        positions = torch.arange(self.case.seq, device=device())
        out = self.model(
            input_ids=self.prompt, past_key_values=self.cache, cache_position=positions,
            use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        self.next_ids = out.logits[:, -1:].argmax(-1)

    def steps(self, record: bool = False) -> list[torch.Tensor]:
        """One new token per row per step; each step feeds back the previous argmax.

        Returns each step's last-position logits when ``record`` (the invariance check), else
        nothing (the timed path keeps no reference).
        """
        ids, recorded = self.next_ids, []
        for i in range(self.n_steps):
            position = torch.tensor([self.case.seq + i], device=device())
            out = self.fn(
                input_ids=ids, past_key_values=self.cache, cache_position=position,
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
            ids = out.logits[:, -1:].argmax(-1)
            if record:
                recorded.append(out.logits[:, -1])
        return recorded


# ------------------------------------------------------------------------------ timing
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_once_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call in ms: CUDA events on a GPU, perf_counter on CPU; synced."""
    sync()
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def repeat_ms(
    run: Callable[[], Any], reps: int, warmup: int, setup: Callable[[], Any] | None = None
) -> tuple[list[float], dict[str, list[str]]]:
    """Every timed repetition of ``run`` after ``warmup`` untimed ones (compiles happen there),
    and the providers the registry dispatched to in the first run (recorded there only, so the
    recorder costs no timed repetition; ``setup``, run untimed before each, is not recorded)."""
    times, providers = [], {}
    for i in range(warmup + reps):
        ms, recorded = one_repetition(run, setup, record=i == 0)
        providers = recorded if recorded is not None else providers
        if i >= warmup:
            times.append(ms)
    return times, providers


def one_repetition(
    run: Callable[[], Any], setup: Callable[[], Any] | None, record: bool
) -> tuple[float, dict[str, list[str]] | None]:
    """``setup`` untimed, then ``run`` timed (ms); with ``record``, also the providers ``run``
    dispatched to (``None`` without)."""
    if setup is not None:
        setup()
    if not record:
        return time_once_ms(run), None
    with ird.recording() as recorder:
        ms = time_once_ms(run)
    return ms, recorder.providers()


Timed = tuple[Callable[[], Any], Callable[[], Any] | None]  # (timed run, untimed setup)


def timed_case(
    model: torch.nn.Module, fn: Callable[..., Any], case: Case, settings: Settings, vocab: int
) -> Timed:
    """What one repetition of ``case`` times, and what runs untimed before it."""
    if case.phase == "prefill":
        return prefill_step(fn, random_ids(case.batch, case.seq, vocab)), None
    runner = DecodeRunner(model, fn, case, settings.steps, vocab)
    return runner.steps, runner.prefill


@torch.inference_mode()
def measure_case(
    model: torch.nn.Module, fn: Callable[..., Any], case: Case, settings: Settings, vocab: int
) -> tuple[list[float], dict[str, list[str]]]:
    """Tokens/s of every repetition of ``case``, and the providers it dispatched to."""
    run, setup = timed_case(model, fn, case, settings, vocab)
    times, used = repeat_ms(run, settings.reps, settings.warmup, setup)
    tokens = case.tokens(settings.steps)
    return [tokens / (ms / 1e3) for ms in times], used


@torch.inference_mode()
def measure_case_interleaved(
    model: torch.nn.Module,
    fns: dict[str, Callable[..., Any]],
    case: Case,
    settings: Settings,
    vocab: int,
) -> dict[str, tuple[list[float], dict[str, list[str]]]]:
    """``case`` in both modes (each with its forward in ``fns``), one repetition of each in
    turn, the order flipped every time: a host slowdown lasting seconds then lands on both modes
    alike. Per mode, tokens/s of every repetition and the providers of its first run."""
    timed = {mode: timed_case(model, fns[mode], case, settings, vocab) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    used: dict[str, dict[str, list[str]]] = {mode: {} for mode in MODES}
    for i in range(settings.warmup + settings.reps):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            run, setup = timed[mode]
            with run_mode(mode):
                ms, recorded = one_repetition(run, setup, record=i == 0)
            if recorded is not None:
                used[mode] = recorded
            if i >= settings.warmup:
                times[mode].append(ms)
    tokens = case.tokens(settings.steps)
    return {mode: ([tokens / (ms / 1e3) for ms in times[mode]], used[mode]) for mode in MODES}


# ------------------------------------------------------------------------------ rows
def result_row(
    shape: ModelShape, layers: int, case: Case, compile_mode: str, mode: str, settings: Settings
) -> dict[str, Any]:
    return {
        "shape": shape.name,
        "layers": layers,
        "phase": case.phase,
        "batch": case.batch,
        "seq": case.seq,
        "steps": settings.steps if case.phase == "decode" else None,
        "compile": compile_mode,
        "mode": mode,
        "unit": "tokens/s",
    }


def measure_mode(
    model: torch.nn.Module, shape: ModelShape, layers: int, compile_mode: str, mode: str,
    settings: Settings,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every case in one mode; a failing case (e.g. compile of the BI path) keeps its error."""
    rows = []
    with run_mode(mode):
        fn = forward_fn(model, compile_mode)
        for case in settings.cases:
            row = result_row(shape, layers, case, compile_mode, mode, settings)
            try:
                reps, used = measure_case(model, fn, case, settings, shape.vocab_size)
                row.update(reps=reps, median=_report.median(reps), providers_used=used)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                row.update(reps=[], median=float("nan"), error=error)
                print(f"  {shape.name} {case} {compile_mode} {mode}: {error[:300]}")
            rows.append(row)
            print(f"  {shape.name} {case.phase} b{case.batch} s{case.seq} {compile_mode} "
                  f"{mode}: {row['median']:.4g} tokens/s", flush=True)  # fmt: skip
    return rows


def measure_interleaved(
    model: torch.nn.Module, shape: ModelShape, layers: int, compile_mode: str, settings: Settings
) -> list[dict[str, Any]]:
    """Every case, both modes interleaved repetition by repetition. BI rows also get
    ``paired_ratios``: BI tokens/s over default's in the same pair of repetitions."""
    rows = []
    torch._dynamo.reset()
    fns = {mode: mode_forward(model, compile_mode, mode) for mode in MODES}
    for case in settings.cases:
        made = {
            mode: result_row(shape, layers, case, compile_mode, mode, settings) for mode in MODES
        }
        try:
            measured = measure_case_interleaved(model, fns, case, settings, shape.vocab_size)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            for row in made.values():
                row.update(reps=[], median=float("nan"), error=error)
            print(f"  {shape.name} {case} {compile_mode} interleaved: {error[:300]}")
        else:
            for mode, (reps, used) in measured.items():
                made[mode].update(reps=reps, median=_report.median(reps), providers_used=used)
            default, bi = measured["default"][0], measured["batch_invariant"][0]
            made["batch_invariant"]["paired_ratios"] = [
                b / d for b, d in zip(bi, default, strict=True)
            ]
        for mode, row in made.items():
            print(f"  {shape.name} {case.phase} b{case.batch} s{case.seq} {compile_mode} {mode} "
                  f"(interleaved): {row['median']:.4g} tokens/s", flush=True)  # fmt: skip
        rows += made.values()
    return rows


def pool_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, compile mode, mode) with the repetitions of every round pooled.

    ``round_medians`` keeps each round's median (their spread is the run's drift); an error in
    any round is kept.
    """
    pooled: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in ("shape", "phase", "batch", "seq", "compile", "mode"))
        if key not in pooled:
            pooled[key] = {**row, "reps": list(row["reps"]), "round_medians": [row["median"]]}
            continue
        into = pooled[key]
        into["reps"] += row["reps"]
        into["round_medians"].append(row["median"])
        if "paired_ratios" in row:
            into["paired_ratios"] = into.get("paired_ratios", []) + row["paired_ratios"]
        if "error" in row:
            into.setdefault("error", row["error"])
    for row in pooled.values():
        row["median"] = _report.median(row["reps"]) if row["reps"] else float("nan")
    return list(pooled.values())


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_vs_default`` = BI tokens/s / default tokens/s of the same case (1.0 on default)."""
    key = lambda r: (r["shape"], r["phase"], r["batch"], r["seq"], r["compile"])  # noqa: E731
    default = {key(r): r["median"] for r in rows if r["mode"] == "default"}
    for r in rows:
        base = default.get(key(r), float("nan"))
        ok = base > 0 and math.isfinite(base) and math.isfinite(r["median"])
        r["ratio_vs_default"] = r["median"] / base if ok else float("nan")
        if r.get("paired_ratios"):  # --interleave: the median of the per-pair ratios
            r["paired_ratio"] = _report.median(r["paired_ratios"])


def measure_shape(
    name: str, settings: Settings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The timing rows of one shape (rounds pooled) and its invariance checks."""
    shape = SHAPES[name]
    layers = settings.layers or shape.layers
    max_len = max(c.seq + settings.steps for c in settings.cases)
    model = build_model(shape, layers, max_len)
    rows, checks = [], []
    for compile_mode in settings.compile_modes:
        for r in range(settings.rounds):  # odd rounds reversed: a host that drifts cancels out
            if settings.interleave:
                rows += measure_interleaved(model, shape, layers, compile_mode, settings)
                continue
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                rows += measure_mode(model, shape, layers, compile_mode, mode, settings)
        if settings.check_invariance:
            checks += check_invariance(model, shape, layers, compile_mode, settings)
    rows = pool_rounds(rows)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows, checks


# ------------------------------------------------------------------------------ invariance
@torch.inference_mode()
def probe_rows_match(fn: Callable[..., Any], case: Case, vocab: int) -> tuple[list[int], bool]:
    """A probe prompt alone and at the first, middle and last row of a ``case.batch`` batch
    (``case.seq`` tokens, one forward): the rows it sat at, and whether every one of them got
    the logits it got alone, bit for bit."""
    probe = random_ids(1, case.seq, vocab)
    batch = random_ids(case.batch, case.seq, vocab)
    rows = sorted({0, case.batch // 2, case.batch - 1})
    batch[rows] = probe[0]
    alone = fn(input_ids=probe, use_cache=False, logits_to_keep=1).logits
    together = fn(input_ids=batch, use_cache=False, logits_to_keep=1).logits
    return rows, all(torch.equal(together[r], alone[0]) for r in rows)


def decode_rows_match(
    model: torch.nn.Module, fn: Callable[..., Any], case: Case, vocab: int, steps: int
) -> tuple[list[int], bool]:
    """A probe prompt decoded alone and at the first, middle and last row of a ``case.batch``
    batch (greedy, static cache, eager prefill, ``fn`` per step): the rows, and whether every
    step's logits there equal the lone run's, bit for bit. Under compile the two batch sizes
    run separate decode graphs."""
    probe = random_ids(1, case.seq, vocab)
    rows = sorted({0, case.batch // 2, case.batch - 1})
    runs = {}
    for batch, at in ((1, [0]), (case.batch, rows)):
        runner = DecodeRunner(model, fn, replace(case, batch=batch), steps, vocab)
        runner.prompt[at] = probe[0]
        runner.prefill()
        runs[batch] = runner.steps(record=True)
    pairs = zip(runs[1], runs[case.batch], strict=True)
    return rows, all(torch.equal(many[r], one[0]) for one, many in pairs for r in rows)


def check_invariance(
    model: torch.nn.Module, shape: ModelShape, layers: int, compile_mode: str, settings: Settings
) -> list[dict[str, Any]]:
    """Per mode, whether the largest prefill batch gives a probe row its bits alone: what BI
    mode promises, checked in the configuration whose speed was measured (under compile, a
    fresh graph per batch size, with the reductions Inductor writes itself)."""
    checks = []
    for phase in ("prefill", "decode"):
        cases = [c for c in settings.cases if c.phase == phase]
        if not cases:
            continue
        case = max(cases, key=lambda c: c.batch)
        for mode in MODES:
            check: dict[str, Any] = {
                "shape": shape.name, "layers": layers, "compile": compile_mode, "mode": mode,
                "phase": phase, "batch": case.batch, "seq": case.seq,
            }  # fmt: skip
            try:
                with run_mode(mode):
                    fn = forward_fn(model, compile_mode)
                    if phase == "prefill":
                        rows, equal = probe_rows_match(fn, case, shape.vocab_size)
                    else:
                        steps = min(settings.steps, 4)
                        rows, equal = decode_rows_match(model, fn, case, shape.vocab_size, steps)
                check.update(probe_rows=rows, bitwise_equal=equal)
            except Exception as exc:
                check.update(bitwise_equal=None, error=f"{type(exc).__name__}: {exc}"[:500])
            checks.append(check)
    return checks


def invariance_verdict(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """``bi_invariant``: every batch-invariant check passed (``None`` when none ran)."""
    bi = [c["bitwise_equal"] for c in checks if c["mode"] == "batch_invariant"]
    return {"bi_invariant": all(x is True for x in bi) if bi else None}


# ------------------------------------------------------------------------------ report
def versions() -> dict[str, Any]:
    import transformers

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
    }
    for module in ("triton", "bi_triton_ascend", "ir_dispatch"):
        try:
            found[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            found[module] = None
    try:
        from bi_triton_ascend import _launch_cache

        found["launch_table"] = _launch_cache.enabled()  # BI_TRITON_LAUNCH_CACHE=0 turns it off
    except ImportError:
        found["launch_table"] = None
    found["remembered_selection"] = ird.remembering()  # IR_DISPATCH_REMEMBER=0 turns it off
    # Whether BI compiled graphs launch the GEMMs themselves (IR_DISPATCH_LOWER=0 turns it off).
    found["compile_lowering"] = lowering_enabled() and lowerings_registered()
    found["compile_reductions_routed"] = reductions_routed()  # IR_DISPATCH_LOWER_REDUCTIONS=1
    return found


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's verdict over its modes (eager, compile): every BI row at >= 0.8x its default
    row, and the worst ratio; the ``graphs`` rows get their own worst and geomean ratio."""
    bi = [r for r in rows if r["mode"] == "batch_invariant"]
    ratios = [r["ratio_vs_default"] for r in bi if r["compile"] in TARGET_COMPILE_MODES]
    finite = [x for x in ratios if math.isfinite(x)]
    graphs = [r["ratio_vs_default"] for r in bi if r["compile"] == "graphs"]
    graphs = [x for x in graphs if math.isfinite(x)]
    return {
        "target_compile_modes": list(TARGET_COMPILE_MODES),
        "graphs_min_ratio": min(graphs) if graphs else None,
        "graphs_geomean_ratio": _report.geomean(graphs) if graphs else None,
        "target_ratio": TARGET_RATIO,
        "min_ratio": min(finite) if finite else None,
        "geomean_ratio": _report.geomean(finite) if finite else None,
        "rows_below_target": sum(1 for x in finite if x < TARGET_RATIO),
        "rows_failed": sum(1 for r in rows if "error" in r),
        "target_met": bool(finite) and len(finite) == len(ratios) and min(finite) >= TARGET_RATIO,
    }


def plot(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    """One panel per (shape, phase, compile): tokens/s against batch, a line per mode."""
    panels: _report.Panels = {}
    for r in rows:
        title = f"{r['shape']} {r['phase']} {r['compile']}"
        panels.setdefault(title, {}).setdefault(r["mode"], []).append(
            (float(r["batch"]), float(r["median"]))
        )
    return _report.plot_lines(path, panels, "batch", "tokens/s", logx=True, logy=True)


def report(
    rows: list[dict[str, Any]], verdict: dict[str, Any], checks: list[dict[str, Any]] | None = None
) -> None:
    _report.print_table(rows, TABLE_COLUMNS, "Qwen3 decoder tokens/s: default vs batch-invariant")
    if checks:
        _report.print_table(
            checks, INVARIANCE_COLUMNS, "probe row alone vs inside the batch, bit for bit"
        )
    print(f"\nBI / default: min {verdict['min_ratio']}, geomean {verdict['geomean_ratio']}, "
          f"target >= {TARGET_RATIO}: {'met' if verdict['target_met'] else 'NOT met'}")  # fmt: skip
    if verdict.get("bi_invariant") is not None:
        print(f"batch-invariant mode bitwise invariant in every check: {verdict['bi_invariant']}")
    if verdict.get("graphs_min_ratio") is not None:
        print(f"with CUDA graphs (not in the target): min {verdict['graphs_min_ratio']}, "
              f"geomean {verdict['graphs_geomean_ratio']}")  # fmt: skip


def replot(path: Path) -> None:
    """Table and PNG again from a written result file (e.g. on a machine with matplotlib)."""
    payload = json.loads(path.read_text())
    verdict = payload.get("summary") or summary(payload["results"])
    report(payload["results"], verdict, payload.get("invariance"))
    plot(path.with_suffix(".png"), payload["results"])


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shapes", default="0.6b,8b", help="comma list of 0.6b, 8b")
    parser.add_argument(
        "--compile",
        default="eager,compile",
        help="comma list of eager, compile, graphs (compile with CUDA graphs; not in the target)",
    )
    parser.add_argument("--layers", type=int, help="layers of every shape (default: 0.6b 8, 8b 4)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per repetition")
    parser.add_argument("--decode-prompt", type=int, default=512, help="tokens cached first")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure both modes this many times, odd rounds in reverse order, reps pooled",
    )  # fmt: skip
    parser.add_argument(
        "--interleave", action="store_true",
        help="alternate the modes repetition by repetition (BI rows get paired_ratio)",
    )  # fmt: skip
    parser.add_argument(
        "--no-invariance", action="store_true",
        help="skip the probe-row check (under compile it compiles two more graphs per mode)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny config and few steps (CPU)")
    parser.add_argument("--out", type=Path, help="default: $OUT/model_decoder.json")
    parser.add_argument("--replot", type=Path, help="re-print and re-plot a result file")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings(
        shapes=tuple(s for s in args.shapes.split(",") if s),
        compile_modes=tuple(c for c in args.compile.split(",") if c),
        cases=full_cases(args.decode_prompt),
        steps=args.steps,
        reps=args.reps,
        warmup=args.warmup,
        layers=args.layers,
        rounds=args.rounds,
        interleave=args.interleave,
        check_invariance=not args.no_invariance,
    )
    if base.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {base.rounds}")
    if not base.shapes or not base.compile_modes:
        raise SystemExit("--shapes and --compile need at least one value each")
    for value in (*base.shapes, *base.compile_modes):
        if value not in SHAPES and value not in COMPILE_MODES:
            raise SystemExit(f"unknown shape or compile mode: {value}")
    if args.tiny:
        return replace(base, shapes=("tiny",), cases=TINY_CASES, steps=min(args.steps, 4),
                       warmup=min(args.warmup, 1))  # fmt: skip
    return base


def raise_recompile_limit(limit: int = 64) -> None:
    """Room for one graph per case and mode (dynamo's default of 8 would fall back to eager)."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        replot(args.replot)
        return
    settings = settings_from(args)
    try:
        import bi_triton_ascend  # noqa: F401 - registers the Triton providers
    except ImportError:
        print("bi_triton_ascend not importable: BI mode uses the providers that are installed")
    raise_recompile_limit()
    results_dir = Path(__file__).resolve().parent / "results"
    path = args.out or _report.out_dir(results_dir) / "model_decoder.json"
    head = _report.header(_report.cuda_device(platform.processor() or "cpu"), versions())
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    verdict = summary(rows)
    for name in settings.shapes:
        started = time.perf_counter()
        shape_rows, shape_checks = measure_shape(name, settings)
        rows += shape_rows
        checks += shape_checks
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        add_ratios(rows)  # written after every shape: a run cut short keeps what it measured
        verdict = summary(rows) | invariance_verdict(checks)
        last = name == settings.shapes[-1]
        write_results(path, head, rows, checks, settings, verdict, announce=last)
    report(rows, verdict, checks)
    plot(path.with_suffix(".png"), rows)


def write_results(
    path: Path, head: dict[str, Any], rows: list[dict[str, Any]], checks: list[dict[str, Any]],
    settings: Settings, verdict: dict[str, Any], announce: bool,
) -> None:  # fmt: skip
    setup = asdict(settings) | {
        "layers_per_shape": {s: settings.layers or SHAPES[s].layers for s in settings.shapes},
        "full_layers": {s: SHAPES[s].full_layers for s in settings.shapes},
        "dtype": "bfloat16", "attn_implementation": "eager", "kv_cache": "static",
        "bi_mode": "ir_dispatch.aten_overrides() + ir_dispatch.batch_invariant()",
        "timing": "CUDA events around each repetition (perf_counter on CPU); median of reps",
    }  # fmt: skip
    payload = {**head, "setup": setup, "summary": verdict, "results": rows, "invariance": checks}
    _report.write_json(path, payload, announce=announce)


if __name__ == "__main__":
    main()
