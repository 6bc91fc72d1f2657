"""Triton kernels of the fixed-chunk attention: one inner loop for decode, prefill and varlen.

``_attn_kernel`` serves every caller. A program owns one query tile (``BLOCK_Q`` tokens of one
sequence times the ``GROUP_PAD`` query heads of one KV head, packed into ``BLOCK_M`` rows) and
either one KV chunk (``SPLIT``: it writes that chunk's fp32 partial) or all chunks the tile sees
(fused: it folds the chunk partials in order in registers and writes the output).
``_combine_kernel`` folds split partials in the same order with the same :func:`_merge`.

Why the bits do not depend on the caller (see :mod:`.config` for the chain):

* Chunks lie on the grid of :class:`.config.ChunkGrid` (``KV_CHUNK``-key chunks up to
  ``LONG_FROM``, ``LONG_CHUNK``-key ones after): :func:`_chunk_of` and :func:`_chunk_start` are
  the only places that know it, and every kernel goes through them (:func:`_starts_chunk` too).
* Every chunk partial is built by :func:`_chunk_partial` from tiles on the absolute key grid.
  A program may visit tiles that are fully masked for some of its rows (a prefill tile's later
  rows see further; a window's earliest row starts sooner); for such a row the step leaves its
  state unchanged: the running max stays, the rescale factor is exactly 1 (chosen by ``where``,
  not computed), the probabilities are ``exp2(-inf) = 0``.
* Fully masked chunks give the empty partial (max ``-inf``), which :func:`_merge` skips with a
  ``where``; so folding in registers (fused) and folding stored partials (combine) apply the
  same fp32 operations to the same values, in chunk order.
* A split program walks the chunks ``c, c + P, c + 2P, ...`` of its tile (``P`` programs per
  tile on the grid's last axis) and stores each chunk's partial on its own, so ``P`` and the
  partial buffer's chunk count (``num_chunks``, any upper bound) change no bit. That makes a
  split launch safe in a CUDA graph: grid and buffer are sized from a static bound at capture,
  programs past a sequence's last chunk store nothing, and the combine folds only each row's
  own chunks. A row whose chunks do not fit in ``num_chunks`` (a broken bound) is written as
  NaN rather than silently short, and nothing is read or written past the buffer.
* Scores of one row come from that row of Q only (``tl.dot`` never mixes rows), and decode and
  prefill launch the same kernel with the same tile shapes.
* The launcher disables FMA contraction (``enable_fp_fusion=False``) so that the merge reads the
  same in every kernel it is inlined into.

Split partials are stored chunk-major, ``[num_chunks, num_kv_heads, total_q, GROUP_PAD]`` (max and
sum) and ``[..., HEAD_PAD]`` (accumulator), contiguous after the KV head: row ``r`` of a query tile
(token ``r // GROUP_PAD``, head ``r % GROUP_PAD`` of the KV head's group) is entry
``(q_beg + q0) * GROUP_PAD + r`` (:func:`_partial_offsets`). So a tile's partial addresses are
one scalar plus a pattern known at compile time, which the stores fold into their immediate
offsets. Per-row addresses (token and head strides), as before, were held in registers across the
chunk loop: compiled for sm90 the split kernel took 255 registers and spilled 136 bytes per thread,
against 244 (Qwen3-0.6B heads) or 196 (8B heads) and no spill now; a probe storing with the same
pattern ran split decode 1.15-1.22x faster on an H100. Where the partials live changes no value.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _find_seq(  # type: ignore[no-untyped-def]
    starts_ptr, target, num_seqs, BLOCK_Q: tl.constexpr, TILED: tl.constexpr
):
    """Binary search: the last sequence ``i`` whose first slot is at most ``target``.

    With ``TILED`` the first slot of sequence ``i`` is ``starts[i] // BLOCK_Q + i`` (an upper bound
    on its query tiles, so every sequence gets enough tile slots) and the grid's first axis has
    ``total_q // BLOCK_Q + num_seqs`` slots (``total_q >= starts[num_seqs]``); otherwise
    ``starts[i]``. Tiled, the answer lies in ``[target - total_q // BLOCK_Q, target]`` (a first
    slot is at least ``i``; the next sequence's at most ``total_q // BLOCK_Q + i + 1``), so a
    decode launch (``total_q = num_seqs``) searches ``num_seqs // BLOCK_Q + 1`` sequences, not
    all: each halving is a dependent load every program waits for before its first key.
    """
    lo = 0
    hi = num_seqs - 1
    if TILED:
        lo = tl.maximum(target - (tl.num_programs(0) - num_seqs), 0)
        hi = tl.minimum(target, hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first = tl.load(starts_ptr + mid)
        if TILED:
            first = first // BLOCK_Q + mid
        if first <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def _chunk_of(  # type: ignore[no-untyped-def]
    pos, KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr
):
    """The chunk of key position ``pos`` (a scalar or a tensor, elementwise).

    Below ``LONG_FROM`` (and for a padding row's ``pos = -1``) exactly ``pos // KV_CHUNK``.
    """
    return tl.where(
        pos < LONG_FROM, pos // KV_CHUNK, LONG_FROM // KV_CHUNK + (pos - LONG_FROM) // LONG_CHUNK
    )


@triton.jit
def _chunk_start(  # type: ignore[no-untyped-def]
    c, KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr
):
    """The first key position of chunk ``c`` (chunk ``c`` ends where ``c + 1`` starts)."""
    shorts: tl.constexpr = LONG_FROM // KV_CHUNK
    return tl.where(c < shorts, c * KV_CHUNK, LONG_FROM + (c - shorts) * LONG_CHUNK)


@triton.jit
def _starts_chunk(  # type: ignore[no-untyped-def]
    pos, KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr
):
    """Whether key position ``pos >= 0`` is the first of its chunk."""
    c = _chunk_of(pos, KV_CHUNK, LONG_FROM, LONG_CHUNK)
    return _chunk_start(c, KV_CHUNK, LONG_FROM, LONG_CHUNK) == pos


@triton.jit
def _merge(M, L, A, m, den, a):
    """Fold the partial ``(m, den, a)`` into the running ``(M, L, A)``; empty partials are no-ops.

    ``M``/``m`` are row maxima in the log2 domain, ``L``/``den`` sums of ``exp2(s - max)``,
    ``A``/``a`` the matching weighted value sums. Factors equal to 1 are selected, not computed,
    so folding into an empty running state copies the partial exactly.
    """
    m_new = tl.maximum(M, m)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    sa = tl.where(m_new == M, 1.0, tl.exp2(M - m_use))
    sb = tl.where(m_new == m, 1.0, tl.exp2(m - m_use))
    has = m > float("-inf")
    L = tl.where(has, L * sa + den * sb, L)
    A = tl.where(has[:, None], A * sa[:, None] + a * sb[:, None], A)
    M = tl.where(has, m_new, M)
    return M, L, A


@triton.jit
def _normalize(A, L):
    """``A / L`` per row; rows with no key (padding rows only) divide by 1 instead of 0."""
    return A / tl.where(L > 0.0, L, 1.0)[:, None]


@triton.jit
def _empty_partial(BLOCK_M: tl.constexpr, HEAD_PAD: tl.constexpr):  # type: ignore[no-untyped-def]
    """The partial of no key: max ``-inf``, sum 0, accumulator 0 (what :func:`_merge` skips)."""
    return (
        tl.full([BLOCK_M], float("-inf"), tl.float32),
        tl.zeros([BLOCK_M], dtype=tl.float32),
        tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32),
    )


@triton.jit
def _tile_step(  # type: ignore[no-untyped-def]
    m, den, acc, q, pos, lo_row, n0, blk, kv_len, kv_base,
    k_head, v_head, block_size,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    offs_d, d_ok, qk_scale,
    MASKED: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys ``[n0, n0 + BLOCK_N)``.

    Without ``MASKED`` the caller guarantees that every key of the tile exists and is visible
    to every valid row: the visibility ``where`` would select every score as it is, so leaving
    it (and the load masks) out changes no bit, only the work. ``blk`` holds the paged cache's
    block of each key (:func:`_block_ids`; unused for packed keys).
    """
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < kv_len
    if PAGED:
        slot = (offs_n % block_size).to(tl.int64)
        k_off = blk * stride_kb + slot * stride_ks
        v_off = blk * stride_vb + slot * stride_vs
    else:
        row = (kv_base + offs_n).to(tl.int64)
        k_off = row * stride_ks
        v_off = row * stride_vs
    if MASKED:
        kt = tl.load(
            k_head + k_off[None, :] + offs_d[:, None] * stride_kd,
            mask=n_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        v = tl.load(
            v_head + v_off[:, None] + offs_d[None, :] * stride_vd,
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
    else:
        kt = tl.load(
            k_head + k_off[None, :] + offs_d[:, None] * stride_kd, mask=d_ok[:, None], other=0.0
        )
        v = tl.load(
            v_head + v_off[:, None] + offs_d[None, :] * stride_vd, mask=d_ok[None, :], other=0.0
        )
    if UPCAST:
        kt = kt.to(tl.float32)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    if MASKED:
        vis = n_ok[None, :] & (pos[:, None] >= 0)
        if CAUSAL:
            vis = vis & (offs_n[None, :] <= pos[:, None])
        if HAS_WINDOW:
            vis = vis & (offs_n[None, :] >= lo_row[:, None])
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.where(m_new == m, 1.0, tl.exp2(m - m_use))
    p = tl.exp2(s - m_use[:, None])
    den = den * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    pv = p.to(v_head.dtype.element_ty)
    if UPCAST:
        pv = pv.to(tl.float32)
        v = v.to(tl.float32)
    acc = tl.dot(pv, v, acc, input_precision=PRECISION)
    return m_new, den, acc


@triton.jit
def _block_ids(  # type: ignore[no-untyped-def]
    bt_ptr, seq, stride_bt, n0, block_size, kv_len, MASKED: tl.constexpr, BLOCK_N: tl.constexpr
):
    """The block-table entries of keys ``[n0, n0 + BLOCK_N)`` (0 past ``kv_len`` if masked)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    ptrs = bt_ptr + seq * stride_bt + offs_n // block_size
    blk = tl.load(ptrs, mask=offs_n < kv_len, other=0) if MASKED else tl.load(ptrs)
    return blk.to(tl.int64)


@triton.jit
def _first_block_ids(  # type: ignore[no-untyped-def]
    bt_ptr, seq, stride_bt, n0, block_size, kv_len,
    PAGED: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """What :func:`_key_tile` expects in ``blk`` for a walk starting at ``n0``.

    With the prefetch, the block ids of the first tile; otherwise a placeholder (each step
    loads its own).
    """
    if PAGED and PREFETCH:
        blk = _block_ids(bt_ptr, seq, stride_bt, n0, block_size, kv_len, True, BLOCK_N)
    else:
        blk = tl.zeros([BLOCK_N], dtype=tl.int64)
    return blk


@triton.jit
def _key_tile(  # type: ignore[no-untyped-def]
    m, den, acc, blk, q, pos, lo_row, n0, seq, kv_len, kv_base,
    k_head, v_head, bt_ptr, stride_bt, block_size,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    offs_d, d_ok, qk_scale,
    MASKED: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    """One key tile of :func:`_chunk_partial`: the paged block ids, then :func:`_tile_step`.

    ``blk`` holds this tile's block ids when ``PREFETCH`` is on (loaded one step earlier); the
    returned ids are the next tile's then, which the load here issues before this tile's keys.
    Without it the ids are loaded here for this tile (masked like the tile) and returned as is.
    """
    nxt = blk
    if PAGED:
        if PREFETCH:
            nxt = _block_ids(bt_ptr, seq, stride_bt, n0 + BLOCK_N, block_size, kv_len, True,
                             BLOCK_N)  # fmt: skip
        else:
            blk = _block_ids(bt_ptr, seq, stride_bt, n0, block_size, kv_len, MASKED, BLOCK_N)
            nxt = blk
    m, den, acc = _tile_step(
        m, den, acc, q, pos, lo_row, n0, blk, kv_len, kv_base,
        k_head, v_head, block_size,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        offs_d, d_ok, qk_scale,
        MASKED, PAGED, CAUSAL, HAS_WINDOW, BLOCK_N, UPCAST, PRECISION,
    )  # fmt: skip
    return m, den, acc, nxt


@triton.jit
def _chunk_partial(  # type: ignore[no-untyped-def]
    q, pos, lo_row, c, tile_lo, hi, open_end, seq, kv_len, kv_base,
    k_head, v_head, bt_ptr, stride_bt, block_size,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    offs_d, d_ok, qk_scale,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Online softmax over chunk ``c`` from scratch: ``(max, sum, acc)`` per row, fp32.

    Tiles ``[n0, n0 + BLOCK_N)`` with ``n0`` on the absolute ``BLOCK_N`` grid, from the chunk's
    start (or the tile's window start) to ``hi``, in increasing order. Tiles that end at or
    before ``open_end`` (keys every valid row of the program sees) skip the masking; the rest
    are masked. Same steps, same bits, either way.

    ``PREFETCH`` (paged keys; speed only): each step loads the next tile's block-table entries
    while the current tile's keys are in flight, so a key load never waits for the table load of
    its own step. Paged prefill launches use it (1.07x on an H100); decode gained nothing.
    """
    start = tl.maximum(_chunk_start(c, KV_CHUNK, LONG_FROM, LONG_CHUNK), tile_lo)
    end = tl.minimum(_chunk_start(c + 1, KV_CHUNK, LONG_FROM, LONG_CHUNK), hi + 1)
    open_stop = tl.minimum(tl.maximum(start + (open_end - start) // BLOCK_N * BLOCK_N, start), end)
    m, den, acc = _empty_partial(BLOCK_M, HEAD_PAD)
    blk = _first_block_ids(bt_ptr, seq, stride_bt, start, block_size, kv_len, PAGED, PREFETCH,
                           BLOCK_N)  # fmt: skip
    for n0 in range(start, open_stop, BLOCK_N):
        m, den, acc, blk = _key_tile(
            m, den, acc, blk, q, pos, lo_row, n0, seq, kv_len, kv_base,
            k_head, v_head, bt_ptr, stride_bt, block_size,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            offs_d, d_ok, qk_scale,
            False, PAGED, CAUSAL, HAS_WINDOW, BLOCK_N, UPCAST, PRECISION, PREFETCH,
        )  # fmt: skip
    for n0 in range(open_stop, end, BLOCK_N):
        m, den, acc, blk = _key_tile(
            m, den, acc, blk, q, pos, lo_row, n0, seq, kv_len, kv_base,
            k_head, v_head, bt_ptr, stride_bt, block_size,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            offs_d, d_ok, qk_scale,
            True, PAGED, CAUSAL, HAS_WINDOW, BLOCK_N, UPCAST, PRECISION, PREFETCH,
        )  # fmt: skip
    return m, den, acc


@triton.jit
def _fused_rows(  # type: ignore[no-untyped-def]
    q, pos, lo_row, tile_lo, hi, open_end, seq, kv_len, kv_base,
    k_head, v_head, bt_ptr, stride_bt, block_size,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    offs_d, d_ok, qk_scale,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Every chunk of the tile, folded in order: the fused launch's ``(M, L, A)``.

    The same tile steps, in the same order and with the same masking, as :func:`_chunk_partial`
    called chunk by chunk and each partial folded with :func:`_merge`; only the loop is one loop
    over all the tiles (unmasked ones, then masked ones) instead of two per chunk, with the fold
    and the restart of the partial at each chunk's last tile. So the loads of the next chunk's
    first tiles are issued under the current chunk's math, where a loop per chunk drained the
    pipeline at every chunk (256 keys: every 4 tiles). A tile ends a chunk where the next one
    starts a chunk (:func:`_starts_chunk`: the grid's short and long chunks alike). Why the
    masked/unmasked split is the same: a chunk's tiles start on the ``BLOCK_N`` grid, so the
    per-chunk boundary of :func:`_chunk_partial` (``open_end`` rounded down to the grid, clamped
    to the chunk) is the global one clamped; each chunk holds at least one tile of
    ``[tile_lo, hi]``.
    """
    open_stop = tl.maximum(tl.minimum(open_end // BLOCK_N * BLOCK_N, hi + 1), tile_lo)
    M, L, A = _empty_partial(BLOCK_M, HEAD_PAD)
    m, den, acc = _empty_partial(BLOCK_M, HEAD_PAD)
    blk = _first_block_ids(bt_ptr, seq, stride_bt, tile_lo, block_size, kv_len, PAGED, PREFETCH,
                           BLOCK_N)  # fmt: skip
    for n0 in range(tile_lo, open_stop, BLOCK_N):
        m, den, acc, blk = _key_tile(
            m, den, acc, blk, q, pos, lo_row, n0, seq, kv_len, kv_base,
            k_head, v_head, bt_ptr, stride_bt, block_size,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            offs_d, d_ok, qk_scale,
            False, PAGED, CAUSAL, HAS_WINDOW, BLOCK_N, UPCAST, PRECISION, PREFETCH,
        )  # fmt: skip
        if _starts_chunk(n0 + BLOCK_N, KV_CHUNK, LONG_FROM, LONG_CHUNK):
            M, L, A = _merge(M, L, A, m, den, acc)
            m, den, acc = _empty_partial(BLOCK_M, HEAD_PAD)
    for n0 in range(open_stop, hi + 1, BLOCK_N):
        m, den, acc, blk = _key_tile(
            m, den, acc, blk, q, pos, lo_row, n0, seq, kv_len, kv_base,
            k_head, v_head, bt_ptr, stride_bt, block_size,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            offs_d, d_ok, qk_scale,
            True, PAGED, CAUSAL, HAS_WINDOW, BLOCK_N, UPCAST, PRECISION, PREFETCH,
        )  # fmt: skip
        if _starts_chunk(n0 + BLOCK_N, KV_CHUNK, LONG_FROM, LONG_CHUNK):
            M, L, A = _merge(M, L, A, m, den, acc)
            m, den, acc = _empty_partial(BLOCK_M, HEAD_PAD)
    # The last chunk, unless its last tile ended on a chunk boundary (then this partial is
    # empty and the fold leaves the state as it is).
    return _merge(M, L, A, m, den, acc)


# Arguments that follow the split's chunk bound are not specialized on (Triton would compile a
# variant for a value of 1 or a multiple of 16): a CUDA graph captured with another bound than its
# warm-up launch must not need a new variant, which cannot be loaded during a capture. (The
# partials' strides do not follow it: their chunk index is outermost.)
CHUNK_BOUND_ARGS = ["num_chunks"]


@triton.jit
def _partial_offsets(  # type: ignore[no-untyped-def]
    kvh, q_beg, q0, stride_pk, stride_ak, d0,
    BLOCK_M: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """A query tile's offsets in chunk 0's partials (chunk ``c`` adds ``c`` chunk strides).

    Max and sum ``[BLOCK_M]``, accumulator ``[BLOCK_M, BLOCK_D]`` from head column ``d0``: one
    scalar plus a compile-time pattern (see the module docstring), the tile's rows being the
    consecutive entries from ``(q_beg + q0) * GROUP_PAD`` in the KV head's block.
    """
    first = (q_beg + q0).to(tl.int64) * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    pm = kvh.to(tl.int64) * stride_pk + first + rows
    pa = (
        (kvh.to(tl.int64) * stride_ak + first * HEAD_PAD + d0)
        + rows[:, None] * HEAD_PAD
        + tl.arange(0, BLOCK_D)[None, :]
    )
    return pm, pa


@triton.jit(do_not_specialize=CHUNK_BOUND_ARGS)
def _attn_kernel(  # type: ignore[no-untyped-def]
    q_ptr, k_ptr, v_ptr, out_ptr, bt_ptr, seq_lens_ptr, q_start_ptr, kv_start_ptr,
    part_m_ptr, part_l_ptr, part_acc_ptr,
    num_seqs, num_chunks, group, head_size, block_size, window, qk_scale,
    stride_qt, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ot, stride_oh, stride_od,
    stride_bt, stride_pc, stride_pk, stride_ac, stride_ak,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, SPLIT: tl.constexpr,
    KV_CHUNK: tl.constexpr, LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    """Grid ``(tile slots, kv heads[, chunk programs])``; see the module docstring."""
    # Last tile slot first: a causal sequence's later tiles see the most keys, and starting them
    # first keeps the short ones for the end of the grid (order only; no bit depends on it).
    slot = tl.num_programs(0) - 1 - tl.program_id(0)
    kvh = tl.program_id(1)
    seq = _find_seq(q_start_ptr, slot, num_seqs, BLOCK_Q, True)
    q_beg = tl.load(q_start_ptr + seq)
    q_len = tl.load(q_start_ptr + seq + 1) - q_beg
    q0 = (slot - (q_beg // BLOCK_Q + seq)) * BLOCK_Q
    if q0 >= q_len:
        return
    kv_len = tl.load(seq_lens_ptr + seq)
    # The keys any row of this tile sees: [lo, hi].
    hi = kv_len - q_len + tl.minimum(q0 + BLOCK_Q, q_len) - 1 if CAUSAL else kv_len - 1
    lo = tl.maximum(kv_len - q_len + q0 - window + 1, 0) if HAS_WINDOW else 0
    # Keys below open_end are visible to every valid row of the tile (window: none promised).
    if HAS_WINDOW:
        open_end = 0
    elif CAUSAL:
        open_end = tl.minimum(kv_len, kv_len - q_len + q0 + 1)
    else:
        open_end = kv_len
    if SPLIT:
        # This program's chunks: c_first, c_first + step, ... up to c_end (buffer bound included).
        # The walk is over chunk indices, whatever their lengths: each of the tile's chunks
        # [chunk_of(lo), c_end) has exactly one program.
        step = tl.num_programs(2)
        c_end = tl.minimum(_chunk_of(hi, KV_CHUNK, LONG_FROM, LONG_CHUNK) + 1, num_chunks)
        c_first = tl.program_id(2)
        c_lo = _chunk_of(lo, KV_CHUNK, LONG_FROM, LONG_CHUNK)
        c_first += tl.maximum(c_lo - c_first + step - 1, 0) // step * step
        if c_first >= c_end:
            return
    kv_base = 0 if PAGED else tl.load(kv_start_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    tok = q0 + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (tok < q_len) & (g < group)
    head = kvh * group + g
    pos = kv_len - q_len + tok
    lo_row = pos - window + 1
    offs_d = tl.arange(0, HEAD_PAD)
    d_ok = offs_d < head_size
    q_row = (q_beg + tok).to(tl.int64)
    q = tl.load(
        q_ptr
        + q_row[:, None] * stride_qt
        + head[:, None] * stride_qh
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    tile_lo = (lo // BLOCK_N) * BLOCK_N
    k_head = k_ptr + kvh.to(tl.int64) * stride_kh
    v_head = v_ptr + kvh.to(tl.int64) * stride_vh

    if SPLIT:
        pm, pa = _partial_offsets(
            kvh, q_beg, q0, stride_pk, stride_ak, 0, BLOCK_M, GROUP_PAD, HEAD_PAD, HEAD_PAD
        )
        for c in range(c_first, c_end, step):
            m, den, acc = _chunk_partial(
                q, pos, lo_row, c, tile_lo, hi, open_end, seq, kv_len, kv_base,
                k_head, v_head, bt_ptr, stride_bt, block_size,
                stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
                offs_d, d_ok, qk_scale,
                PAGED, CAUSAL, HAS_WINDOW, KV_CHUNK, LONG_FROM, LONG_CHUNK, BLOCK_N, BLOCK_M,
                HEAD_PAD, UPCAST, PRECISION, PREFETCH,
            )  # fmt: skip
            c64 = tl.cast(c, tl.int64)
            tl.store(part_m_ptr + pm + c64 * stride_pc, m, mask=row_ok)
            tl.store(part_l_ptr + pm + c64 * stride_pc, den, mask=row_ok)
            tl.store(part_acc_ptr + pa + c64 * stride_ac, acc, mask=row_ok[:, None] & d_ok[None, :])
    else:
        _, L, A = _fused_rows(
            q, pos, lo_row, tile_lo, hi, open_end, seq, kv_len, kv_base,
            k_head, v_head, bt_ptr, stride_bt, block_size,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            offs_d, d_ok, qk_scale,
            PAGED, CAUSAL, HAS_WINDOW, KV_CHUNK, LONG_FROM, LONG_CHUNK, BLOCK_N, BLOCK_M,
            HEAD_PAD, UPCAST, PRECISION, PREFETCH,
        )  # fmt: skip
        out = _normalize(A, L)
        tl.store(
            out_ptr + q_row[:, None] * stride_ot + head[:, None] * stride_oh
            + offs_d[None, :] * stride_od,
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )  # fmt: skip


@triton.jit
def _load_partial(
    part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c, own_lo, own_hi, row_ok, d_ok,
    num_chunks, stride_pc, stride_ac,
):  # fmt: skip
    """Chunk ``c``'s stored partial of each row, or the empty partial.

    Empty where ``c`` is not one of the row's chunks or lies past the buffer's ``num_chunks``.
    """
    own = row_ok & (c >= own_lo) & (c <= own_hi) & (c < num_chunks)
    c64 = tl.cast(c, tl.int64)
    m = tl.load(part_m_ptr + pm + c64 * stride_pc, mask=own, other=float("-inf"))
    den = tl.load(part_l_ptr + pm + c64 * stride_pc, mask=own, other=0.0)
    a = tl.load(part_acc_ptr + pa + c64 * stride_ac, mask=own[:, None] & d_ok[None, :], other=0.0)
    return m, den, a


@triton.jit
def _load_group(
    part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c, own_lo, own_hi, row_ok, d_ok,
    num_chunks, stride_pc, stride_ac,
):  # fmt: skip
    """Chunks ``c .. c + 3``'s partials (:func:`_load_partial`), as a tuple of four."""
    return (
        _load_partial(
            part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c, own_lo, own_hi, row_ok, d_ok,
            num_chunks, stride_pc, stride_ac,
        ),
        _load_partial(
            part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c + 1, own_lo, own_hi, row_ok, d_ok,
            num_chunks, stride_pc, stride_ac,
        ),
        _load_partial(
            part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c + 2, own_lo, own_hi, row_ok, d_ok,
            num_chunks, stride_pc, stride_ac,
        ),
        _load_partial(
            part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c + 3, own_lo, own_hi, row_ok, d_ok,
            num_chunks, stride_pc, stride_ac,
        ),
    )  # fmt: skip


@triton.jit
def _fold_group(M, L, A, group):
    """Fold a :func:`_load_group` tuple into the running state, in chunk order."""
    for i in tl.static_range(4):
        m, den, a = group[i]
        M, L, A = _merge(M, L, A, m, den, a)
    return M, L, A


@triton.jit(do_not_specialize=CHUNK_BOUND_ARGS)
def _combine_kernel(  # type: ignore[no-untyped-def]
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, q_start_ptr, seq_lens_ptr,
    num_seqs, num_chunks, group, head_size, window,
    stride_ot, stride_oh, stride_od,
    stride_pc, stride_pk, stride_ac, stride_ak,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, KV_CHUNK: tl.constexpr,
    LONG_FROM: tl.constexpr, LONG_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Grid ``(tile slots, kv heads, head-dim blocks)``: fold each row's partials in chunk order.

    Rows are packed like :func:`_attn_kernel`'s (``BLOCK_Q`` tokens times ``GROUP_PAD`` heads of
    one sequence); ``BLOCK_D`` columns of the head per program (the fold is elementwise along
    the head, each program recomputes the row scalars identically). The loop runs over every
    chunk any row of the tile needs, in groups of four loaded two groups ahead of their folds;
    a chunk outside a row's own range loads as the empty partial, which :func:`_merge` skips, so
    each row folds exactly its own chunks in order, whatever ``BLOCK_Q`` and ``BLOCK_D``. A row
    whose chunks reach past ``num_chunks`` is written as NaN (the caller's bound was wrong; see
    the module docstring).
    """
    slot = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = _find_seq(q_start_ptr, slot, num_seqs, BLOCK_Q, True)
    q_beg = tl.load(q_start_ptr + seq)
    q_len = tl.load(q_start_ptr + seq + 1) - q_beg
    q0 = (slot - (q_beg // BLOCK_Q + seq)) * BLOCK_Q
    if q0 >= q_len:
        return
    kv_len = tl.load(seq_lens_ptr + seq)
    rows = tl.arange(0, BLOCK_M)
    tok = q0 + rows // GROUP_PAD
    g = rows % GROUP_PAD
    row_ok = (tok < q_len) & (g < group)
    head = kvh * group + g
    pos = kv_len - q_len + tok
    if CAUSAL:
        own_hi = _chunk_of(pos, KV_CHUNK, LONG_FROM, LONG_CHUNK)
        hi = kv_len - q_len + tl.minimum(q0 + BLOCK_Q, q_len) - 1
    else:
        own_hi = _chunk_of(pos * 0 + kv_len - 1, KV_CHUNK, LONG_FROM, LONG_CHUNK)
        hi = kv_len - 1
    if HAS_WINDOW:
        own_lo = _chunk_of(tl.maximum(pos - window + 1, 0), KV_CHUNK, LONG_FROM, LONG_CHUNK)
        lo = tl.maximum(kv_len - q_len + q0 - window + 1, 0)
    else:
        own_lo = pos * 0
        lo = 0
    d0 = tl.program_id(2) * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_size
    q_row = (q_beg + tok).to(tl.int64)
    pm, pa = _partial_offsets(
        kvh, q_beg, q0, stride_pk, stride_ak, d0, BLOCK_M, GROUP_PAD, HEAD_PAD, BLOCK_D
    )
    M, L, A = _empty_partial(BLOCK_M, BLOCK_D)
    # Loads run two groups of four chunks ahead of the folds, so their latency overlaps folds
    # (one sequence of 32k keys on an H100: 26 -> 23.7 us; the chain of folds is the rest). The
    # folds, and so the bits, do not depend on when the loads are issued.
    c = _chunk_of(lo, KV_CHUNK, LONG_FROM, LONG_CHUNK)
    end = tl.minimum(_chunk_of(hi, KV_CHUNK, LONG_FROM, LONG_CHUNK) + 1, num_chunks)
    group0 = _load_group(
        part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c, own_lo, own_hi, row_ok, d_ok,
        num_chunks, stride_pc, stride_ac,
    )  # fmt: skip
    group1 = _load_group(
        part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, c + 4, own_lo, own_hi, row_ok, d_ok,
        num_chunks, stride_pc, stride_ac,
    )  # fmt: skip
    for ahead in range(c + 8, end + 8, 4):
        group2 = _load_group(
            part_m_ptr, part_l_ptr, part_acc_ptr, pm, pa, ahead, own_lo, own_hi, row_ok, d_ok,
            num_chunks, stride_pc, stride_ac,
        )  # fmt: skip
        M, L, A = _fold_group(M, L, A, group0)
        group0 = group1
        group1 = group2
    out = _normalize(A, L)
    out = tl.where((own_hi >= num_chunks)[:, None], float("nan"), out)
    tl.store(
        out_ptr + q_row[:, None] * stride_ot + head[:, None] * stride_oh
        + offs_d[None, :] * stride_od,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )  # fmt: skip
