"""TP-invariant mode (``VLLM_BI_TP_INVARIANT=1``): the same bits at TP=1, 2, 4 and 8.

Batch-invariant mode alone makes a run repeatable at one TP size. A row-parallel layer
(``RowParallelLinear``: ``o_proj``, ``down_proj``) still adds its K partial sums in an order
that depends on the TP size, so TP=1 and TP=2 differ. In TP-invariant mode every row-parallel
layer, at every TP size including 1, computes with :mod:`ir_dispatch.tp`'s order: K cut into
``TP_SEGMENTS`` fixed segments (one batched GEMM with an fp32 output), the rank's subtree summed
with ``tree_sum``, the ranks' fp32 sums gathered through vLLM's TP group and added in the same
tree, the bias added once, one cast. Column-parallel layers get a GEMM chain that does not
depend on N (``bi_triton_ascend``'s ``set_n_independent_chain``); see docs/tensor-parallel.md.

The layer runs as one torch custom op (``vllm_bi::tp_invariant_row_linear``), so
``torch.compile`` keeps it opaque and CUDA graphs capture it whole (the gather is pynccl's).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from . import _patch
from ._report import Report
from ._settings import TP_INVARIANT_ENV
from ._vllm_compat import (
    ROW_PARALLEL_ATTRS,
    ROW_PARALLEL_CLASS,
    UNQUANTIZED_LINEAR_METHOD,
    VllmLayout,
    row_parallel_linear_class,
    tp_all_gather_stacked,
)

_TRITON_DEVICES = ("cuda", "npu", "xpu")
_GEMM_CONFIG_MODULE = "bi_triton_ascend.ops.gemm_config"


def triton_segment_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``ir_dispatch.tp.SegmentGemm`` on bi-triton-ascend's batched GEMM with an fp32 output.

    One launch for all segments and no fp32 copy of the weight: operands stay in their dtype,
    each segment accumulates from zero in fp32 and is returned unrounded.
    """
    from bi_triton_ascend.ops.gemm import batched_gemm

    return batched_gemm(a, b, out_dtype=torch.float32)


SegmentGemm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def segment_gemm_for(x: torch.Tensor) -> SegmentGemm | None:
    """The segment GEMM for ``x``'s device: Triton's on GPUs/NPUs, else ``None`` (the reference).

    The choice depends on the device and dtype only, never on the TP size or the batch.
    """
    if x.device.type not in _TRITON_DEVICES:
        return None
    try:
        from bi_triton_ascend.ops.gemm_config import SUPPORTED_DTYPES
    except ImportError:
        return None
    return triton_segment_gemm if x.dtype in SUPPORTED_DTYPES else None


