"""Tensor-parallel invariance: the same bits at TP=1, 2, 4 and 8.

A row-parallel layer (``o_proj``, ``down_proj``) splits the reduction dimension K across ranks
and adds the ranks' partial sums, so its rounding depends on the TP size. Here K is always cut
into :data:`TP_SEGMENTS` segments whose boundaries depend on K alone; each segment's product is
accumulated from zero in fp32, and the segment partials are added along one fixed, balanced
binary tree::

    TP_SEGMENTS = 8:   ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))

A rank holding ``TP_SEGMENTS / tp`` consecutive segments owns a whole subtree: it reduces it
locally, and :func:`fixed_order_all_reduce` (the ``fixed_order`` provider of the op
``ir_dispatch.ops.all_reduce``) combines the ranks' subtree sums with the top of the same tree;
both use the one :func:`~ir_dispatch.ops.collectives.tree_sum`. Every TP size that is a power of
two dividing ``TP_SEGMENTS`` therefore performs the same additions in the same order, and every
rank ends with identical bits.

How the segment products run is a parameter (:data:`SegmentGemm`): the reference
:func:`fp32_segment_gemm` (``ir_dispatch::mm`` on fp32 copies, any provider), or on GPUs one
batched GEMM with an fp32 output (vllm-bi-plugin's TP-invariant mode). One device must use the
same one at every TP size; :func:`tree_all_reduce` combines ranks given any rank-order gather.

Column-parallel layers (``qkv_proj``, ``gate_up_proj``, the vocab-parallel ``lm_head``) split N,
never K: an output element is computed whole on one rank, so they are TP-invariant as long as the
GEMM's reduction order for a column does not depend on how many columns the call has. The CPU
provider's does not; bi-triton-ascend's default chain splits K for narrow N (< 1024), so
TP-invariant mode switches it to a K-only chain (``set_n_independent_chain``).
Attention heads are independent per head. The vocab-parallel embedding adds one looked-up row to
zeros, which is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .ops import collectives, mm
from .ops.collectives import _check_power_of_two
from .ops.collectives import tree_sum as tree_sum  # one tree for ranks and segments

TP_SEGMENTS = int(os.environ.get("IR_DISPATCH_TP_SEGMENTS", "8"))


def supported_tp_sizes(segments: int = TP_SEGMENTS) -> tuple[int, ...]:
    """TP sizes that give identical bits: the powers of two that divide ``segments``."""
    _check_power_of_two("segments", segments)
    return tuple(1 << i for i in range(segments.bit_length()) if segments % (1 << i) == 0)


def segment_bounds(k: int, segments: int = TP_SEGMENTS) -> list[tuple[int, int]]:
    """Fixed ``[start, end)`` bounds of the K segments: a function of ``k`` and ``segments``."""
    _check_power_of_two("segments", segments)
    if k % segments:
        raise ValueError(f"K={k} must be divisible by the {segments} TP-invariant segments")
    step = k // segments
    return [(i * step, (i + 1) * step) for i in range(segments)]


SegmentGemm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(a [S, M, Kseg], b [S, Kseg, N]) -> [S, M, N]`` float32: each product from zero in fp32."""


def fp32_segment_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference :data:`SegmentGemm`: each segment through ``ir_dispatch::mm`` on fp32 copies.

    Portable (any provider of ``mm``) but slow on GPUs: it copies the weight to fp32 on every
    call. GPUs use a batched GEMM with an fp32 output instead (``vllm-bi-plugin``'s
    ``_tp.triton_segment_gemm``); each device must use one of them at every TP size.
    """
    products = [mm.call_selected(ai.float(), bi.float()) for ai, bi in zip(a, b, strict=True)]
    return torch.stack(products)


def segment_operands(
    x: torch.Tensor, weight: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` and ``weight [N, K]`` as ``count`` batched segment products, without copies.

    Returns ``a [count, M, K / count]`` and ``b [count, K / count, N]`` (strided views).
    """
    k = x.shape[-1]
    bounds = segment_bounds(k, count)  # checks that count divides K
    seg = bounds[0][1]
    a = x.reshape(x.shape[0], count, seg).transpose(0, 1)
    b = weight.reshape(weight.shape[0], count, seg).permute(1, 2, 0)
    return a, b


