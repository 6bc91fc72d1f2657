"""Host (Python) cost per call of the batch-invariant ops at decode sizes, layer by layer.

At decode sizes a GEMM or a norm costs the GPU a few microseconds, so an op whose Python costs
more than that leaves the GPU idle whenever it runs outside a CUDA graph (eager mode, vLLM's
prefill steps above the largest captured size, the trainer). This benchmark separates where
that time goes, for each op, in batch-invariant mode:

``torch``       the non-invariant torch op (the baseline, ``ratio_vs_default`` divides by it);
``kernel``      the provider's function called directly (``bi_triton_ascend.linear`` ...);
``kernel_triton_run``  the same with ``bi_triton_ascend``'s launch table off: every launch
                goes through Triton's ``JITFunction.run`` (its per-call argument binding);
``aten``        the torch op itself with ``ir_dispatch.aten_overrides()`` installed, the path
                of eager models (``model_decoder.py``); not for the norms (no aten op);
``aten_select_every_call``  the same with ir-dispatch's remembered selection off
                (``IR_DISPATCH_REMEMBER=0``): selection and the op's own plan lookup per call;
``select``      ``IrOp.call_selected``: choosing the implementation, then calling it;
``ir_op``       ``ir_dispatch.ops.<op>``, the registered torch op vLLM's graphs call;
``graph``       the same op captured in a CUDA graph and replayed: the GPU time alone.

Each path runs ``--calls`` calls back to back and one synchronize; the wall time per call is
the host cost whenever it exceeds the kernel's GPU time (compare with ``graph``). Every
repetition is kept. A cProfile of ``ir_op`` for the GEMM names the Python functions that cost
most. Writes ``host_cost.json`` (+ PNG with matplotlib) under ``$OUT`` or ``benchmarks/results``.

    source scripts/gpu/env.sh && python benchmarks/host_cost.py
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import platform
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

Case = tuple[str, str, Callable[[], Any], dict[str, Callable[[], Any]]]


QWEN3_06B = {"hidden": 1024, "qkv": 4096, "vocab": 151936}
TINY = {"hidden": 32, "qkv": 64, "vocab": 96}
"""``--tiny``: sizes the CPU interpreter runs in seconds (CI checks the CLI and the JSON)."""


def cases(device: str, sizes: dict[str, int]) -> list[Case]:
    """(op, shape label, torch baseline, {path: callable}) at decode sizes (Qwen3-0.6B's)."""
    import bi_triton_ascend as bta
    import ir_dispatch as ird

    bf16 = torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    hid, qkv, vocab = sizes["hidden"], sizes["qkv"], sizes["vocab"]
    out: list[Case] = []
    for m in (1, 64):
        x, w = rand(m, hid), rand(qkv, hid)
        out.append((
            "linear", f"{m}x{hid} @ {qkv}x{hid}",
            lambda x=x, w=w: torch.nn.functional.linear(x, w),
            {"kernel": lambda x=x, w=w: bta.linear(x, w),
             "select": lambda x=x, w=w: ird.ops.linear.call_selected(x, w),
             "ir_op": lambda x=x, w=w: ird.ops.linear(x, w)},
        ))  # fmt: skip
    h, r, nw = rand(1, hid), rand(1, hid), rand(hid)
    out.append((
        "rms_norm", f"1x{hid}",
        lambda: torch.nn.functional.rms_norm(h, (hid,), nw, 1e-6),
        {"kernel": lambda: bta.rms_norm(h, nw, 1e-6),
         "select": lambda: ird.ops.rms_norm.call_selected(h, nw, 1e-6),
         "ir_op": lambda: ird.ops.rms_norm(h, nw, 1e-6)},
    ))  # fmt: skip
    out.append((
        "fused_add_rms_norm", f"1x{hid}",
        lambda: torch.nn.functional.rms_norm(h + r, (hid,), nw, 1e-6),
        {"kernel": lambda: bta.fused_add_rms_norm(h, r, nw, 1e-6),
         "select": lambda: ird.ops.fused_add_rms_norm.call_selected(h, r, nw, 1e-6),
         "ir_op": lambda: ird.ops.fused_add_rms_norm(h, r, nw, 1e-6)},
    ))  # fmt: skip
    hs = rand(1, 1, hid, dtype=torch.float32)  # transformers' RMSNorm: mean of squares, fp32
    out.append((
        "mean", f"1x1x{hid} fp32 keepdim",
        lambda: hs.mean(-1, keepdim=True),
        {"kernel": lambda: bta.mean(hs, [-1], True),
         "select": lambda: ird.ops.mean.call_selected(hs, [-1], True, None),
         "ir_op": lambda: ird.ops.mean(hs, [-1], True, None)},
    ))  # fmt: skip
    scores = rand(1, 16, 1, 530, dtype=torch.float32)  # eager attention's probabilities
    out.append((
        "softmax", "1x16x1x530 fp32",
        lambda: torch.softmax(scores, -1),
        {"kernel": lambda: bta.softmax(scores, -1),
         "select": lambda: ird.ops.softmax.call_selected(scores, -1, None),
         "ir_op": lambda: ird.ops.softmax(scores, -1, None)},
    ))  # fmt: skip
    logits = rand(1, vocab, dtype=torch.float32)
    out.append((
        "log_softmax", f"1x{vocab} fp32",
        lambda: torch.log_softmax(logits, -1),
        {"kernel": lambda: bta.log_softmax(logits, -1),
         "select": lambda: ird.ops.log_softmax.call_selected(logits, -1),
         "ir_op": lambda: ird.ops.log_softmax(logits, -1)},
    ))  # fmt: skip
    return out


@contextlib.contextmanager
def path_context(path: str) -> Iterator[None]:
    """What a path runs under: the aten overrides, or the launch table off, or nothing."""
    import ir_dispatch as ird
    from bi_triton_ascend import _launch_cache

    if path == "aten":
        with ird.aten_overrides():
            yield
    elif path == "aten_select_every_call":
        ird.set_remembering(False)
        try:
            with ird.aten_overrides():
                yield
        finally:
            ird.set_remembering(True)
    elif path == "kernel_triton_run":
        with _launch_cache.table_off():
            yield
    else:
        yield


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_call_us(fn: Callable[[], Any], calls: int, device: str) -> float:
    """Wall microseconds per call over ``calls`` back-to-back calls and one synchronize."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls * 1e6


def graph_us(fn: Callable[[], Any], calls: int) -> float:
    """GPU microseconds per call: ``calls`` calls captured in one CUDA graph, replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def profile_top(fn: Callable[[], Any], calls: int, device: str, top: int = 25) -> list[str]:
    """The ``top`` functions by own time over ``calls`` calls (cProfile), as text lines."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    sync(device)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return [line for line in buf.getvalue().splitlines() if line.strip()]


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import ir_dispatch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": ver("triton"), "ir_dispatch_registration": getattr(
                ir_dispatch.registry, "REGISTRATION", "torch.library.custom_op"),
            "launch_table": str(_launch_table_on())}  # fmt: skip


def _launch_table_on() -> bool:
    from bi_triton_ascend import _launch_cache

    return _launch_cache.enabled()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per path first")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CPU interpreter, CI)")
    p.add_argument("--label", default="", help="suffix of the output name (e.g. a branch)")
    p.add_argument("--out", type=Path, help="default: $OUT or benchmarks/results")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    import ir_dispatch as ird

    rows: list[dict[str, Any]] = []
    with ird.batch_invariant():
        all_cases = cases(device, TINY if args.tiny else QWEN3_06B)
        for op, shape, baseline, paths in all_cases:
            timed = {"torch": baseline, **paths, "kernel_triton_run": paths["kernel"]}
            if op in ("linear", "log_softmax", "mean", "softmax"):
                timed["aten"] = baseline
                timed["aten_select_every_call"] = baseline
            base_reps: list[float] = []
            for path, fn in timed.items():
                with path_context(path):
                    for _ in range(args.warmup):  # JIT compiles, launch-table entries
                        fn()
                    reps = [per_call_us(fn, args.calls, device) for _ in range(args.reps)]
                base_reps = reps if path == "torch" else base_reps
                rows.append({"op": op, "shape": shape, "path": path, "unit": "us/call (wall)",
                             "value": _report.median(reps), "reps": reps})  # fmt: skip
            if device == "cuda":
                reps = [graph_us(paths["ir_op"], 200) for _ in range(args.reps)]
                rows.append({"op": op, "shape": shape, "path": "graph", "unit": "us/call (GPU)",
                             "value": _report.median(reps), "reps": reps})  # fmt: skip
            base = _report.median(base_reps)
            for row in rows:
                if row["op"] == op and row["shape"] == shape:
                    row["ratio_vs_default"] = row["value"] / base
        gemm = all_cases[0][3]["ir_op"]
        profile = profile_top(gemm, min(500, args.calls), device)
    _report.print_table(rows, ["op", "shape", "path", "value", "ratio_vs_default"])
    print("\n".join(profile[:40]))
    head = _report.header(_report.cuda_device(platform.processor() or "cpu"), versions())
    out = args.out or _report.out_dir(Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    name = f"host_cost{'_' + args.label if args.label else ''}"
    _report.write_results(out / f"{name}.json", head, rows, calls=args.calls,
                          ratio_note="per-call time over the torch op's",
                          profile_linear_ir_op=profile)  # fmt: skip
    panels = {f"{r['op']} {r['shape']}": {} for r in rows}
    for r in rows:
        panels[f"{r['op']} {r['shape']}"].setdefault("us/call", {})[r["path"]] = r["value"]
    _report.plot_bars(out / f"{name}.png", panels, "us per call", title=head["device"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
