"""vLLM's CPU kernels as ir-dispatch providers ``vllm_cpu``, for scoring CPU rollouts bitwise.

On CPU the plugin leaves two of vLLM's own kernels in place, and their arithmetic is not the
torch reference's: attention (``cpu_attention_with_kv_cache``, which the plugin runs one query
token per request, see :mod:`vllm_bi_plugin.cpu_attention`) and RoPE (``rotary_embedding``,
which computes in fp32 and rounds once, where the GPU kernel rounds every step). A trainer that
must reproduce a CPU rollout bit for bit therefore calls the same kernels, by import:

* ``varlen_attention`` -> :func:`vllm_bi_plugin.cpu_attention.varlen_attention`;
* ``rotary_embedding`` -> ``vllm._custom_ops.rotary_embedding`` (what vLLM's
  ``RotaryEmbedding.forward_cpu`` calls).

They are registered only where ``vllm`` and ``vllm_bi_plugin`` are installed, for CPU tensors,
above the other providers; vLLM is imported on the first call (it is slow to import), and a
non-CPU build of vLLM declines there.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from . import _ops

VLLM_CPU = "vllm_cpu"
PRIORITY = 20
"""Above the default 10 (the Triton interpreter): on CPU, run the kernels a CPU rollout ran."""


@functools.cache
def _import(name: str) -> ModuleType | str:
    """The module, or why it does not import (a GPU build of vLLM, a broken install)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:
        return f"{name} does not import: {exc}"


def _cpu_check(module: str) -> Callable[..., bool | str]:
    def accepts(x: object, *args: object, **kwargs: object) -> bool | str:
        """CPU tensors only, and vLLM's CPU build importable."""
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            return "needs CPU tensors"
        loaded = _import(module)
        return loaded if isinstance(loaded, str) else True

    return accepts


def _loaded(name: str) -> Any:
    module = _import(name)
    if isinstance(module, str):
        raise RuntimeError(module)
    return module


def vllm_cpu_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    causal: bool = True,
) -> torch.Tensor:
    """``varlen_attention`` through the plugin's CPU attention (causal only)."""
    if not causal:
        raise ValueError("vLLM's CPU attention provider is causal only")
    kernel = _loaded("vllm_bi_plugin.cpu_attention").varlen_attention
    return kernel(q, k, v, cu_seqlens, scale)  # type: ignore[no-any-return]


def vllm_cpu_rotary_embedding(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """``rotary_embedding`` (neox style) through vLLM's CPU kernel, out of place.

    The op passes each row's ``cos``/``sin`` ``[T, D/2]``; the kernel takes a table and
    positions, so row ``i`` reads table row ``i``.
    """
    t, heads, dim = x.shape
    table = torch.cat((cos, sin), dim=-1).to(x.dtype).contiguous()
    positions = torch.arange(t, device=x.device)
    out = x.reshape(t, heads * dim).clone()
    _loaded("vllm._custom_ops").rotary_embedding(positions, out, None, dim, table, True)
    return out.reshape(t, heads, dim)


def register() -> bool:
    """Register both providers (idempotent); ``False`` where vLLM or the plugin is missing."""
    if any(importlib.util.find_spec(m) is None for m in ("vllm", "vllm_bi_plugin")):
        return False
    for op, fn, module, note in (
        (_ops.varlen_attention, vllm_cpu_varlen_attention, "vllm_bi_plugin.cpu_attention",
         "vLLM's CPU attention kernel, one single-query request per token, KV never split"),
        (_ops.rotary_embedding, vllm_cpu_rotary_embedding, "vllm._custom_ops",
         "vLLM's CPU RoPE kernel (fp32, one rounding); no reduction"),
    ):  # fmt: skip
        if not any(impl.provider == VLLM_CPU for impl in op.impls):
            op.register_impl(
                VLLM_CPU,
                batch_invariant=True,
                platforms=["cpu"],
                supports_args=_cpu_check(module),
                priority=PRIORITY,
                note=note,
            )(fn)
    return True


registered: bool = register()