def local_row_parallel_partial(
    x_shard: torch.Tensor,
    weight_shard: torch.Tensor,
    tp_size: int,
    segments: int = TP_SEGMENTS,
    *,
    segment_gemm: SegmentGemm | None = None,
) -> torch.Tensor:
    """One rank's fp32 subtree sum of a row-parallel ``x @ weight.T``.

    Args:
        x_shard: ``[M, K / tp_size]``, this rank's slice of the input's K dimension.
        weight_shard: ``[N, K / tp_size]``, this rank's slice of the weight.
        tp_size: the number of ranks; must divide ``segments``.
        segments: total K segments of the whole layer.
        segment_gemm: how the segment products run (default :func:`fp32_segment_gemm`); the
            same one must be used at every TP size.

    Returns:
        ``[M, N]`` float32: the sum of this rank's segments along its subtree.
    """
    if segments % tp_size:
        raise ValueError(
            f"tp_size={tp_size} must divide the {segments} TP-invariant segments; "
            f"supported: {supported_tp_sizes(segments)}"
        )
    local = segments // tp_size
    k_local = x_shard.shape[-1]
    if weight_shard.shape[-1] != k_local:
        raise ValueError(f"weight_shard has K={weight_shard.shape[-1]} but x_shard has K={k_local}")
    a, b = segment_operands(x_shard, weight_shard, local)
    products = (segment_gemm or fp32_segment_gemm)(a, b)
    if products.dtype != torch.float32:
        raise ValueError(f"segment_gemm must return float32, got {products.dtype}")
    return tree_sum(list(products.unbind(0)))


def tree_all_reduce(
    partial: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], world_size: int
) -> torch.Tensor:
    """Sum the ranks' ``partial`` tensors in the fixed tree order, given a rank-order gather.

    Args:
        partial: this rank's tensor.
        all_gather: returns every rank's ``partial`` stacked in rank order, ``[world, *shape]``
            (vLLM's group ``all_gather`` along a new dim 0, or a test's emulation).
        world_size: the number of ranks (a power of two).
    """
    _check_power_of_two("world_size", world_size)
    if world_size == 1:
        return partial
    gathered = all_gather(partial)
    if gathered.shape[0] != world_size:
        raise ValueError(f"all_gather returned {gathered.shape[0]} parts for {world_size} ranks")
    return tree_sum(list(gathered.unbind(0)))


def finish_row_parallel(
    total: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Bias once, in fp32, after the whole reduction; then one cast to the activation dtype."""
    if bias is not None:
        total = total + bias.float()
    return total.to(dtype)


def row_parallel_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    segments: int = TP_SEGMENTS,
    segment_gemm: SegmentGemm | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` with the TP-invariant reduction order, on one device (TP=1)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = local_row_parallel_partial(x2, weight, 1, segments, segment_gemm=segment_gemm)
    return finish_row_parallel(out, bias, x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def fixed_order_all_reduce(partial: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """All-reduce (sum) with one fixed order: gather every rank's tensor, then :func:`tree_sum`.

    NCCL picks ring or tree algorithms, channel counts and protocols from the message size, so
    its summation order changes with the batch. Gathering and adding in rank order costs
    ``world_size`` times the traffic of the output but gives every rank the same bits for any
    batch; with power-of-two world sizes it is also the top of :func:`local_row_parallel_partial`'s
    tree, which makes row-parallel layers TP-invariant.

    This is the ``fixed_order`` provider of the op :data:`ir_dispatch.ops.all_reduce`, called
    directly so that it runs whatever the mode; ``group`` defaults to the world group.
    """
    import torch.distributed as dist

    pg = dist.group.WORLD if group is None else group
    if pg is None:
        raise ValueError("fixed_order_all_reduce: group is None and no default group exists")
    if dist.get_world_size(pg) == 1:  # type: ignore[arg-type]
        return partial
    return collectives.fixed_order_all_reduce(partial, pg.group_name)  # type: ignore[attr-defined]


def emulate_row_parallel_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    tp_size: int,
    bias: torch.Tensor | None = None,
    *,
    segments: int = TP_SEGMENTS,
    segment_gemm: SegmentGemm | None = None,
) -> torch.Tensor:
    """What ``tp_size`` ranks compute for a row-parallel layer, in one process.

    Shards K as vLLM's ``RowParallelLinear`` does (contiguous blocks per rank), computes each
    rank's subtree partial, combines them as :func:`fixed_order_all_reduce` would, and adds the
    bias once (vLLM adds it on one rank after the reduction).
    """
    k = x.shape[-1]
    if k % tp_size:
        raise ValueError(f"K={k} must be divisible by tp_size={tp_size}")
    shard = k // tp_size
    x2 = x.reshape(-1, k)
    partials = [
        local_row_parallel_partial(
            x2[:, r * shard : (r + 1) * shard],
            weight[:, r * shard : (r + 1) * shard],
            tp_size,
            segments,
            segment_gemm=segment_gemm,
        )
        for r in range(tp_size)
    ]
    out = tree_all_reduce(partials[0], lambda _: torch.stack(partials), tp_size)
    return finish_row_parallel(out, bias, x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def emulate_column_parallel_linear(
    x: torch.Tensor, weight: torch.Tensor, tp_size: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """What ``tp_size`` ranks compute for a column-parallel layer, gathered: N split, K whole."""
    n = weight.shape[0]
    if n % tp_size:
        raise ValueError(f"N={n} must be divisible by tp_size={tp_size}")
    shard = n // tp_size
    from .ops import linear

    outs = [
        linear.call_selected(
            x,
            weight[r * shard : (r + 1) * shard],
            None if bias is None else bias[r * shard : (r + 1) * shard],
        )
        for r in range(tp_size)
    ]
    return torch.cat(outs, dim=-1)
