"""The ``vllm-bi`` command: ``demo``, ``check`` and ``info``.

``vllm-bi demo`` is the kit's main job on a laptop or CI machine: vLLM on CPU with and without
batch invariance, side by side. ``vllm-bi check`` audits a PyTorch module or a model directory
op by op and names the first op where the batch changes a row. ``vllm-bi info`` says what this
machine has and what the plugin would install here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="vllm-bi", description="Batch-invariant inference for vLLM: demo, audit, info."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,check,info}")

    demo = sub.add_parser(
        "demo",
        help="vLLM on CPU with and without batch invariance, side by side",
        description="Builds a small random-weight Qwen3, runs vLLM (CPU) on a needle prompt alone "
        "and inside batches with and without VLLM_BATCH_INVARIANT=1, prints a table and saves "
        "a PNG.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("vllm-bi-demo"), help="output directory (PNG, JSON, logs)"
    )
    demo.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache (default: $VLLM_BI_CACHE or ~/.cache/vllm-bi)",
    )
    demo.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=[4, 16],
        help="comma-separated, each >= 2 (default 4,16)",
    )
    demo.add_argument(
        "--max-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)"
    )
    demo.add_argument(
        "--compile", action="store_true", help="use vLLM's torch.compile mode (slower start)"
    )

    check = sub.add_parser(
        "check",
        help="op-level batch-invariance audit of a module or model directory",
        description="Runs a probe input alone and inside batches (front/middle/back) and names the "
        "first aten op whose output for the probe differs, with shapes.",
    )
    check.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a transformers model directory, or 'package.module:factory' returning a module or "
        "(module, probe); default: the demo's random Qwen3 (2 layers)",
    )
    check.add_argument("--mode", choices=("batch_invariant", "default"), default="batch_invariant")
    check.add_argument("--batch-sizes", type=_int_list, default=[1, 2, 3, 8, 16, 17])
    check.add_argument("--positions", type=_str_list, default=["front", "middle", "back"])
    check.add_argument(
        "--seq-len", type=int, default=16, help="probe length for language models (default 16)"
    )
    check.add_argument(
        "--probe-shape",
        type=_int_list,
        default=None,
        help="probe shape without the batch dim, for factories returning only a module",
    )
    check.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="bf16",
        help="dtype to load a model directory in",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    info = sub.add_parser("info", help="platform, packages, and what the plugin installs here")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--no-dry-run",
        action="store_true",
        help="do not register the plugin to see what it installs",
    )
    return parser


def _load_check_target(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    """The module and probe ``vllm-bi check`` audits."""
    spec = args.model
    if spec is not None and ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        made = getattr(importlib.import_module(module_name), attr)()
        if isinstance(made, tuple):
            module, probe = made
            return module, probe
        if args.probe_shape is None:
            raise SystemExit(
                f"{spec} returned only a module: pass --probe-shape (without the batch dim)"
            )
        return made, torch.randn(1, *args.probe_shape, generator=torch.Generator().manual_seed(0))
    from transformers import AutoModelForCausalLM

    if spec is None:
        from .models import Qwen3Shape, default_cache_dir, write_random_qwen3

        shape = Qwen3Shape(num_layers=2)
        path = write_random_qwen3(default_cache_dir() / shape.name, shape)
    else:
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise SystemExit(
                f"{spec} is neither a model directory (no config.json) nor 'module:factory'"
            )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[args.dtype])
    vocab = int(model.config.vocab_size)
    probe = torch.randint(3, vocab, (1, args.seq_len), generator=torch.Generator().manual_seed(0))
    return model, probe


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check_module

    module, probe = _load_check_target(args)
    report = check_module(
        module, probe, batch_sizes=args.batch_sizes, positions=args.positions, mode=args.mode
    )
    print(json.dumps(report.as_dict(), indent=1, default=str) if args.json else report)
    return 0 if report.ok else 1


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import format_info, gather

    data = gather(run_dry=not args.no_dry_run)
    print(json.dumps(data, indent=1) if args.json else format_info(data))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if any(b < 2 for b in args.batch_sizes):
        raise SystemExit(
            f"--batch-sizes must all be >= 2 (the needle plus others), got {args.batch_sizes}"
        )
    try:
        demo.main(
            out_dir=args.out,
            cache_dir=args.cache_dir,
            batch_sizes=args.batch_sizes,
            max_tokens=args.max_tokens,
            compile=args.compile,
        )
    except (RuntimeError, ModuleNotFoundError) as exc:
        print(f"vllm-bi demo: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vllm-bi`` script."""
    args = build_parser().parse_args(argv)
    handlers = {"demo": _cmd_demo, "check": _cmd_check, "info": _cmd_info}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
