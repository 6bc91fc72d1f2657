"""Paged decode attention: fixed-chunk split KV vs no split (vLLM's batch-invariant mode).

Qwen3-8B heads (32 query, 8 KV, head 128), bf16, block size 16, every sequence of a batch at
the same context length. Lines:

* ``ours``: the batch-invariant kernel, ``mode="auto"`` (splits KV into its chunks, 256 keys
  up to key 4096 and 512 after, when the device would otherwise idle, then folds the chunks in
  order).
* ``ours fused``: the same kernel forced to one program per (sequence, KV head); same bits.
* ``no split``: the same kernel with one chunk per sequence (``kv_chunk`` = whole sequence),
  i.e. what vLLM's batch-invariant mode does with ``max_num_splits=1``: the baseline.
* ``ours chunk512`` / ``ours 16 rows``: tuning probes (uniform 512-key chunks, the launcher's
  ``kv_chunk`` override; 16-row tiles with 4 warps), other bits than ``ours``.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on a contiguous copy of the
  cache (``enable_gqa``), batch-variant, for scale; ``flash_attn`` paged decode if importable.

A second table times the trainer's packed causal prefill (4 x 4096 tokens) against SDPA.
Each decode row also checks invariance: sequence 0 of the batch equals sequence 0 decoded alone, and
split equals fused, bitwise. Writes ``bench_attention.json`` and ``.png`` to ``$OUT``.

    python bench/bench_attention.py [--contexts 1024,8192,32768] [--batches 1,8] [--rep 40]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import _common
import torch

_common.add_src_paths()

import dataclasses  # noqa: E402

from bi_triton_ascend.attention import attention_config, paged_attention  # noqa: E402
from bi_triton_ascend.attention._launch import launch  # noqa: E402

HEADS, KV_HEADS, HEAD = 32, 8, 128  # Qwen3-8B
BLOCK = 16
DT = torch.bfloat16
NO_SPLIT_CHUNK = 1 << 20  # one chunk covers any benchmarked sequence
BASELINE = "no split"


def _case(batch: int, ctx: int, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    blocks = batch * ctx // BLOCK
    kc = torch.randn(blocks, BLOCK, KV_HEADS, HEAD, generator=gen, device="cuda").to(DT)
    vc = torch.randn(blocks, BLOCK, KV_HEADS, HEAD, generator=gen, device="cuda").to(DT)
    perm = torch.randperm(blocks, generator=gen, device="cuda").to(torch.int32)
    return {
        "q": torch.randn(batch, HEADS, HEAD, generator=gen, device="cuda").to(DT),
        "k": kc,
        "v": vc,
        "table": perm.view(batch, ctx // BLOCK),
        "lens": torch.full((batch,), ctx, dtype=torch.int32, device="cuda"),
        "starts": torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
    }


def _ours(c: dict[str, Any], ctx: int, mode: str) -> Callable[[], torch.Tensor]:
    args = (c["q"], c["k"], c["v"], c["table"], c["lens"], c["starts"])
    return lambda: paged_attention(*args, HEAD**-0.5, max_seq_len=ctx, mode=mode)


def _variant(c: dict[str, Any], ctx: int, mode: str, **over: Any) -> Callable[[], torch.Tensor]:
    """The same kernel with uniform chunks of another length or other tiles (``kv_chunk``,
    ``config``)."""

    def run() -> torch.Tensor:
        return launch(
            c["q"], c["k"], c["v"], c["table"], c["lens"], c["starts"], None,
            scale=HEAD**-0.5, sliding_window=None, causal=True, max_seq_len=ctx,
            mode=mode, **over,
        )  # fmt: skip

    return run


def _small_tiles() -> Any:
    """16 query rows and 4 warps instead of 64 and 8: less padding work for decode."""
    cfg = attention_config(HEAD, DT, HEADS // KV_HEADS, False)
    return dataclasses.replace(cfg, block_m=16, num_warps=4)


def _sdpa(c: dict[str, Any], batch: int, ctx: int) -> Callable[[], torch.Tensor]:
    def contiguous(cache: torch.Tensor) -> torch.Tensor:
        rows = cache[c["table"].long()].reshape(batch, ctx, KV_HEADS, HEAD)
        return rows.transpose(1, 2).contiguous()

    k, v = contiguous(c["k"]), contiguous(c["v"])
    q = c["q"].unsqueeze(2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return lambda: sdpa(q, k, v, enable_gqa=True)


def _flash(c: dict[str, Any]) -> Callable[[], torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        return None
    q = c["q"].unsqueeze(1)

    def run() -> torch.Tensor:
        return flash_attn_with_kvcache(
            q, c["k"], c["v"], cache_seqlens=c["lens"], block_table=c["table"], causal=True
        )

    try:  # flash-attn 2 wants paged blocks of 256 tokens; skip the line where it refuses ours
        run()
    except RuntimeError as err:
        print(f"flash_attn skipped: {err}")
        return None
    return run


def _bytes(batch: int, ctx: int) -> int:
    return 2 * batch * ctx * KV_HEADS * HEAD * 2  # K and V read once, bf16


def _invariance(c: dict[str, Any], ctx: int) -> dict[str, bool]:
    """Sequence 0 alone == sequence 0 in the batch; split == fused (bitwise, fp32 out)."""
    full = (c["q"], c["k"], c["v"], c["table"], c["lens"], c["starts"])
    one = (c["q"][:1], c["k"], c["v"], c["table"][:1], c["lens"][:1], c["starts"][:2])
    kw: dict[str, Any] = {"max_seq_len": ctx, "out_dtype": torch.float32}
    split = paged_attention(*full, HEAD**-0.5, mode="split", **kw)
    fused = paged_attention(*full, HEAD**-0.5, mode="fused", **kw)
    alone = paged_attention(*one, HEAD**-0.5, mode="auto", **kw)
    return {
        "row0_alone_equals_batch": bool(torch.equal(alone[0], split[0])),
        "split_equals_fused": bool(torch.equal(split, fused)),
    }


def _prefill_rows(rep: int, batch: int = 4, length: int = 4096) -> list[dict[str, Any]]:
    """Trainer-side prefill (packed varlen, causal): ours vs 16-row tiles vs SDPA, TFLOP/s."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    total = batch * length
    q = torch.randn(total, HEADS, HEAD, generator=gen, device="cuda").to(DT)
    k = torch.randn(total, KV_HEADS, HEAD, generator=gen, device="cuda").to(DT)
    v = torch.randn(total, KV_HEADS, HEAD, generator=gen, device="cuda").to(DT)
    cu = torch.arange(0, total + 1, length, dtype=torch.int32, device="cuda")

    def ours(**over: Any) -> Callable[[], torch.Tensor]:
        return lambda: launch(
            q, k, v, None, cu[1:] - cu[:-1], cu, cu, scale=HEAD**-0.5, sliding_window=None,
            causal=True, max_seq_len=length, mode="auto", **over,
        )  # fmt: skip

    qb = q.view(batch, length, HEADS, HEAD).transpose(1, 2)
    kb = k.view(batch, length, KV_HEADS, HEAD).transpose(1, 2)
    vb = v.view(batch, length, KV_HEADS, HEAD).transpose(1, 2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    lines = {
        "ours": ours(),
        "ours 16 rows": ours(config=_small_tiles()),
        "sdpa": lambda: sdpa(qb, kb, vb, is_causal=True, enable_gqa=True),
    }
    flops = 4 * batch * length * length / 2 * HEADS * HEAD
    times = {n: _common.time_ms(f, rep_ms=rep) for n, f in lines.items()}
    base = _common.median(times["sdpa"])
    return [
        {
            "op": "varlen_prefill", "batch": batch, "context": length, "provider": n,
            "ms": _common.median(r), "reps_ms": r, "ratio_to_baseline": _common.median(r) / base,
            "baseline": "sdpa", "tflops": flops / _common.median(r) / 1e9,
        }
        for n, r in times.items()
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="1024,8192,32768")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rep", type=int, default=40, help="do_bench rep time per point, ms")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA device")
    contexts = [int(x) for x in args.contexts.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for batch in batches:
        for ctx in contexts:
            c = _case(batch, ctx)
            lines: dict[str, Callable[[], torch.Tensor] | None] = {
                "ours": _ours(c, ctx, "auto"),
                "ours fused": _ours(c, ctx, "fused"),
                BASELINE: _variant(c, ctx, "fused", kv_chunk=NO_SPLIT_CHUNK),
                "ours chunk512": _variant(c, ctx, "auto", kv_chunk=512),
                "ours 16 rows": _variant(c, ctx, "auto", config=_small_tiles()),
                "sdpa": _sdpa(c, batch, ctx),
                "flash_attn": _flash(c),
            }
            check = _invariance(c, ctx)
            times = {n: _common.time_ms(f, rep_ms=args.rep) for n, f in lines.items() if f}
            base = _common.median(times[BASELINE])
            for name, reps in times.items():
                ms = _common.median(reps)
                rows.append({
                    "op": "paged_decode", "batch": batch, "context": ctx, "provider": name,
                    "ms": ms, "reps_ms": reps, "ratio_to_baseline": ms / base,
                    "speedup_vs_no_split": base / ms, "gbps": _bytes(batch, ctx) / ms / 1e6,
                    "baseline": BASELINE, **check,
                })  # fmt: skip
                panels.setdefault(f"decode batch {batch}", {}).setdefault(name, []).append(
                    (ctx, ms)
                )
            del c
            torch.cuda.empty_cache()
    cols = ["batch", "context", "provider", "ms", "gbps", "speedup_vs_no_split",
            "row0_alone_equals_batch", "split_equals_fused"]  # fmt: skip
    _common.print_table(rows, cols, "paged decode, Qwen3-8B heads, bf16")
    prefill = _prefill_rows(args.rep)
    _common.print_table(
        prefill, ["batch", "context", "provider", "ms", "tflops", "ratio_to_baseline"],
        "varlen causal prefill (trainer side), Qwen3-8B heads, bf16",
    )  # fmt: skip
    rows += prefill
    out = _common.out_dir()
    _common.write_json(
        out / "bench_attention.json", rows, shapes={"heads": HEADS, "kv_heads": KV_HEADS,
        "head_size": HEAD, "block_size": BLOCK, "dtype": "bfloat16"},
    )  # fmt: skip
    _common.plot_lines(out / "bench_attention.png", panels, "context (tokens)", "ms")


if __name__ == "__main__":
    main()
