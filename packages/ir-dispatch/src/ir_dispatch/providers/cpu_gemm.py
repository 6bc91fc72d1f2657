"""Batch-invariant CPU matrix products: the vendor GEMM on fixed-shape row chunks.

Why ``torch.mm`` is batch-variant on CPU: MKL and oneDNN pick the kernel, its blocking and the
thread split from ``(M, N, K)``. Row 0 of ``a[:m] @ b`` differs for ``m = 1..3`` from row 0 of
``a[:64] @ b`` (fp32, K = N = 1024, MKL 2024.2, 2 threads).

Why these are batch-invariant: the rows of ``a`` are cut into chunks of :data:`GEMM_ROWS` rows,
the last chunk padded with zero rows, all in one padded copy of ``a``. Each chunk is multiplied
by the same ``b`` with one in-place ``addmm_``, so every vendor call sees the same shapes,
strides, dtypes and alignment (chunks start at multiples of 64 bytes) whatever ``M`` is: the
same kernel, blocking, thread split and K order. Each call computes the chunk's output
*transposed*, ``[N, GEMM_ROWS]`` row-major (``b.T @ chunk.T``), which puts the rows on the
output's contiguous dimension: BLAS micro-kernels spread that dimension over SIMD lanes, every
lane runs the same FMA chain over K, and ``GEMM_ROWS = 32`` fills whole vectors, so no row lands
in a masked or scalar tail. A GEMM has no arithmetic across rows, so a row's bits then depend on
its own values and ``b`` only. The natural orientation (``chunk @ b``, rows on the output's
outer dimension) is not enough: with ``b = w.T`` MKL gave rows 1-3 of every 4 other bits than
row 0 (fp32, K = 97, N = 67, 4 threads). The tests check the rest of what vendors do not
document: every position in a chunk, batch sizes across chunk boundaries, 1/2/4 threads.

Why ``addmm_``: ATen computes ``mm`` as ``addmm`` with ``beta = 0``, so one path serves ``mm``,
``addmm``, ``bmm`` and ``scaled_mm``; and the in-place overload is not among ir-dispatch's aten
overrides, so it reaches the vendor kernel directly even while the overrides are installed.
"""

from __future__ import annotations

import torch

