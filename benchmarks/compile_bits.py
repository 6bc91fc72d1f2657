"""Where a compiled batch-invariant model loses its bits (issue #4): compile one part at a time.

``model_decoder.py``'s invariance check found the compiled Qwen3 decoder batch-variant in
batch-invariant mode, with Inductor's own reductions and with them routed to the kit. This
script narrows such a failure down. Per variant it compiles one kind of submodule (the whole
model, the RMSNorms, the attention blocks, the MLPs) with the rest eager, with ir-dispatch's
defaults (reductions routed, eager casts kept) or parts of them turned off, and records for a
probe prompt:

* ``invariant``: its last-position logits alone equal its logits at the first, middle and last
  row of a larger batch, bit for bit;
* ``equals_eager``: its logits alone equal the eager model's, bit for bit;
* ``max_abs_diff``: the largest difference behind a ``False`` in ``invariant``.

A diagnostic, not a benchmark: nothing is timed. Run on the GPU machine::

    source scripts/gpu/env.sh && python benchmarks/compile_bits.py --layers 2

On CPU: ``python benchmarks/compile_bits.py --shape tiny --layers 1 --batch 3 --seq 8``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report
import model_decoder as md


@dataclass(frozen=True)
class Variant:
    """One configuration: what is compiled, and which of ir-dispatch's defaults are kept.

    ``routed``: ``IR_DISPATCH_LOWER_REDUCTIONS`` (off also drops the eager casts); ``casts``:
    ``False`` keeps the routing but lets Inductor elide casts; ``inductor``: config patches.
    """

    name: str
    scope: str  # "model", or a submodule kind of SCOPES
    routed: bool = True
    casts: bool = True
    inductor: dict[str, Any] = field(default_factory=dict)


SCOPES = {
    "norms": lambda name, mod: type(mod).__name__.endswith("RMSNorm"),
    "attention": lambda name, mod: name.endswith("self_attn"),
    "mlp": lambda name, mod: name.endswith(".mlp"),
}

VARIANTS = [
    Variant("model", "model"),
    Variant("model-unrouted", "model", routed=False),
    Variant("model-casts-elided", "model", casts=False),
    Variant(
        "model-unrouted-casts", "model", routed=False, inductor={"emulate_precision_casts": True}
    ),
    Variant("norms", "norms"),
    Variant("attention", "attention"),
    Variant("mlp", "mlp"),
]


@contextlib.contextmanager
def defaults_kept(variant: Variant) -> Iterator[None]:
    """The variant's routing switch and cast handling for the block."""
    from torch._inductor import config as inductor_config

    from ir_dispatch import _inductor_pass

    saved_env = os.environ.get("IR_DISPATCH_LOWER_REDUCTIONS")
    saved_casts = _inductor_pass.eager_casts
    os.environ["IR_DISPATCH_LOWER_REDUCTIONS"] = "1" if variant.routed else "0"
    if not variant.casts:
        _inductor_pass.eager_casts = lambda on: None  # type: ignore[assignment]
    try:
        with inductor_config.patch(variant.inductor):
            yield
    finally:
        _inductor_pass.eager_casts = saved_casts  # type: ignore[assignment]
        if saved_env is None:
            os.environ.pop("IR_DISPATCH_LOWER_REDUCTIONS")
        else:
            os.environ["IR_DISPATCH_LOWER_REDUCTIONS"] = saved_env


@contextlib.contextmanager
def compiled_parts(model: torch.nn.Module, scope: str) -> Iterator[Any]:
    """The callable to run: the compiled model, or the model with ``scope``'s modules compiled."""
    torch._dynamo.reset()
    if scope == "model":
        yield torch.compile(model, dynamic=False)
        return
    chosen = [mod for name, mod in model.named_modules() if SCOPES[scope](name, mod)]
    if not chosen:
        raise ValueError(f"scope {scope!r} matched no module")
    saved = [mod.forward for mod in chosen]
    for mod in chosen:
        mod.forward = torch.compile(mod.forward, dynamic=False)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for mod, forward in zip(chosen, saved, strict=True):
            mod.forward = forward  # type: ignore[method-assign]


def logits(fn: Any, ids: torch.Tensor) -> torch.Tensor:
    return fn(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()


def compare(alone: torch.Tensor, together: torch.Tensor, rows: list[int]) -> dict[str, Any]:
    diffs = [(together[r] - alone[0]).abs().max().item() for r in rows]
    return {"invariant": all(torch.equal(together[r], alone[0]) for r in rows),
            "max_abs_diff": max(diffs)}  # fmt: skip


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="0.6b", choices=sorted(md.SHAPES))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--variants", help="comma list of variant names (default: all)")
    p.add_argument("--out", type=Path, help="default: $OUT or benchmarks/results")
    args = p.parse_args(argv)
    import bi_triton_ascend  # noqa: F401  (registers the batch-invariant kernels)

    torch._dynamo.config.cache_size_limit = 64  # one graph per compiled module instance
    shape = md.SHAPES[args.shape]
    model = md.build_model(shape, args.layers, args.seq + 8)
    probe = md.random_ids(1, args.seq, shape.vocab_size)
    batch = md.random_ids(args.batch, args.seq, shape.vocab_size)
    rows = sorted({0, args.batch // 2, args.batch - 1})
    batch[rows] = probe[0]
    wanted = set(args.variants.split(",")) if args.variants else None
    results = []
    with md.run_mode("batch_invariant"):
        eager_alone = logits(model, probe)
        eager = compare(eager_alone, logits(model, batch), rows)
        results.append({"variant": "eager", "scope": "-", "equals_eager": True, **eager})
        for variant in VARIANTS:
            if wanted is not None and variant.name not in wanted:
                continue
            row: dict[str, Any] = {"variant": variant.name, "scope": variant.scope,
                                   "routed": variant.routed, "casts": variant.casts,
                                   "inductor": variant.inductor}  # fmt: skip
            try:
                with defaults_kept(variant), compiled_parts(model, variant.scope) as fn:
                    alone = logits(fn, probe)
                    row.update(compare(alone, logits(fn, batch), rows))
                    row["equals_eager"] = torch.equal(alone, eager_alone)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                traceback.print_exc()
            print(row, flush=True)
            results.append(row)
    for row in results:
        row.update(value=row.get("invariant"), unit="bitwise invariant", reps=[])
    _report.print_table(results, ["variant", "invariant", "equals_eager", "max_abs_diff"])
    out = args.out or _report.out_dir(Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    head = _report.header(_report.cuda_device("cpu"), md.versions())
    settings = {"shape": shape.name, "layers": args.layers, "batch": args.batch,
                "seq": args.seq, "probe_rows": rows}  # fmt: skip
    _report.write_results(out / f"compile_bits_{shape.name}.json", head, results, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
