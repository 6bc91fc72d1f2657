"""The CUTLASS FP8 scaled GEMM: plan (pure Python) -> launch (the JIT extension).

``out = (a @ b) * scale_a * scale_b (+ bias)`` with ``a [M, K]`` and ``b [K, N]`` in
float8_e4m3fn, fp32 scales (per tensor, or ``[M, 1]`` per token and ``[1, N]`` per channel),
output and bias in bf16 or fp16.

Why it is batch-invariant: every built config walks the k-tiles of an output element in the
same order into one accumulator through the same wgmma (no split-K, no stream-K; see
``csrc/bi_fp8_sm90.cuh``), so they all give the same bits (measured on every Qwen3-8B shape);
:func:`plan_scaled_mm` may therefore pick the tile from M as well as ``(N, K, arch)`` with
:func:`~bi_cutlass_fp8._configs.select_config`. The epilogue applies the scales and bias
per element in fp32 with one rounding to the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _platform
from .._checks import GemmShape, check_args, check_kernel_layout, check_vector_layout
from .._configs import TileConfig, config_by_name, select_config


@dataclass(frozen=True)
class Plan:
    """What will run: the validated shape, the tile config and the kernel table index."""

    shape: GemmShape
    config: TileConfig
    kernel_index: int


def plan_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    *,
    arch: int = 90,
    config_name: str | None = None,
) -> Plan:
    """Validate the arguments and choose the kernel, without touching the GPU.

    Args:
        a, b, scale_a, scale_b, out_dtype, bias: as for :func:`scaled_mm`.
        arch: SM version to plan for (only 90 has kernels).
        config_name: force a built config (benchmarks sweep candidates with it); the default
            is :func:`select_config` on ``(N, K, arch, M)``.

    Raises:
        TypeError, ValueError: bad arguments (see :mod:`bi_cutlass_fp8._checks`).
    """
    from .._jit import kernel_index

    shape = check_args(a, b, scale_a, scale_b, out_dtype, bias)
    check_kernel_layout(a, b, shape)
    check_vector_layout(scale_a, scale_b, bias)
    config = (
        select_config(shape.n, shape.k, arch, m=shape.m)
        if config_name is None
        else config_by_name(config_name)
    )
    if not config.built:
        raise ValueError(f"scaled_mm: config {config.name!r} (sm{config.arch}) has no kernel")
    return Plan(shape=shape, config=config, kernel_index=kernel_index(config.name, out_dtype))


def _check_device(a: torch.Tensor) -> int:
    if a.device.type != "cuda":
        raise ValueError(f"scaled_mm: the CUTLASS kernel needs CUDA tensors, got a on {a.device}")
    arch = _platform.sm_version(a.device)
    if arch != 90:
        raise ValueError(
            f"scaled_mm: the CUTLASS kernel is built for sm90 (H100/H200) only, got sm{arch}; "
            "use bi_cutlass_fp8.scaled_mm_dequant on other GPUs"
        )
    return arch


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-invariant FP8 GEMM ``(a @ b) * scale_a * scale_b (+ bias)`` on SM90.

    The same row of ``a`` gives the same output bits alone or at any position of any batch:
    the tile configuration depends on ``(N, K)`` only. Note that a *dynamic per-tensor*
    activation scale (an amax over the whole batch) makes ``scale_a`` itself batch-dependent;
    use per-token scales (``[M, 1]``) or a static scale for end-to-end invariance.

    Args:
        a: ``[M, K]`` float8_e4m3fn, row-major (strides ``(lda, 1)``).
        b: ``[K, N]`` float8_e4m3fn, column-major (strides ``(1, ldb)``): ``weight.t()`` of a
            row-major ``[N, K]`` weight, as for ``torch._scaled_mm``.
        scale_a: float32 ``[]``/``[1]``/``[1, 1]`` (per tensor) or ``[M, 1]`` (per token;
            ``[M]`` too).
        scale_b: float32 ``[]``/``[1]``/``[1, 1]`` (per tensor) or ``[1, N]`` (per channel;
            also ``[N, 1]``/``[N]``, how vLLM stores channel-wise weight scales).
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        bias: optional ``[N]`` in ``out_dtype``.

    Returns:
        ``[M, N]`` in ``out_dtype``, row-major.

    Raises:
        TypeError, ValueError: bad dtypes, shapes, layout or alignment (K and N must be
            multiples of 16), or tensors not on an SM90 GPU.
        bi_cutlass_fp8.BuildError: the kernel cannot be built (no nvcc / CUTLASS headers).
    """
    return _run(a, b, scale_a, scale_b, out_dtype, bias, None)


def scaled_mm_with_config(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config_name: str,
) -> torch.Tensor:
    """:func:`scaled_mm` with a forced tile config, for benchmarks that compare candidates.

    Batch-invariant only if the caller fixes ``config_name`` per ``(N, K)``.
    """
    return _run(a, b, scale_a, scale_b, out_dtype, bias, config_name)


def _run(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
    config_name: str | None,
) -> torch.Tensor:
    from .._jit import get_module

    plan = plan_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, config_name=config_name)
    _check_device(a)
    out = torch.empty((plan.shape.m, plan.shape.n), dtype=out_dtype, device=a.device)
    if plan.shape.m == 0:
        return out
    get_module().scaled_mm_out(out, a, b, scale_a, scale_b, bias, plan.kernel_index)
    return out