#: Rows per vendor GEMM call: a multiple of every SIMD width (16 fp32 / 32 bf16 lanes on
#: AVX-512). Fixed: changing it changes the bits (never the invariance). 32 balances decode
#: (M = 1 pays for 32 rows) against prefill (smaller chunks run MKL's slower small-M kernels).
GEMM_ROWS = 32

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)
)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_matrix(name: str, t: object, dims: int = 2) -> torch.Tensor:
    """``t`` as a ``dims``-D floating tensor, or a ``TypeError``/``ValueError`` naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        wanted = "/".join(_name(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must be {wanted}, got {_name(t.dtype)}")
    return t


def _check_product(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"a {tuple(a.shape)} and b {tuple(b.shape)} cannot be multiplied: "
            f"a has {a.shape[-1]} columns, b has {b.shape[-2]} rows"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must share a dtype, got {_name(a.dtype)} and {_name(b.dtype)}")


def chunked_addmm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    beta: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)`` with every vendor call on a ``[GEMM_ROWS, K]`` chunk.

    Batch-invariant: see the module docstring. ``bias`` enters the GEMM's own epilogue (it is
    copied into the chunk's output buffer first), so results round like ``torch.addmm``.
    Cost: ``ceil(M / GEMM_ROWS)`` vendor calls plus copies of ``a``, the output (and the bias).

    Args:
        a: ``[M, K]``, any strides.
        b: ``[K, N]``, same dtype as ``a``, any strides (the same tensor for every chunk).
        bias: broadcastable to ``[M, N]`` and of ``a``'s dtype; ignored when ``beta == 0``.
        beta: bias factor.
        alpha: product factor.

    Returns:
        ``[M, N]`` in ``a``'s dtype, contiguous.
    """
    check_matrix("a", a)
    check_matrix("b", b)
    _check_product(a, b)
    m, k = a.shape
    n = b.shape[1]
    full_bias: torch.Tensor | None = None
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != a.dtype:
            raise TypeError(f"bias must be {_name(a.dtype)} like a, got {_name(bias.dtype)}")
        try:
            full_bias = bias.expand(m, n)
        except RuntimeError:
            raise ValueError(
                f"bias of shape {tuple(bias.shape)} does not broadcast to the output [{m}, {n}]"
            ) from None
        if beta == 0:
            full_bias = None
    chunks = -(-m // GEMM_ROWS)
    padded = chunks * GEMM_ROWS
    a_pad = a.new_empty(padded, k)
    a_pad[:m].copy_(a)
    a_pad[m:].zero_()
    # [N, K] row-major whatever b's strides: BLAS picks kernels (and so rounding) by layout,
    # and the same values must give the same bits. Free for linear's b = weight.t().
    weight = b.t().contiguous()
    # acc[c] is chunk c's output transposed, [N, GEMM_ROWS] row-major: the rows sit on the
    # contiguous dimension, which BLAS kernels spread over SIMD lanes.
    acc = a.new_empty(chunks, n, GEMM_ROWS)
    if full_bias is not None:
        bias_pad = a.new_zeros(padded, n)
        bias_pad[:m].copy_(full_bias)
        acc.copy_(bias_pad.view(chunks, GEMM_ROWS, n).transpose(1, 2))
    for c in range(chunks):
        rows = a_pad[c * GEMM_ROWS : (c + 1) * GEMM_ROWS]
        acc[c].addmm_(weight, rows.t(), beta=0 if full_bias is None else beta, alpha=alpha)
    # Always a fresh contiguous [M, N]: a layout that followed M (a column-major view when one
    # chunk suffices) would make later element-wise ops take other vector paths per batch size.
    return acc.transpose(1, 2).reshape(padded, n)[:m].contiguous()


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch-invariant ``a [M, K] @ b [K, N]`` (see :func:`chunked_addmm`)."""
    return chunked_addmm(a, b)


def addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """Batch-invariant ``beta * bias + alpha * (a @ b)`` (see :func:`chunked_addmm`)."""
    return chunked_addmm(a, b, bias, beta, alpha)


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch-invariant ``a [B, M, K] @ b [B, K, N]``.

    Each of the ``B`` products runs through :func:`chunked_addmm` on its own, so an output row
    depends neither on the other products nor on ``M``. (``torch.bmm`` is not used: it may hand
    the batch to MKL's batched GEMM, whose work split follows ``B``.)
    """
    check_matrix("a", a, dims=3)
    check_matrix("b", b, dims=3)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same batch size, "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    _check_product(a, b)
    out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
    for i in range(a.shape[0]):
        out[i] = chunked_addmm(a[i], b[i])
    return out


def _scale(acc: torch.Tensor, scale: torch.Tensor, name: str, per_row: bool) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scale).__name__}")
    if scale.numel() == 1:
        return acc * scale.to(torch.float32).reshape(())
    size = acc.shape[0] if per_row else acc.shape[1]
    if scale.numel() != size:
        form = f"[{size}, 1]" if per_row else f"[1, {size}]"
        raise ValueError(
            f"{name} must have 1 or {size} elements ({form}), got {tuple(scale.shape)}"
        )
    shaped = (
        scale.to(torch.float32).reshape(-1, 1)
        if per_row
        else scale.to(torch.float32).reshape(1, -1)
    )
    return acc * shaped


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-invariant FP8 GEMM: exact fp32 dequantisation, :func:`mm`, then the scales.

    FP8 values are exactly representable in fp32, so dequantising loses nothing; the product is
    the fp32 :func:`chunked_addmm`; scales (per tensor, per token ``[M, 1]`` or per channel
    ``[1, N]``) and bias are element-wise afterwards, in the native reference's order.

    Args:
        a: ``[M, K]`` float8 (or float) activations.
        b: ``[K, N]`` float8 (or float) weights.
        scale_a: ``[1]``/``[]`` or ``[M, 1]`` float32.
        scale_b: ``[1]``/``[]`` or ``[1, N]`` float32.
        out_dtype: the output dtype.
        bias: optional ``[N]``.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FP8_DTYPES + FLOAT_DTYPES:
            raise TypeError(f"{name} must be float8 or floating, got {_name(t.dtype)}")
    acc = chunked_addmm(a.to(torch.float32), b.to(torch.float32))
    acc = _scale(acc, scale_a, "scale_a", per_row=True)
    acc = _scale(acc, scale_b, "scale_b", per_row=False)
    if bias is not None:
        acc = acc + bias.to(torch.float32)
    return acc.to(out_dtype)
