"""Sweep the attention's tiles (query rows, warps, stages) and check which ones keep the bits.

The chain of a query row (the chunk grid, ``block_n``) is fixed, but ``block_m``, ``num_warps``
and ``num_stages`` may still change the bits on a GPU: the row sums run over a layout that
follows the warps, and the matrix instruction follows the tile. So every candidate is timed
*and* compared bitwise (fp32 output) with the tiles the launcher picks on every case
(``config.launch_config``: 64 rows on 4 warps for decode, 128 rows on 8 for prefill); a
candidate is usable for a launch only where it gives those bits on all of them.
``ratio_vs_default`` is the launcher's time over the candidate's.

Cases (Qwen3-8B heads: 32 query, 8 KV, head 128, bf16):

* packed causal prefill (the trainer, vLLM's first chunk): 4 x 4096 and 1 x 16384 tokens;
* a paged prefill chunk of 4096 queries over 16384 keys (chunked prefill at long context);
* paged decode: batch 1 at 32768, batch 8 at 8192 and at 32768 (``decode8x32k@40k``, the grid
  sized from a 40960-token bound as in vLLM's CUDA graphs), batch 64 at 1024;
* the RL rollout's decode (issue #13): batch 256 at 512 keys, with Qwen3-0.6B's heads (16 query,
  8 KV: ``decode256x512``) and with the 8B's (``decode256x512g4``); single-stream decode with
  the 0.6B's heads at 512 and 4096 keys (``decode1x512``, ``decode1x4k``).

``sdpa`` (PyTorch's flash attention on contiguous K/V, batch-variant) is timed beside the
packed prefill cases for scale.

``--split-sweep`` times the split launch's grid instead of the tiles on the decode cases (how
many chunk programs per query tile and KV head: ``SPLIT_PROGRAMS_PER_UNIT`` per compute unit
in all, at least ``SPLIT_MIN_CHUNK_PROGRAMS``; a program walks chunks ``c, c + P, ...``). The
grid changes no bit by construction; the sweep checks that too. ``decode1x32k@40k`` sizes the
grid from a 40960-token bound, as vLLM's CUDA graphs do (the model's max length).

    python bench/tune_attention.py [--rep 40] [--cases prefill4x4k,decode1x32k] [--split-sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import _common
import torch

_common.add_src_paths()

from bi_triton_ascend.attention import _launch, attention_config  # noqa: E402
from bi_triton_ascend.attention._launch import launch  # noqa: E402
from bi_triton_ascend.attention.config import AttnConfig, launch_config  # noqa: E402

HEADS, KV_HEADS, HEAD = 32, 8, 128
GROUP = HEADS // KV_HEADS
BLOCK = 16
DT = torch.bfloat16
SCALE = HEAD**-0.5
# A candidate: (block_m, num_warps, num_stages, prefetch_table, kv_chunk or None, block_n or
# None, max_registers or None). A kv_chunk replaces the launcher's chunk grid by uniform chunks of
# that length, which changes the chain, so its bits differ by design: time only. Another block_n
# changes the chain too; such a candidate is compared with the launcher's tiles on the same chain
# (same block_n), which tells whether the tile family holds for that block_n.
Tile = tuple[int, int, int, bool, int | None, int | None, int | None]
# Candidates (as ``--tiles`` writes them), each timed and compared with the launcher's bits.
CANDIDATES = "64x8x2,64x8x3,64x4x2,64x4x3,128x8x2,128x8x3,128x4x2,32x4x2,16x4x2"
# Split grids of --split-sweep: (programs per compute unit, least chunk programs per tile).
SPLIT_GRIDS = [(u, least) for u in (1, 2, 4, 8, 16) for least in (1, 8, 32)]
# Combine programs of --combine-sweep: (head columns per program, warps).
COMBINE_SETTINGS = [(32, 1), (16, 1), (8, 1), (4, 1), (64, 2), (128, 4)]


@dataclasses.dataclass
class Case:
    """One attention call: its arguments, its FLOPs, and (packed prefill) an SDPA twin."""

    name: str
    kind: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    flop: float
    sdpa: Callable[[], torch.Tensor] | None = None
    group: int = GROUP


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device="cuda").to(DT)


def _packed_prefill(batch: int, length: int, gen: torch.Generator) -> Case:
    total = batch * length
    q, k, v = (
        _rand(gen, total, HEADS, HEAD),
        _rand(gen, total, KV_HEADS, HEAD),
        _rand(gen, total, KV_HEADS, HEAD),
    )
    cu = torch.arange(0, total + 1, length, dtype=torch.int32, device="cuda")
    qb = q.view(batch, length, HEADS, HEAD).transpose(1, 2)
    kb = k.view(batch, length, KV_HEADS, HEAD).transpose(1, 2)
    vb = v.view(batch, length, KV_HEADS, HEAD).transpose(1, 2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return Case(
        f"prefill{batch}x{length}", "prefill",
        (q, k, v, None, cu[1:] - cu[:-1], cu, cu),
        {"causal": True, "max_seq_len": length},
        4.0 * batch * length * length / 2 * HEADS * HEAD,
        lambda: sdpa(qb, kb, vb, is_causal=True, enable_gqa=True),
    )  # fmt: skip


def _paged(
    batch: int, q_len: int, ctx: int, gen: torch.Generator, name: str, bound: int = 0,
    heads: int = HEADS,
) -> Case:  # fmt: skip
    blocks = batch * ctx // BLOCK
    kc, vc = _rand(gen, blocks, BLOCK, KV_HEADS, HEAD), _rand(gen, blocks, BLOCK, KV_HEADS, HEAD)
    table = torch.randperm(blocks, generator=gen, device="cuda").to(torch.int32)
    q = _rand(gen, batch * q_len, heads, HEAD)
    starts = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device="cuda")
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    # Each query sees the prefix plus the chunk up to itself.
    pairs = batch * (q_len * (ctx - q_len) + q_len * q_len / 2)
    return Case(
        name, "decode" if q_len == 1 else "chunk",
        (q, kc, vc, table.view(batch, ctx // BLOCK), lens, starts, None),
        {"causal": True, "max_seq_len": bound or ctx}, 4.0 * pairs * heads * HEAD,
        group=heads // KV_HEADS,
    )  # fmt: skip


def _cases(names: set[str] | None) -> list[Case]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    makers: dict[str, Callable[[], Case]] = {
        "prefill4x4k": lambda: _packed_prefill(4, 4096, gen),
        "prefill1x16k": lambda: _packed_prefill(1, 16384, gen),
        "chunk4k@16k": lambda: _paged(1, 4096, 16384, gen, "chunk4k@16k"),
        "decode1x32k": lambda: _paged(1, 1, 32768, gen, "decode1x32k"),
        "decode1x32k@40k": lambda: _paged(1, 1, 32768, gen, "decode1x32k@40k", bound=40960),
        "decode8x8k": lambda: _paged(8, 1, 8192, gen, "decode8x8k"),
        "decode8x32k@40k": lambda: _paged(8, 1, 32768, gen, "decode8x32k@40k", bound=40960),
        "decode64x1k": lambda: _paged(64, 1, 1024, gen, "decode64x1k"),
        "decode256x512": lambda: _paged(256, 1, 512, gen, "decode256x512", heads=16),
        "decode1x512": lambda: _paged(1, 1, 512, gen, "decode1x512", heads=16),
        "decode1x4k": lambda: _paged(1, 1, 4096, gen, "decode1x4k", heads=16),
        "decode256x512g4": lambda: _paged(256, 1, 512, gen, "decode256x512g4"),
    }
    return [make() for name, make in makers.items() if names is None or name in names]


def _launcher_tiles(case: Case) -> AttnConfig:
    """The tiles the launcher picks for ``case`` (decode or prefill, paged or packed)."""
    return launch_config(
        HEAD, DT, case.group, False, prefill=case.kind != "decode", paged=case.args[3] is not None
    )


def _flash_attn_baseline(case: Case) -> Callable[[], Any] | None:
    """vLLM's FlashAttention 3 on the same paged/packed call (batch-variant), if importable.

    The kernel vLLM's default (and its own batch-invariant mode, with one split) runs: the
    speed our tiles are judged against. ``None`` without vLLM or on a signature mismatch.
    """
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except Exception:  # vLLM absent or built without it: no baseline line
        return None
    q, k, v, table, lens, starts, kv_start = case.args
    max_q = int((starts[1:] - starts[:-1]).max())
    max_k = int(lens.max())
    kwargs: dict[str, Any] = {
        "q": q, "k": k, "v": v, "cu_seqlens_q": starts, "max_seqlen_q": max_q,
        "max_seqlen_k": max_k, "softmax_scale": SCALE, "causal": True, "fa_version": 3,
    }  # fmt: skip
    if table is not None:
        kwargs.update(seqused_k=lens, block_table=table)
    else:
        kwargs.update(cu_seqlens_k=kv_start)
    try:
        flash_attn_varlen_func(**kwargs)
    except Exception as exc:  # report, go on without the line
        print(f"{case.name} fa3: {type(exc).__name__}: {exc!s:.200}")
        return None
    return lambda: flash_attn_varlen_func(**kwargs)


def _run(
    case: Case,
    cfg: AttnConfig | None,
    out_dtype: torch.dtype | None = None,
    kv_chunk: int | None = None,
) -> Any:
    return lambda: launch(
        *case.args, scale=SCALE, sliding_window=None, mode="auto", config=cfg,
        out_dtype=out_dtype, kv_chunk=kv_chunk, **case.kwargs,
    )  # fmt: skip


def _with_launcher(fn: Callable[[], Any], **constants: int) -> Callable[[], Any]:
    """``fn`` with launcher module constants (split grid, combine programs) set for the call."""

    def run() -> Any:
        saved = {name: getattr(_launch, name) for name in constants}
        for name, value in constants.items():
            setattr(_launch, name, value)
        try:
            return fn()
        finally:
            for name, value in saved.items():
                setattr(_launch, name, value)

    return run


# A launcher sweep: named settings of the launcher's module constants (:func:`_with_launcher`).
Sweep = list[tuple[str, dict[str, int]]]


def _launcher_sweep(split_sweep: bool, combine_sweep: bool) -> Sweep:
    """The settings of ``--split-sweep`` (:data:`SPLIT_GRIDS`) or ``--combine-sweep``
    (:data:`COMBINE_SETTINGS`); empty for neither (tiles are swept then)."""
    if split_sweep:
        return [
            (f"grid u{u} least{least}",
             {"SPLIT_PROGRAMS_PER_UNIT": u, "SPLIT_MIN_CHUNK_PROGRAMS": least})
            for u, least in SPLIT_GRIDS
        ]  # fmt: skip
    if combine_sweep:
        return [
            (f"combine d{d} w{w}", {"COMBINE_BLOCK_D": d, "COMBINE_WARPS": w})
            for d, w in COMBINE_SETTINGS
        ]
    return []


def _candidates(
    case: Case,
    ref: torch.Tensor,
    bad: list[str],
    *,
    base: AttnConfig,
    tiles: list[Tile],
    sweep: Sweep,
) -> list[tuple[str, Callable[[], Any], bool | None]]:
    """Named callables to time, each with whether its fp32 output equals ``ref``.

    ``tiles`` are ``(rows, warps, stages, prefetch_table, kv_chunk, block_n)`` applied to
    ``base``; with a launcher ``sweep`` (split grids, combine programs) its settings instead.
    A candidate with another ``block_n`` is compared with the launcher's tiles on that
    ``block_n``.
    """
    lines: list[tuple[str, Callable[[], Any], bool | None]] = []
    if sweep:
        for name, constants in sweep:
            out = _with_launcher(_run(case, None, torch.float32), **constants)()
            same = bool(torch.equal(out, ref))
            if not same:
                bad.append(f"{case.name} {name}")
            lines.append((name, _with_launcher(_run(case, None), **constants), same))
        return lines
    refs_by_block_n: dict[int, torch.Tensor] = {}
    for bm, warps, stages, prefetch, chunk, block_n, registers in tiles:
        cfg = dataclasses.replace(
            base, block_m=bm, num_warps=warps, num_stages=stages, prefetch_table=prefetch,
            max_registers=registers,
        )  # fmt: skip
        name = f"m{bm}w{warps}s{stages}{'p' if prefetch else ''}{f'c{chunk}' if chunk else ''}"
        name += f"r{registers}" if registers else ""
        want = ref
        if block_n is not None and block_n != base.block_n:
            cfg = dataclasses.replace(cfg, block_n=block_n)
            name += f"n{block_n}"
            if block_n not in refs_by_block_n:
                same_chain = dataclasses.replace(_launcher_tiles(case), block_n=block_n)
                try:
                    refs_by_block_n[block_n] = _run(case, same_chain, torch.float32, chunk)()
                except Exception as exc:  # the chain does not compile: skip it
                    print(f"{case.name} n{block_n} reference: {type(exc).__name__}: {exc!s:.160}")
                    continue
            want = refs_by_block_n[block_n]
        try:
            same = bool(torch.equal(_run(case, cfg, torch.float32, chunk)(), want))
        except Exception as exc:  # a tile that does not compile: report it, go on
            print(f"{case.name} {name}: {type(exc).__name__}: {exc!s:.160}")
            continue
        if not same and chunk is None:
            bad.append(f"{case.name} {name}")
        lines.append((name, _run(case, cfg, kv_chunk=chunk), same))
    if case.sdpa is not None:
        lines.append(("sdpa", case.sdpa, None))
    fa3 = _flash_attn_baseline(case)
    if fa3 is not None:
        lines.append(("fa3 (vLLM)", fa3, None))
    return lines


def _parse_tile(text: str) -> Tile:
    """``"64x4x2"``, ``"64x4x2p"`` (block-table prefetch), ``"64x4x2c512"`` (uniform chunks),
    ``"128x8x2pn128"`` (another block_n; with a chunk: ``"128x8x2pc512n128"``), ``"64x4x1r168"``
    (at most 168 registers per thread; last)."""
    text, _, registers = text.partition("r")
    text, _, block_n = text.partition("n")
    text, _, chunk = text.partition("c")
    prefetch = text.endswith("p")
    rows, warps, stages = (int(v) for v in text.removesuffix("p").split("x"))
    return (
        rows, warps, stages, prefetch, int(chunk) if chunk else None,
        int(block_n) if block_n else None, int(registers) if registers else None,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rep", type=int, default=40, help="do_bench rep time per point, ms")
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--split-sweep", action="store_true", help="time split grids, not tiles")
    parser.add_argument(
        "--combine-sweep", action="store_true",
        help="time the combine kernel's programs (head columns, warps), not tiles",
    )  # fmt: skip
    parser.add_argument(
        "--tiles", default="",
        help="candidates as ROWSxWARPSxSTAGES[p][cCHUNK][nBLOCK_N],... (p: block-table prefetch;"
        " c: uniform chunks of CHUNK keys instead of the chunk grid, n: another block_n, which"
        " change the bits; rREGS: at most REGS registers per thread; default all)",
    )  # fmt: skip
    args = parser.parse_args()
    tiles = [_parse_tile(t) for t in (args.tiles or CANDIDATES).split(",")]
    if not torch.cuda.is_available():
        raise SystemExit("tune_attention needs a CUDA device")
    default = attention_config(HEAD, DT, GROUP, False)
    sweep = _launcher_sweep(args.split_sweep, args.combine_sweep)
    print("default tiles:", default)
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for case in _cases(set(args.cases.split(",")) if args.cases else None):
        if sweep and case.kind != "decode":
            continue
        ref = _run(case, None, torch.float32)()
        base = _common.median(_common.time_ms(_run(case, None), rep_ms=args.rep))
        base_tiles = attention_config(HEAD, DT, case.group, False)
        lines = _candidates(case, ref, bad, base=base_tiles, tiles=tiles, sweep=sweep)
        for name, fn, same in lines:
            reps = _common.time_ms(fn, rep_ms=args.rep)
            ms = _common.median(reps)
            rows.append({
                "case": case.name, "kind": case.kind, "tiles": name, "ms": ms, "reps_ms": reps,
                "tflops": case.flop / ms / 1e9, "ratio_vs_default": base / ms,
                "same_bits_as_default": same,
            })  # fmt: skip
        torch.cuda.empty_cache()
    _common.print_table(
        rows, ["case", "tiles", "ms", "tflops", "ratio_vs_default", "same_bits_as_default"],
        "attention tiles against the launcher's choice",
    )  # fmt: skip
    name = "tune_attention.json"
    if sweep:
        name = f"tune_attention_{'split' if args.split_sweep else 'combine'}.json"
    _common.write_json(
        _common.out_dir() / name, rows, bitwise_differences=bad,
        default_tiles=dataclasses.asdict(default),
    )  # fmt: skip
    print("DIFFERENT BITS:", bad if bad else "none")


if __name__ == "__main__":
    main()