@torch.library.custom_op("vllm_bi::tp_invariant_row_linear", mutates_args=())
def tp_invariant_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tp_size: int,
    segments: int,
) -> torch.Tensor:
    """One rank's row-parallel output, reduced across the TP group in the fixed tree order.

    Args:
        x: ``[..., K / tp_size]``, this rank's slice of the input.
        weight: ``[N, K / tp_size]``, this rank's slice of the weight.
        bias: ``[N]`` or ``None``; added once, after the reduction.
        tp_size: ranks in vLLM's TP group (a power of two dividing ``segments``).
        segments: total K segments of the layer (``ir_dispatch.tp.TP_SEGMENTS``).
    """
    from ir_dispatch import tp

    x2 = x.reshape(-1, x.shape[-1])
    partial = tp.local_row_parallel_partial(
        x2, weight, tp_size, segments, segment_gemm=segment_gemm_for(x)
    )
    total = tp.tree_all_reduce(partial, tp_all_gather_stacked, tp_size)  # type: ignore[arg-type]
    return tp.finish_row_parallel(total, bias, x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@tp_invariant_row_linear.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tp_size: int, segments: int
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _applies(layer: Any, segments: int) -> bool:
    """Whether the TP-invariant path can serve ``layer`` (else vLLM's forward runs).

    Quantized layers keep vLLM's kernels; a layer that leaves its reduction to the caller
    (``reduce_results=False`` at TP > 1, MoE) cannot get the fixed order here; a layer without
    the attributes this forward reads (a vLLM that renamed them) keeps vLLM's forward.
    """
    if not all(hasattr(layer, name) for name in ROW_PARALLEL_ATTRS):
        return False
    tp_size = int(layer.tp_size)
    weight = getattr(layer, "weight", None)
    return (
        type(layer.quant_method).__name__ == UNQUANTIZED_LINEAR_METHOD
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and (layer.reduce_results or tp_size == 1)
        and segments % tp_size == 0
        and weight.shape[1] % (segments // tp_size) == 0
    )


def make_row_parallel_forward(
    original: Callable[..., Any], segments: int
) -> Callable[[Any, torch.Tensor], Any]:
    """``RowParallelLinear.forward`` with the TP-invariant order (vLLM's for other layers)."""

    def forward(self: Any, input_: torch.Tensor) -> Any:
        if not _applies(self, segments):
            return original(self, input_)
        tp_size = int(self.tp_size)
        if self.input_is_parallel:
            x = input_
        else:  # vLLM's split_tensor_along_last_dim: equal contiguous blocks
            x = torch.chunk(input_, tp_size, dim=-1)[self.tp_rank].contiguous()
        bias = None if self.skip_bias_add else self.bias
        out = torch.ops.vllm_bi.tp_invariant_row_linear(x, self.weight, bias, tp_size, segments)
        if not self.return_bias:
            return out
        return out, (self.bias if self.skip_bias_add else None)

    return forward


def collective_note(platform: str, layout: VllmLayout | None) -> str:
    """What batch invariance relies on for vLLM's own all-reduce on this platform and layout."""
    if platform == "cpu":
        return "vLLM's CPU all-reduce (2 ranks: a two-term sum is exact in either order)"
    if layout is not None and layout.custom_all_reduce:
        return layout.custom_all_reduce + "; NCCL tree, 1 channel, Simple"
    return "vLLM's all-reduce with the NCCL settings of its batch-invariant mode"


def install(layout: VllmLayout, platform: str, report: Report, *, tp_invariant: bool) -> None:
    """Record the collective; in TP-invariant mode patch ``RowParallelLinear`` and the chain."""
    from ir_dispatch import tp

    if not tp_invariant:
        report.tp["mode"] = f"bitwise at a fixed TP size ({TP_INVARIANT_ENV} unset)"
        report.tp["collective"] = collective_note(platform, layout)
        return
    report.tp["mode"] = f"TP-invariant ({TP_INVARIANT_ENV}=1)"
    report.tp["collective"] = collective_note(platform, layout)
    report.tp["segments"] = f"{tp.TP_SEGMENTS} (TP sizes {tp.supported_tp_sizes()})"
    report.tp["row-parallel reduction"] = "fp32 all-gather + tree_sum in rank order, bias once"
    cls = row_parallel_linear_class()
    _patch.patch_attr(cls, "forward", make_row_parallel_forward(cls.forward, tp.TP_SEGMENTS))
    report.replaced(
        f"{ROW_PARALLEL_CLASS}.forward (K order and all-reduce follow the TP size)",
        "vllm_bi::tp_invariant_row_linear (fixed K segments, fixed-order fp32 all-reduce)",
    )
    try:
        from bi_triton_ascend.ops import gemm_config
    except ImportError:
        if platform != "cpu":
            report.gap("TP-invariant mode: bi_triton_ascend missing, column-parallel unchecked")
        return
    gemm_config.set_n_independent_chain(True)
    if platform != "cpu":  # the CPU GEMM's K order never depends on N
        report.tp["column-parallel"] = "Triton GEMM chain from K alone (N-independent)"


def uninstall() -> None:
    """Undo what :func:`install` set outside ``_patch`` (the Triton chain rule).

    Only where the chain module is loaded: importing ``bi_triton_ascend`` registers its kernels,
    which an undo must not do in a process that never used them.
    """
    gemm_config = sys.modules.get(_GEMM_CONFIG_MODULE)
    if gemm_config is not None:
        gemm_config.set_n_independent_chain(False)
