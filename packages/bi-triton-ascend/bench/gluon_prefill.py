"""A Gluon fused prefill for sm90 that runs the softmax under the next score MMA: an experiment.

Why: issue #12's batch of 8 long prompts is bound by the kit's prefill kernel, which runs at
about half of FlashAttention 3's speed. Nsight Compute put its tile at one 8-warp program per SM
with the tensor pipe 32% busy: the softmax and the loads are not hidden behind the matrix
instructions, and plain Triton 3.6 does not emit that schedule on sm90
(``bench/probe_gluon_overlap.py``).

What: the fused launch's attention kernel (``_kernels._attn_kernel`` without ``SPLIT``) for a
causal paged 16-bit cache without a window, head 128 (padded), written in Gluon:

* a ring of ``STAGES`` key/value buffers that ``cp.async`` fills ``STAGES - 1`` tiles ahead;
* tile ``i + 1``'s score MMA is issued before tile ``i``'s softmax, which runs while it is in
  flight (the P·V MMA and the chunk folds then wait for it);
* every row is built with the operations, layouts and order of ``_kernels._fused_rows`` as
  Triton 3.6 compiles the prefill tiles (128 rows, 8 warps): ``mma v3``, warps ``[8, 1]``,
  instructions ``[16, 64, 16]`` and ``[16, 128, 16]``, Q and K^T in 128-byte-swizzled shared
  memory, P from registers, the chunk folds of ``_merge`` at each chunk's last tile, no FMA
  contraction. The causal select runs on every tile (the Triton kernel skips it where every
  key is visible, where it selects every score as it is: the same bits).

Only a bitwise match with the Triton kernel would let it serve: decode, prefill and the trainer
must agree. Status: compiled for sm90 without a GPU (``--compile-only``; pinned by
``tests/test_sm90_ptx_tool.py``); **never run on a GPU**. On an sm90 GPU,
``tests/attention/test_attn_gluon_cuda.py`` compares it with the Triton launch bit for bit, and
this script's default mode compares its output with ``launch(mode="fused")`` on each case and
times both.

    python bench/gluon_prefill.py --compile-only
    python bench/gluon_prefill.py [--stages 4] [--cases chunk4k@16k,prefill8x8k]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # Gluon has no interpreter: compile for the GPU

import _common
import sm90_ptx
import torch

_common.add_src_paths()

from gluon_split_decode import (  # noqa: E402
    _chunk_of,
    _chunk_start,
    _issue_tile,
    mirrored_config,
    random_paged,
    write_compile_report,
)
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import async_copy  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from bi_triton_ascend.attention import _launch  # noqa: E402
from bi_triton_ascend.attention.config import launch_config  # noqa: E402

WARPS = 8  # the Triton prefill tiles' warps: two warpgroups of 64 rows
STAGES = 4  # key/value tiles in shared memory; the score MMA needs the next tile landed


@gluon.jit
def _find_seq(starts_ptr, target, num_seqs, BLOCK_Q: gl.constexpr):  # type: ignore[no-untyped-def]
    """``_kernels._find_seq`` (tiled): the sequence owning tile slot ``target``."""
    lo = gl.maximum(target - (gl.num_programs(0) - num_seqs), 0)
    hi = gl.minimum(target, num_seqs - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first = gl.load(starts_ptr + mid) // BLOCK_Q + mid
        if first <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


@gluon.jit
def _merge(M, L, A, m, den, a, o_rows: gl.constexpr):  # type: ignore[no-untyped-def]
    """``_kernels._merge``: fold the partial ``(m, den, a)`` into ``(M, L, A)``."""
    m_new = gl.maximum(M, m)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    sa = gl.where(m_new == M, 1.0, gl.exp2(M - m_use))
    sb = gl.where(m_new == m, 1.0, gl.exp2(m - m_use))
    has = m > float("-inf")
    L = gl.where(has, L * sa + den * sb, L)
    has_o = gl.convert_layout(has, o_rows)
    sa_o = gl.convert_layout(sa, o_rows)
    sb_o = gl.convert_layout(sb, o_rows)
    A = gl.where(has_o[:, None], A * sa_o[:, None] + a * sb_o[:, None], A)
    M = gl.where(has, m_new, M)
    return M, L, A


@gluon.jit
def _gluon_prefill(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, out_ptr, bt_ptr, seq_lens_ptr, q_start_ptr,
    num_seqs, group, block_size, qk_scale,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh, stride_bt,
    KV_CHUNK: gl.constexpr, LONG_FROM: gl.constexpr, LONG_CHUNK: gl.constexpr,
    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_Q: gl.constexpr,
    GROUP_PAD: gl.constexpr, HEAD: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """Grid ``(tile slots, KV heads)`` as the Triton fused launch's; one query tile a program."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD, 16]
    )
    s_rows_l: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows_l: gl.constexpr = gl.SliceLayout(1, o_layout)
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_load: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [num_warps, 1], [1, 0])
    q_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=False)
    kt_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=True)
    v_shared: gl.constexpr = gl.NVMMASharedLayout(128, 16, 2, transposed=False)
    dtype: gl.constexpr = k_ptr.dtype.element_ty

    slot = gl.num_programs(0) - 1 - gl.program_id(0)
    kvh = gl.program_id(1)
    seq = _find_seq(q_start_ptr, slot, num_seqs, BLOCK_Q)
    q_beg = gl.load(q_start_ptr + seq)
    q_len = gl.load(q_start_ptr + seq + 1) - q_beg
    q0 = (slot - (q_beg // BLOCK_Q + seq)) * BLOCK_Q
    if q0 < q_len:
        kv_len = gl.load(seq_lens_ptr + seq)
        hi = kv_len - q_len + gl.minimum(q0 + BLOCK_Q, q_len) - 1  # the last key any row sees

        rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, q_load))
        cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, q_load))
        tok = q0 + rows // GROUP_PAD
        row_ok = (tok < q_len) & (rows % GROUP_PAD < group)
        head = kvh * group + rows % GROUP_PAD
        q_row = (q_beg + tok).to(gl.int64)
        q = gl.load(
            q_ptr + q_row[:, None] * stride_qt + head[:, None] * stride_qh + cols[None, :],
            mask=row_ok[:, None], other=0.0,
        )  # fmt: skip
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD], q_shared, q)
        kt_smem = gl.allocate_shared_memory(dtype, [STAGES, HEAD, BLOCK_N], kt_shared)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD], v_shared)
        fence_async_shared()

        k_head = k_ptr + kvh.to(gl.int64) * stride_kh
        v_head = v_ptr + kvh.to(gl.int64) * stride_vh
        bt_row = bt_ptr + seq.to(gl.int64) * stride_bt
        pos = kv_len - q_len + q0 + gl.arange(0, BLOCK_M, layout=s_rows_l) // GROUP_PAD
        key_cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        n_tiles = hi // BLOCK_N + 1

        for t in gl.static_range(STAGES - 1):  # prologue: tiles 0 .. STAGES - 2
            _issue_tile(
                kt_smem.index(t), v_smem.index(t), k_head, v_head, bt_row, t * BLOCK_N,
                gl.where(t < n_tiles, kv_len, 0), block_size,
                stride_kb, stride_ks, stride_vb, stride_vs, BLOCK_N, HEAD, num_warps,
            )  # fmt: skip
        async_copy.wait_group(STAGES - 2)
        fence_async_shared()
        gl.thread_barrier()
        s_next = warpgroup_mma(q_smem, kt_smem.index(0), zero_s, is_async=True)

        M = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows_l)
        L = gl.zeros([BLOCK_M], gl.float32, s_rows_l)
        A = gl.zeros([BLOCK_M, HEAD], gl.float32, o_layout)
        m = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows_l)
        den = gl.zeros([BLOCK_M], gl.float32, s_rows_l)
        acc = gl.zeros([BLOCK_M, HEAD], gl.float32, o_layout)
        for t in range(n_tiles):
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s_next,))
            # Tile t + 1 has landed; every warp is past tile t - 1 (its buffers are free).
            async_copy.wait_group(STAGES - 3)
            fence_async_shared()
            gl.thread_barrier()
            ahead = t + STAGES - 1
            _issue_tile(
                kt_smem.index(ahead % STAGES), v_smem.index(ahead % STAGES), k_head, v_head,
                bt_row, ahead * BLOCK_N, gl.where(ahead < n_tiles, kv_len, 0), block_size,
                stride_kb, stride_ks, stride_vb, stride_vs, BLOCK_N, HEAD, num_warps,
            )  # fmt: skip
            # Tile t + 1's scores go in flight now (past the last tile: zero keys, unused).
            s_next = warpgroup_mma(q_smem, kt_smem.index((t + 1) % STAGES), zero_s, is_async=True)
            # The online-softmax step of ``_kernels._tile_step`` (masked form), under it.
            s = s * qk_scale
            n0 = t * BLOCK_N
            keys = n0 + key_cols
            vis = (keys < kv_len)[None, :] & (pos >= 0)[:, None] & (keys[None, :] <= pos[:, None])
            s = gl.where(vis, s, float("-inf"))
            m_new = gl.maximum(m, gl.max(s, 1))
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.where(m_new == m, 1.0, gl.exp2(m - m_use))
            p = gl.exp2(s - m_use[:, None])
            den = den * alpha + gl.sum(p, 1)
            alpha_o = gl.convert_layout(alpha, o_rows_l)
            acc = acc * alpha_o[:, None]
            pv = gl.convert_layout(p.to(dtype), p_operand)
            acc = warpgroup_mma(pv, v_smem.index(t % STAGES), acc, is_async=True)
            # Both MMAs done (groups complete in order); s_next stays the next step's handle.
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            m = m_new
            # The chunk ends with this tile: fold its partial, start the next from scratch.
            if _chunk_start(_chunk_of(n0 + BLOCK_N, KV_CHUNK, LONG_FROM, LONG_CHUNK),
                            KV_CHUNK, LONG_FROM, LONG_CHUNK) == n0 + BLOCK_N:  # fmt: skip
                M, L, A = _merge(M, L, A, m, den, acc, o_rows_l)
                m = gl.full([BLOCK_M], float("-inf"), gl.float32, s_rows_l)
                den = gl.zeros([BLOCK_M], gl.float32, s_rows_l)
                acc = gl.zeros([BLOCK_M, HEAD], gl.float32, o_layout)
        async_copy.wait_group(0)
        M, L, A = _merge(M, L, A, m, den, acc, o_rows_l)
        L_o = gl.convert_layout(L, o_rows_l)
        out = A / gl.where(L_o > 0.0, L_o, 1.0)[:, None]
        o_rows = gl.arange(0, BLOCK_M, layout=o_rows_l)
        o_cols = gl.arange(0, HEAD, layout=gl.SliceLayout(0, o_layout))
        o_tok = q0 + o_rows // GROUP_PAD
        o_ok = (o_tok < q_len) & (o_rows % GROUP_PAD < group)
        o_head = kvh * group + o_rows % GROUP_PAD
        gl.store(
            out_ptr + (q_beg + o_tok).to(gl.int64)[:, None] * stride_ot
            + o_head[:, None] * stride_oh + o_cols[None, :],
            out.to(out_ptr.dtype.element_ty), mask=o_ok[:, None],
        )  # fmt: skip


def prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    q_start: torch.Tensor,
    *,
    scale: float,
    stages: int = STAGES,
) -> torch.Tensor:
    """Causal paged attention of each sequence's last queries through the Gluon kernel; same
    arguments as ``_launch.launch`` where they overlap."""
    cfg = mirrored_config(query, key_cache, prefill=True)
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    grid = cfg.grid
    out = torch.empty_like(query)
    table = block_table.contiguous()
    slots = query.shape[0] // cfg.block_q + num_seqs
    _gluon_prefill[(slots, num_kv_heads)](
        query, key_cache, value_cache, out, table, seq_lens, q_start.contiguous(),
        num_seqs, query.shape[1] // num_kv_heads, key_cache.shape[1], scale * _launch.LOG2E,
        query.stride(0), query.stride(1), *key_cache.stride()[:3], *value_cache.stride()[:3],
        out.stride(0), out.stride(1), table.stride(0),
        KV_CHUNK=grid.short, LONG_FROM=grid.long_from, LONG_CHUNK=grid.long,
        BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, GROUP_PAD=cfg.group_pad,
        HEAD=cfg.head_pad, STAGES=stages, num_warps=WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------- compile only (no GPU)


def compile_for_sm90(stages: int = STAGES, group: int = 4) -> Any:
    """The kernel compiled for sm90 on this machine (no launch), Qwen3-8B-like heads."""
    bf16 = torch.empty(16, dtype=torch.bfloat16)
    i32 = torch.empty(16, dtype=torch.int32)
    cfg = launch_config(128, torch.bfloat16, group, False, prefill=True, paged=True)
    args = (
        bf16, bf16, bf16, bf16, i32, i32, i32,
        8, group, 16, 0.1, 4096, 128, 16384, 1024, 128, 16384, 1024, 128, 4096, 128, 2560,
        cfg.grid.short, cfg.grid.long_from, cfg.grid.long, cfg.block_n, cfg.block_m,
        cfg.block_q, cfg.group_pad, cfg.head_pad, stages,
    )  # fmt: skip
    return sm90_ptx.compile_gluon(_gluon_prefill, args, num_warps=WARPS, enable_fp_fusion=False)


# ---------------------------------------------------------------- GPU: bits and time


def _case(name: str, gen: torch.Generator) -> dict[str, Any]:
    """Paged causal prefills: ``batch`` sequences of ``ctx`` keys whose last ``queries`` are new,
    with their FLOPs."""
    batch, queries, ctx = {
        "chunk4k@16k": (1, 4096, 16384),  # a chunked-prefill step at long context
        "prefill8x8k": (8, 8192, 8192),  # issue #12's batch of 8 at 8k
        "prefill2x32k": (2, 32768, 32768),  # a quarter of its batch at 32k
        "prefill4x1k": (4, 1024, 1024),
    }[name]
    return {
        **random_paged([ctx] * batch, [queries] * batch, gen),
        "flop": 4.0 * batch * (queries * (ctx - queries) + queries * queries / 2) * 32 * 128,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true", help="compile for sm90, no GPU")
    parser.add_argument("--stages", type=int, default=STAGES)
    parser.add_argument("--cases", default="prefill4x1k,chunk4k@16k,prefill8x8k,prefill2x32k")
    parser.add_argument("--rep", type=int, default=100, help="do_bench rep time per point, ms")
    parser.add_argument("--json", type=Path, help="with --compile-only: write the report here")
    args = parser.parse_args()
    if args.compile_only:
        write_compile_report(compile_for_sm90(args.stages), "gluon prefill", args.json)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gluon_prefill needs a CUDA device (or --compile-only)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict[str, Any]] = []
    scale = 128**-0.5
    for name in args.cases.split(","):
        case = _case(name, gen)
        flop = case.pop("flop")

        def ours(case: dict[str, Any] = case) -> torch.Tensor:
            return prefill(**case, scale=scale, stages=args.stages)

        def triton_fused(case: dict[str, Any] = case) -> torch.Tensor:
            return _launch.launch(
                case["query"], case["key_cache"], case["value_cache"], case["block_table"],
                case["seq_lens"], case["q_start"], None, scale=scale, sliding_window=None,
                causal=True, max_seq_len=None, mode="fused",
            )  # fmt: skip

        same = bool(torch.equal(ours(), triton_fused()))
        base = _common.time_ms(triton_fused, rep_ms=args.rep)
        reps = _common.time_ms(ours, rep_ms=args.rep)
        ms, base_ms = _common.median(reps), _common.median(base)
        rows.append({
            "case": name, "kernel": f"gluon, {args.stages} stages", "ms": ms, "reps_ms": reps,
            "tflops": flop / ms / 1e9, "triton_fused_ms": base_ms, "triton_fused_reps_ms": base,
            "ratio_vs_default": base_ms / ms, "same_bits_as_triton": same,
        })  # fmt: skip
        del case
        torch.cuda.empty_cache()
    columns = ["case", "kernel", "ms", "tflops", "triton_fused_ms", "ratio_vs_default",
               "same_bits_as_triton"]  # fmt: skip
    _common.print_table(
        rows, columns, "Gluon prefill against the Triton fused launch (Qwen3-8B heads)"
    )
    _common.write_json(_common.out_dir() / "gluon_prefill.json", rows)


if __name__ == "__main__":
    main()
