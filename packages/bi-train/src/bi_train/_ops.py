"""The ir-dispatch ops bi-train adds: RoPE, SiLU-and-mul and packed varlen attention.

ir-dispatch declares the reductions vLLM overrides (GEMMs, norms, softmax); a trainer also needs
the rotary embedding, the gated activation and attention. Declaring them as ir-dispatch ops,
rather than calling torch directly, puts them in :func:`ir_dispatch.recording` and
:func:`ir_dispatch.explain`, so a run can show which kernel served every op, and makes a
missing batch-invariant attention kernel an error in batch-invariant mode.

* ``rotary_embedding`` and ``silu_and_mul`` have no reduction, so their native implementations
  are batch-invariant everywhere; the natives follow vLLM's ``forward_native`` arithmetic.
* ``varlen_attention`` reduces over keys; its native reference is a per-sequence torch loop
  (batch-variant: the GEMM kernels follow the sequence's shape). Provider ``triton`` is
  ``bi_triton_ascend.attention.varlen_attention``, which walks keys in the fixed chunks of the
  paged decode kernel the plugin runs inside vLLM. On CPU, :mod:`bi_train._vllm_cpu` adds
  vLLM's own kernels (attention, RoPE) as provider ``vllm_cpu``.

An op that another package already declared under the same name is reused, not redeclared.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ir_dispatch import IrOp, UnknownOpError, get_op, register_op
from ir_dispatch.ops.linalg import GEMM_VARIANT_ON

TRITON = "triton"


def _declare(name: str, has_reduction: bool, native: Callable[..., Any], **kw: Any) -> IrOp:
    try:
        return get_op(name)
    except UnknownOpError:
        return register_op(name, has_reduction=has_reduction, **kw)(native)


def _rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style RoPE of ``x [T, H, D]`` with ``cos``/``sin`` ``[T, D/2]`` (x's dtype).

    vLLM's ``ApplyRotaryEmb.forward_static`` order: ``x1*cos - x2*sin``, ``x2*cos + x1*sin``,
    each product and sum rounded to ``x``'s dtype (what its eager native path and its CUDA
    ``rotary_embedding`` kernel, whose ``scalar_t`` operators round each step, compute).
    """
    c, s = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2`` (vLLM's SiluAndMul)."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def reference_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    causal: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Packed self-attention one sequence at a time in ``compute_dtype``; differentiable.

    Args:
        q: ``[T, H, D]``.
        k: ``[T, Hkv, D]`` (GQA: ``H`` a multiple of ``Hkv``).
        v: like ``k``.
        cu_seqlens: ``[num_seqs + 1]`` offsets of the sequences in the packed rows.
        scale: softmax scale.
        causal: queries see keys up to their own position only.
        compute_dtype: dtype of every intermediate.

    Returns:
        ``[T, H, D]`` in ``q``'s dtype.
    """
    group = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu_seqlens.tolist()
    for beg, end in itertools.pairwise(bounds):
        if end == beg:
            continue
        qs = q[beg:end].to(compute_dtype)
        ks = k[beg:end].to(compute_dtype).repeat_interleave(group, 1)
        vs = v[beg:end].to(compute_dtype).repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if causal:
            n = end - beg
            upper = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(upper, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, vs))
    if not outs:
        return q.new_zeros(q.shape)
    return torch.cat(outs, dim=0).to(q.dtype)


def _varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    causal: bool = True,
) -> torch.Tensor:
    """Causal self-attention of packed sequences ``q [T, H, D]``, ``k``/``v [T, Hkv, D]``.

    ``cu_seqlens [num_seqs + 1]`` int32 offsets; each sequence attends to itself only.
    """
    return reference_varlen_attention(q, k, v, cu_seqlens, scale, causal)


rotary_embedding = _declare("rotary_embedding", False, _rotary_embedding)
silu_and_mul = _declare("silu_and_mul", False, _silu_and_mul)
varlen_attention = _declare(
    "varlen_attention", True, _varlen_attention, native_variant_on=GEMM_VARIANT_ON
)


def _register_triton_attention() -> bool:
    """Register ``bi_triton_ascend``'s varlen kernel as provider ``triton`` (unless present)."""
    if any(impl.provider == TRITON for impl in varlen_attention.impls):
        return True
    try:
        from bi_triton_ascend import _platform
        from bi_triton_ascend.attention import api, config, providers
    except ImportError:  # bi-triton-ascend without its attention module: nothing to register
        return False
    if not providers.supported:
        return False

    def accepts(q: object, k: object, v: object, *args: object, **kwargs: object) -> bool | str:
        """bf16/fp16/fp32 ``q``/``k``/``v`` of one dtype, head size within the kernel's range."""
        if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
            return "q and k must be tensors"
        if q.dtype not in config.SUPPORTED_DTYPES or k.dtype != q.dtype:
            return f"dtypes {q.dtype}/{k.dtype}: needs one of bf16, fp16, fp32"
        if q.dim() != 3 or q.shape[-1] > config.MAX_HEAD_SIZE:
            return f"q shape {tuple(q.shape)}: needs [T, H, D] with D <= {config.MAX_HEAD_SIZE}"
        return _platform.device_supported(q)

    def triton_varlen(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        scale: float,
        causal: bool = True,
    ) -> torch.Tensor:
        return api.varlen_attention(q, k, v, cu_seqlens, causal=causal, scale=scale)

    varlen_attention.register_impl(
        TRITON,
        batch_invariant=True,
        platforms=_platform.supported_platforms(),
        supports_args=accepts,
        note=providers.NOTE,
    )(triton_varlen)
    return True


triton_attention_registered: bool = _register_triton_attention()

FP32_ROPE = "fp32"


def fp32_rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style RoPE computed in fp32 and rounded to ``x``'s dtype once.

    What vLLM runs on GPUs: its CUDA ``rotary_embedding`` kernel (eager) reads bf16/fp16 values
    into fp32 and rounds each output once, and Inductor lowers the native RoPE of a compiled
    vLLM the same way. Measured on an H200 with vLLM 0.26: 0 of 614400 outputs differ from the
    CUDA kernel, against 165287 for the per-op rounding of the native reference.
    """
    c, s = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    x1, x2 = torch.chunk(x.float(), 2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def _register_fp32_rope() -> None:
    """``rotary_embedding`` provider ``fp32`` on CUDA and ROCm (vLLM's GPU arithmetic)."""
    if not any(impl.provider == FP32_ROPE for impl in rotary_embedding.impls):
        rotary_embedding.register_impl(
            FP32_ROPE,
            batch_invariant=True,
            platforms=["cuda", "rocm"],
            priority=10,
            note="fp32 arithmetic, one rounding (vLLM's CUDA kernel and Inductor); no reduction",
        )(fp32_rotary_embedding)


_register_fp32_rope()

# ------------------------------------------------------------------ compiled vLLM's arithmetic
FP32_ACT = "fp32"
_compiled_rollout: list[bool] = [False]


@contextmanager
def vllm_compiled(on: bool = True) -> Iterator[None]:
    """Score as a *compiled* vLLM engine (torch.compile, vLLM's default) computes.

    An eager engine runs vLLM's CUDA ``silu_and_mul`` kernel, which rounds ``silu(gate)`` to the
    model dtype before the multiply (bi-train's native form). A compiled engine lowers vLLM's
    native ``SiluAndMul`` through Inductor, which computes ``silu(gate) * up`` in fp32 and rounds
    once (Inductor on CPU: 0 of 196608 outputs differ from that, 52840 from the eager form).
    Inside this block ``silu_and_mul`` takes the ``fp32`` provider. RoPE needs nothing: the eager
    CUDA kernel and Inductor both round once in fp32 (provider ``fp32`` on GPUs already).
    """
    if not isinstance(on, bool):
        raise TypeError(f"vllm_compiled: on must be a bool, got {type(on).__name__}")
    previous = _compiled_rollout[0]
    _compiled_rollout[0] = on
    try:
        yield
    finally:
        _compiled_rollout[0] = previous


def is_vllm_compiled() -> bool:
    """Whether :func:`vllm_compiled` is on."""
    return _compiled_rollout[0]


def fp32_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in fp32, rounded once to ``x``'s dtype (Inductor's lowering)."""
    d = x.shape[-1] // 2
    return (F.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


def _register_fp32_silu() -> None:
    """``silu_and_mul`` provider ``fp32``, taken only inside :func:`vllm_compiled`."""

    def accepts(*args: object, **kwargs: object) -> bool | str:
        return _compiled_rollout[0] or "only inside bi_train.vllm_compiled() (a compiled rollout)"

    if not any(impl.provider == FP32_ACT for impl in silu_and_mul.impls):
        silu_and_mul.register_impl(
            FP32_ACT,
            batch_invariant=True,
            supports_args=accepts,
            priority=30,
            note="fp32 arithmetic, one rounding (Inductor's lowering in a compiled vLLM)",
        )(fp32_silu_and_mul)


_register_fp32_silu()
