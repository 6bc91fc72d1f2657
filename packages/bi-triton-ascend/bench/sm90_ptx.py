"""Compile the attention's paged launch for sm90 on a machine without a GPU, and read its loop.

The lent H100 gives 30 minutes a session; this answers, from PTX, the questions that do not
need one: does the key loop overlap its loads with its math (``cp.async.wait_group N`` with
``N > 0`` keeps N tile loads in flight; ``0`` waits for the loads it has just issued), how much
shared memory does a program take (two programs per SM need at most about 113 KiB each), which
matrix instructions run, how many registers a thread takes and whether it spills (the cubin's
resource usage, read with the ``cuobjdump`` Triton ships). Triton's NVIDIA backend compiles to PTX
and cubin with no device; only the launch is skipped (``JITFunction.run`` is replaced for the
duration of the script).

    python bench/sm90_ptx.py                       # decode and paged prefill, stages 2/3 x prefetch
    python bench/sm90_ptx.py --queries 1 --stages 3 --prefetch --dump /tmp/ptx
    python bench/sm90_ptx.py --queries 1 --stages 1 --split --keys 32768 --seqs 1   # split decode

Measured with it (Triton 3.6, decode of 64 sequences x 1024 paged keys, Qwen3 GQA heads): only
3 stages with the block-table prefetch pipeline the key loop (``wait_group 2``, 115 200 bytes
of shared memory); 2 stages, with or without the prefetch, and 3 without it wait for every
tile right after issuing its loads (``wait_group 0``). The H100 timed them alike
(``tune_attention_prefetch_h100.json``). The split decode kernel took 255 registers and spilled
136 bytes per thread until its partials were stored chunk-major (244 registers with these heads,
no spill).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, whatever the caller's shell says

import _common
import torch

_common.add_src_paths()

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.compiler import compile as triton_compile  # noqa: E402
from triton.runtime import jit as triton_jit  # noqa: E402

from bi_triton_ascend import _platform  # noqa: E402
from bi_triton_ascend.attention import _launch, config  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 16, 8, 128, 16  # Qwen3-0.6B attention, vLLM's block


class CompileOnly:
    """Within ``with``: every Triton launch compiles for :data:`TARGET` and is recorded, not run."""

    def __init__(self) -> None:
        self.kernels: list[Any] = []
        self._backend = make_backend(TARGET)

    def __enter__(self) -> CompileOnly:
        self._saved = triton_jit.JITFunction.run
        recorder = self

        def run(fn: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
            kwargs.update(debug=False, instrumentation_mode="")
            binder = triton_jit.create_function_from_signature(
                fn.signature, fn.params, recorder._backend
            )
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(
                recorder._backend, kwargs, bound, specialization, options
            )
            source = ASTSource(fn, signature, constexprs, attrs)
            kernel = triton_compile(source, target=TARGET, options=options.__dict__)
            recorder.kernels.append(kernel)
            return kernel

        triton_jit.JITFunction.run = run  # type: ignore[method-assign]
        self._platform = {name: getattr(_platform, name) for name in _PRETEND_SM90}
        for name, value in _PRETEND_SM90.items():
            setattr(_platform, name, value)
        return self

    def __exit__(self, *exc: object) -> None:
        triton_jit.JITFunction.run = self._saved  # type: ignore[method-assign]
        for name, value in self._platform.items():
            setattr(_platform, name, value)


# What the launcher asks the platform layer, answered as an H100 would.
_PRETEND_SM90: dict[str, Any] = {
    "interpreting": lambda: False,
    "upcast_dot": lambda: False,
    "dot_precision": lambda dtype: None,
    "arch": lambda device: "sm90",
    "num_programs": lambda device: 132,
    "capturing": lambda device: False,
    "partials_cache_modifier": lambda device: ".cg",
}


def paged_launch(
    queries: int,
    stages: int | None,
    prefetch: bool | None,
    seqs: int,
    keys: int,
    block_n: int | None = None,
    split: bool = False,
) -> Any:
    """Compile one paged launch (``queries`` per sequence; fused unless ``split``) and return
    its attention kernel (a split launch compiles the combine kernel too)."""
    blocks = seqs * keys // BLOCK_SIZE
    q = torch.zeros(seqs * queries, HEADS, HEAD_SIZE, dtype=torch.bfloat16)
    cache = torch.zeros(blocks, BLOCK_SIZE, KV_HEADS, HEAD_SIZE, dtype=torch.bfloat16)
    table = torch.arange(blocks, dtype=torch.int32).reshape(seqs, -1)
    lens = torch.full((seqs,), keys, dtype=torch.int32)
    starts = torch.arange(seqs + 1, dtype=torch.int32) * queries
    with CompileOnly() as compiled:
        cfg = config.launch_config(
            HEAD_SIZE, torch.bfloat16, HEADS // KV_HEADS, False,
            prefill=queries >= config.PREFILL_QUERIES_PER_SEQ, paged=True,
        )  # fmt: skip
        if stages is not None:
            cfg = dataclasses.replace(cfg, num_stages=stages)
        if prefetch is not None:
            cfg = dataclasses.replace(cfg, prefetch_table=prefetch)
        if block_n is not None:
            cfg = dataclasses.replace(cfg, block_n=block_n)
        _launch.launch(
            q, cache, cache, table, lens, starts, None, scale=HEAD_SIZE**-0.5,
            sliding_window=None, causal=True, max_seq_len=keys,
            mode="split" if split else "fused", config=cfg,
        )  # fmt: skip
    return compiled.kernels[0]


def compile_gluon(fn: Any, args: tuple[Any, ...], **options: Any) -> Any:
    """A Gluon kernel ``fn`` compiled for :data:`TARGET` with ``args`` (tensors give dtypes and
    alignment only) and compile ``options`` (``num_warps``, ...), without a device."""
    from triton.experimental.gluon._runtime import GluonASTSource

    backend = make_backend(TARGET)
    kwargs: dict[str, Any] = {**options, "debug": False, "instrumentation_mode": ""}
    binder = triton_jit.create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, compile_options = binder(*args, **kwargs)
    compile_options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, compile_options
    )
    source = GluonASTSource(fn, signature, constexprs, attrs)
    return triton_compile(source, target=TARGET, options=compile_options.__dict__)


def mma_events(ptx: str) -> list[str]:
    """The MMA issues, MMA waits and ``ex2`` runs of ``ptx``, in program order (runs merged)."""
    events = re.findall(r"wgmma\.mma_async|wgmma\.wait_group\.sync\.aligned \d+|ex2\.approx", ptx)
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


def gluon_report(kernel: Any) -> dict[str, Any]:
    """Registers, spills, shared memory, ``cp.async`` wait depths, matrix instructions and the
    order of MMA issues, MMA waits and ``ex2`` runs of a compiled Gluon kernel."""
    ptx = kernel.asm["ptx"]
    return {
        **resource_usage(kernel),
        "shared_bytes": kernel.metadata.shared,
        "wait_groups": sorted({int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", ptx)}),
        "wgmma": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
        "order": mma_events(ptx),
    }


def resource_usage(kernel: Any) -> dict[str, int | None]:
    """Registers and spill stack per thread from the cubin (``None`` without ``cuobjdump``)."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    if not tool.is_file():
        return {"registers": None, "stack_bytes": None}
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", str(cubin)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)", text)
    if found is None:
        return {"registers": None, "stack_bytes": None}
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2))}


