"""A Gluon split decode for sm90 that keeps key tiles in flight while it computes: an experiment.

Why: at long context the kit's split decode reads the KV cache at about 2.9 TB/s of an H200's
4.3 (8 x 32k, twenty-third session, with the 168-register cap). Its Triton key loop waits for
each tile's loads right after issuing them (``cp.async.wait_group 0``); three stages do pipeline,
but Triton's loop then takes 115 KB of shared memory and 240 registers.

What: the split launch's attention kernel for pure decode (one query per sequence) over a paged
16-bit cache, written in Gluon with a ring of ``STAGES`` key/value buffers that ``cp.async``
fills ``STAGES - 1`` tiles ahead. Each chunk partial is computed with the operations, layouts
and order of ``_kernels._chunk_partial`` as Triton 3.6 compiles it for these tiles (its TTGIR):

* scores ``mma v3``, warps ``[4, 1]``, instruction ``[16, 64, 16]``; accumulator ``[16, 128, 16]``;
* Q and K^T in 128-byte-swizzled shared memory (K^T transposed), P from registers;
* row max and sum reduced over the score layout; the same selects, ``exp2``s and products;
* no FMA contraction (``enable_fp_fusion=False``).

It writes the split launch's chunk-major partials, which the package's combine kernel folds
(``_launch.combine_partials``), so its output can be compared bit for bit with
``launch(mode="split")``. Only a bitwise match would let it replace the Triton kernel: decode,
prefill and the trainer must agree.

Status: compiled for sm90 without a GPU (``--compile-only``; ``tests/test_sm90_ptx_tool.py``
pins the pipelining and the register count); **never run on a GPU**. On an sm90 GPU,
``tests/attention/test_attn_gluon_cuda.py`` compares it with the Triton split launch bit for bit,
and this script's default mode compares them on each case and times both.

    python bench/gluon_split_decode.py --compile-only
    python bench/gluon_split_decode.py [--stages 3] [--cases decode8x32k@40k,decode1x32k@40k]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # Gluon has no interpreter: compile for the GPU

import _common
import sm90_ptx
import torch

_common.add_src_paths()

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import async_copy  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from bi_triton_ascend.attention import _launch  # noqa: E402
from bi_triton_ascend.attention.config import AttnConfig, launch_config  # noqa: E402

WARPS = 4  # the Triton decode tiles' warps: one warpgroup of 64 rows
STAGES = 3  # key/value tiles in shared memory: STAGES - 1 in flight while one is computed


@gluon.jit
def _chunk_start(c, KV_CHUNK: gl.constexpr, LONG_FROM: gl.constexpr, LONG_CHUNK: gl.constexpr):
    """``_kernels._chunk_start`` for a scalar chunk index."""
    shorts: gl.constexpr = LONG_FROM // KV_CHUNK
    return gl.where(c < shorts, c * KV_CHUNK, LONG_FROM + (c - shorts) * LONG_CHUNK)


@gluon.jit
def _chunk_of(pos, KV_CHUNK: gl.constexpr, LONG_FROM: gl.constexpr, LONG_CHUNK: gl.constexpr):
    """``_kernels._chunk_of`` for a scalar key position ``pos >= 0``."""
    return gl.where(
        pos < LONG_FROM, pos // KV_CHUNK, LONG_FROM // KV_CHUNK + (pos - LONG_FROM) // LONG_CHUNK
    )


@gluon.jit
def _issue_tile(  # type: ignore[no-untyped-def]
    kt_buf, v_buf, k_head, v_head, bt_row, n0, limit, block_size,
    stride_kb, stride_ks, stride_vb, stride_vs,
    BLOCK_N: gl.constexpr, HEAD: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """``cp.async`` keys ``[n0, n0 + BLOCK_N)`` below ``limit`` into ``kt_buf`` (as K^T) and
    ``v_buf``; keys at or past ``limit`` are zero-filled, as the Triton kernel's masked loads
    (``other=0``) fill them. The layouts are the Triton kernel's load layouts."""
    kt_load: gl.constexpr = gl.BlockedLayout([8, 1], [16, 2], [1, num_warps], [0, 1])
    v_load: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])
    keys = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, kt_load))
    dims = gl.arange(0, HEAD, layout=gl.SliceLayout(1, kt_load))
    ok = keys < limit
    blk = gl.load(bt_row + keys // block_size, mask=ok, other=0).to(gl.int64)
    rows = blk * stride_kb + (keys % block_size).to(gl.int64) * stride_ks
    async_copy.async_copy_global_to_shared(
        kt_buf, k_head + rows[None, :] + dims[:, None], mask=ok[None, :]
    )
    keys_v = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, v_load))
    dims_v = gl.arange(0, HEAD, layout=gl.SliceLayout(0, v_load))
    ok_v = keys_v < limit
    blk_v = gl.load(bt_row + keys_v // block_size, mask=ok_v, other=0).to(gl.int64)
    rows_v = blk_v * stride_vb + (keys_v % block_size).to(gl.int64) * stride_vs
    async_copy.async_copy_global_to_shared(
        v_buf, v_head + rows_v[:, None] + dims_v[None, :], mask=ok_v[:, None]
    )
    async_copy.commit_group()


@gluon.jit
def _gluon_split_decode(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, bt_ptr, seq_lens_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    num_chunks, group, block_size, qk_scale,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_pc, stride_pk, stride_ac, stride_ak,
    KV_CHUNK: gl.constexpr, LONG_FROM: gl.constexpr, LONG_CHUNK: gl.constexpr,
    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, GROUP_PAD: gl.constexpr, HEAD: gl.constexpr,
    STAGES: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """Grid ``(sequences, KV heads, chunk programs)``: program ``(seq, kvh, p)`` writes the
    partials of chunks ``p, p + P, ...`` of its sequence, like the Triton split kernel."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD, 16]
    )
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_load: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])
    q_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=False)
    kt_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=True)
    v_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=False)
    dtype: gl.constexpr = k_ptr.dtype.element_ty

    seq = gl.program_id(0)
    kvh = gl.program_id(1)
    step = gl.num_programs(2)
    kv_len = gl.load(seq_lens_ptr + seq)
    c_end = gl.minimum(_chunk_of(kv_len - 1, KV_CHUNK, LONG_FROM, LONG_CHUNK) + 1, num_chunks)

    # Rows: one token (decode) times GROUP_PAD heads, padded to BLOCK_M rows with q = 0.
    rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, q_load))
    cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, q_load))
    row_ok = (rows < GROUP_PAD) & (rows % GROUP_PAD < group)
    head = kvh * group + rows % GROUP_PAD
    q = gl.load(
        q_ptr + seq.to(gl.int64) * stride_qt + head[:, None] * stride_qh + cols[None, :],
        mask=row_ok[:, None], other=0.0,
    )  # fmt: skip
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD], q_shared, q)
    kt_smem = gl.allocate_shared_memory(dtype, [STAGES, HEAD, BLOCK_N], kt_shared)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], v_shared)
    fence_async_shared()

    k_head = k_ptr + kvh.to(gl.int64) * stride_kh
    v_head = v_ptr + kvh.to(gl.int64) * stride_vh
    bt_row = bt_ptr + seq.to(gl.int64) * stride_bt
    # The partials' offsets (chunk 0), as ``_kernels._partial_offsets`` with q_beg = seq, q0 = 0.
    s_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
    s_ok = (s_rows < GROUP_PAD) & (s_rows % GROUP_PAD < group)
    pm = kvh.to(gl.int64) * stride_pk + seq.to(gl.int64) * GROUP_PAD + s_rows
    o_rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
    o_cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, o_layout))
    o_ok = (o_rows < GROUP_PAD) & (o_rows % GROUP_PAD < group)
    pa = (
        kvh.to(gl.int64) * stride_ak + seq.to(gl.int64) * GROUP_PAD * HEAD
        + o_rows[:, None] * HEAD + o_cols[None, :]
    )  # fmt: skip
    key_cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)

    for c in range(gl.program_id(2), c_end, step):
        start = _chunk_start(c, KV_CHUNK, LONG_FROM, LONG_CHUNK)
        end = gl.minimum(_chunk_start(c + 1, KV_CHUNK, LONG_FROM, LONG_CHUNK), kv_len)
        n_tiles = (end - start + BLOCK_N - 1) // BLOCK_N
        for t in gl.static_range(STAGES - 1):  # prologue: tiles 0 .. STAGES - 2
            _issue_tile(
                kt_smem.index(t), v_smem.index(t), k_head, v_head, bt_row, start + t * BLOCK_N,
                gl.where(t < n_tiles, kv_len, 0), block_size,
                stride_kb, stride_ks, stride_vb, stride_vs, BLOCK_N, HEAD, num_warps,
            )  # fmt: skip
        m = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        den = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BLOCK_M, HEAD], gl.float32, o_layout)
        for t in range(n_tiles):
            # Tile t has landed (this thread's copies), then every thread's copies are
            # visible to the MMA, and every warp is past tile t - 1 (its buffers are free).
            async_copy.wait_group(STAGES - 2)
            fence_async_shared()
            gl.thread_barrier()
            ahead = t + STAGES - 1
            _issue_tile(
                kt_smem.index(ahead % STAGES), v_smem.index(ahead % STAGES), k_head, v_head,
                bt_row, start + ahead * BLOCK_N, gl.where(ahead < n_tiles, kv_len, 0),
                block_size, stride_kb, stride_ks, stride_vb, stride_vs, BLOCK_N, HEAD, num_warps,
            )  # fmt: skip
            stage = t % STAGES
            s = warpgroup_mma(q_smem, kt_smem.index(stage), zero_s, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            s = s * qk_scale
            keys = start + t * BLOCK_N + key_cols
            s = gl.where((keys < kv_len)[None, :], s, float("-inf"))
            # The online-softmax step of ``_kernels._tile_step``, operation for operation.
            m_new = gl.maximum(m, gl.max(s, 1))
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.where(m_new == m, 1.0, gl.exp2(m - m_use))
            p = gl.exp2(s - m_use[:, None])
            den = den * alpha + gl.sum(p, 1)
            alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
            acc = acc * alpha_o[:, None]
            pv = gl.convert_layout(p.to(dtype), p_operand)
            acc = warpgroup_mma(pv, v_smem.index(stage), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            m = m_new
        async_copy.wait_group(0)  # the tiles issued past the chunk's end (all masked)
        gl.thread_barrier()
        c64 = c.to(gl.int64)
        gl.store(part_m_ptr + pm + c64 * stride_pc, m, mask=s_ok)
        gl.store(part_l_ptr + pm + c64 * stride_pc, den, mask=s_ok)
        gl.store(part_acc_ptr + pa + c64 * stride_ac, acc, mask=o_ok[:, None])


def mirrored_config(query: torch.Tensor, key: torch.Tensor, *, prefill: bool) -> AttnConfig:
    """The Triton tiles a Gluon kernel here mirrors (decode: 64 rows on 4 warps; prefill: 128
    on 8), for a paged cache; ``ValueError`` outside what these kernels cover."""
    head = query.shape[2]
    group = query.shape[1] // key.shape[2]
    cfg = launch_config(head, query.dtype, group, False, prefill=prefill, paged=True)
    rows, warps = (128, 8) if prefill else (64, WARPS)
    if query.dtype not in (torch.bfloat16, torch.float16) or key.dtype != query.dtype:
        raise ValueError(f"query/key: expected bf16 or fp16 of one dtype; got {query.dtype}")
    if head != cfg.head_pad or head > 128 or (cfg.block_m, cfg.num_warps) != (rows, warps):
        raise ValueError(f"query: expected head size 64 or 128 ({rows}-row tiles); got {head}")
    if query.stride(-1) != 1 or key.stride(-1) != 1:
        raise ValueError("query/key: expected a contiguous head dimension")
    return cfg


def split_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float,
    max_seq_len: int,
    stages: int = STAGES,
) -> torch.Tensor:
    """Causal paged decode (one query per sequence) through the Gluon kernel and the package's
    combine; same arguments as ``_launch.launch`` where they overlap."""
    cfg = mirrored_config(query, key_cache, prefill=False)
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    if query.shape[0] != num_seqs:
        raise ValueError(f"query: expected one row per sequence ({num_seqs}); got {query.shape[0]}")
    grid = cfg.grid
    chunks = grid.num_chunks(max_seq_len)
    rows_shape = (chunks, num_kv_heads, num_seqs, cfg.group_pad)
    part_m = torch.empty(rows_shape, dtype=torch.float32, device=query.device)
    part_l = torch.empty_like(part_m)
    part_acc = torch.empty((*rows_shape, cfg.head_pad), dtype=torch.float32, device=query.device)
    slots = num_seqs // cfg.block_q + num_seqs
    programs = _launch._chunk_programs(chunks, slots * num_kv_heads, query.device)
    table = block_table.contiguous()
    _gluon_split_decode[(num_seqs, num_kv_heads, programs)](
        query, key_cache, value_cache, table, seq_lens, part_m, part_l, part_acc,
        chunks, query.shape[1] // num_kv_heads, key_cache.shape[1], scale * _launch.LOG2E,
        query.stride(0), query.stride(1), *key_cache.stride()[:3], *value_cache.stride()[:3],
        table.stride(0), *part_m.stride()[:2], *part_acc.stride()[:2],
        KV_CHUNK=grid.short, LONG_FROM=grid.long_from, LONG_CHUNK=grid.long,
        BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, GROUP_PAD=cfg.group_pad, HEAD=cfg.head_pad,
        STAGES=stages, num_warps=WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    out = torch.empty_like(query)
    q_start = torch.arange(num_seqs + 1, dtype=torch.int32, device=query.device)
    _launch.combine_partials(
        out, part_m, part_l, part_acc, q_start, seq_lens, chunks, query.shape[1] // num_kv_heads,
        query.shape[2], None, True, cfg, grid,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------- compile only (no GPU)


def compile_for_sm90(stages: int = STAGES, group: int = 4) -> Any:
    """The kernel compiled for sm90 on this machine (no launch), Qwen3-8B-like heads."""
    bf16 = torch.empty(16, dtype=torch.bfloat16)
    i32 = torch.empty(16, dtype=torch.int32)
    f32 = torch.empty(16)
    cfg = launch_config(128, torch.bfloat16, group, False, prefill=False, paged=True)
    args = (
        bf16, bf16, bf16, i32, i32, f32, f32, f32,
        72, group, 16, 0.1, 4096, 128, 16384, 1024, 128, 16384, 1024, 128,
        2560, 4096, 1024, 65536, 8192,
        cfg.grid.short, cfg.grid.long_from, cfg.grid.long, cfg.block_n, cfg.block_m,
        cfg.group_pad, cfg.head_pad, stages,
    )  # fmt: skip
    return sm90_ptx.compile_gluon(
        _gluon_split_decode, args, num_warps=WARPS, enable_fp_fusion=False
    )


# ---------------------------------------------------------------- GPU: bits and time


def random_paged(
    seq_lens: list[int], q_lens: list[int], gen: torch.Generator, query_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Qwen3-8B heads (32 query, 8 KV, head 128), bf16: random queries (the last ``q_lens`` of
    each sequence, times ``query_scale``) over a paged cache of 16-key blocks, shuffled."""
    block = 16
    per_seq = [-(-n // block) for n in seq_lens]
    blocks = sum(per_seq)
    perm = torch.randperm(blocks, generator=gen, device="cuda").to(torch.int32)
    table = torch.zeros(len(seq_lens), max(per_seq), dtype=torch.int32, device="cuda")
    at = 0
    for i, n in enumerate(per_seq):
        table[i, :n] = perm[at : at + n]
        at += n

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    return {
        "query": rand(starts[-1], 32, 128) * query_scale,
        "key_cache": rand(blocks, block, 8, 128),
        "value_cache": rand(blocks, block, 8, 128),
        "block_table": table,
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        "q_start": torch.tensor(starts, dtype=torch.int32, device="cuda"),
    }


def write_compile_report(kernel: Any, label: str, path: Path | None) -> None:
    """Print a compiled kernel's :func:`sm90_ptx.gluon_report`, and write it as JSON to ``path``."""
    report = sm90_ptx.gluon_report(kernel)
    print(f"{label} on sm90 (compiled, not run):", report)
    if path:
        path.write_text(json.dumps(report, indent=1))


def _case(name: str, gen: torch.Generator) -> dict[str, Any]:
    """``tune_attention.py``'s decode cases: ``batch`` sequences of ``ctx`` keys, one query each,
    the split grid sized from ``max_seq_len``."""
    batch, ctx, bound = {
        "decode1x32k@40k": (1, 32768, 40960),
        "decode8x8k": (8, 8192, 8192),
        "decode8x32k@40k": (8, 32768, 40960),
        "decode64x1k": (64, 1024, 1024),
        "decode256x512g4": (256, 512, 512),
    }[name]
    return {**random_paged([ctx] * batch, [1] * batch, gen), "max_seq_len": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true", help="compile for sm90, no GPU")
    parser.add_argument("--stages", type=int, default=STAGES)
    parser.add_argument(
        "--cases", default="decode1x32k@40k,decode8x8k,decode8x32k@40k,decode64x1k,decode256x512g4"
    )
    parser.add_argument("--rep", type=int, default=100, help="do_bench rep time per point, ms")
    parser.add_argument("--json", type=Path, help="with --compile-only: write the report here")
    args = parser.parse_args()
    if args.compile_only:
        write_compile_report(compile_for_sm90(args.stages), "gluon split decode", args.json)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gluon_split_decode needs a CUDA device (or --compile-only)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict[str, Any]] = []
    scale = 128**-0.5
    for name in args.cases.split(","):
        case = _case(name, gen)

        def ours(case: dict[str, Any] = case) -> torch.Tensor:
            return split_decode(
                case["query"], case["key_cache"], case["value_cache"], case["block_table"],
                case["seq_lens"], scale=scale, max_seq_len=case["max_seq_len"],
                stages=args.stages,
            )  # fmt: skip

        def triton_split(case: dict[str, Any] = case) -> torch.Tensor:
            return _launch.launch(
                case["query"], case["key_cache"], case["value_cache"], case["block_table"],
                case["seq_lens"], case["q_start"], None, scale=scale, sliding_window=None,
                causal=True, max_seq_len=case["max_seq_len"], mode="split",
            )  # fmt: skip

        same = bool(torch.equal(ours(), triton_split()))
        base = _common.time_ms(triton_split, rep_ms=args.rep)
        reps = _common.time_ms(ours, rep_ms=args.rep)
        ms, base_ms = _common.median(reps), _common.median(base)
        rows.append({
            "case": name, "kernel": f"gluon, {args.stages} stages", "ms": ms, "reps_ms": reps,
            "triton_split_ms": base_ms, "triton_split_reps_ms": base,
            "ratio_vs_default": base_ms / ms, "same_bits_as_triton": same,
        })  # fmt: skip
        del case
        torch.cuda.empty_cache()
    columns = ["case", "kernel", "ms", "triton_split_ms", "ratio_vs_default", "same_bits_as_triton"]
    _common.print_table(
        rows, columns,
        "Gluon split decode against the Triton split launch (same partials, same combine)",
    )  # fmt: skip
    _common.write_json(_common.out_dir() / "gluon_split_decode.json", rows)


if __name__ == "__main__":
    main()