def loop_report(kernel: Any) -> dict[str, Any]:
    """Shared memory, the ``cp.async`` wait depths, the matrix instructions, registers and
    spills of a kernel."""
    ptx = kernel.asm["ptx"]
    return {
        **resource_usage(kernel),
        "shared_bytes": kernel.metadata.shared,
        "num_warps": kernel.metadata.num_warps,
        "num_stages": kernel.metadata.num_stages,
        "wait_groups": sorted({int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", ptx)}),
        "cp_async_16B": len(re.findall(r"cp\.async\.cg\.shared\.global[^;]*0x10", ptx)),
        "wgmma": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, nargs="*", default=[1, 128])
    parser.add_argument("--stages", type=int, nargs="*", default=[2, 3])
    parser.add_argument("--prefetch", action="store_true", help="only the prefetch form")
    parser.add_argument("--block-n", type=int, help="another key tile (changes the chain)")
    parser.add_argument("--split", action="store_true", help="the split launch, not the fused")
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1024)
    parser.add_argument("--dump", type=Path, help="write each kernel's PTX and TTGIR here")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for queries in args.queries:
        for stages in args.stages:
            for prefetch in [True] if args.prefetch else [False, True]:
                kernel = paged_launch(
                    queries, stages, prefetch, args.seqs, args.keys, args.block_n, args.split
                )
                name = f"q{queries}-s{stages}{'p' if prefetch else ''}"
                name += "-split" if args.split else ""
                rows.append({"launch": name, **loop_report(kernel)})
                if args.dump:
                    args.dump.mkdir(parents=True, exist_ok=True)
                    for kind in ("ptx", "ttgir"):
                        (args.dump / f"{name}.{kind}").write_text(kernel.asm[kind])
    _common.print_table(rows, list(rows[0]), "paged attention on sm90 (compiled, not run)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
