"""Run a ``transformers`` Qwen3 on vLLM's kernels, in vLLM's arithmetic order, with backward.

No fork of the model: the module tree, weights, ``state_dict`` and optimizer stay
``transformers``'. Two hooks:

* **Attention** goes through ``transformers``' own extension point: ``"bi_varlen"`` is
  registered with ``AttentionInterface``
  (:func:`bi_train.attention.register_transformers_attention`) and set as the model's
  attention implementation.
* **Everything else** is an instance-level ``forward`` replacement (``module.forward = ...`` on
  this model's modules only; classes and ``transformers`` source untouched; undone on exit).
  ``transformers``' kernel hub mapping (``use_kernel_forward_from_hub``) would cover RMSNorm and
  ``apply_rotary_pos_emb`` but needs the ``kernels`` package and cannot carry vLLM's residual
  stream, which is why instance forwards are used:

  - ``Qwen3Model``: drops padding / unpacks packed rows (:mod:`bi_train.layout`), then runs the
    decoder layers on ``[T, hidden]`` rows like vLLM's ``Qwen3DecoderLayer``: the residual
    travels beside the hidden state and each norm after the first is
    ``fused_add_rms_norm(x, residual)`` (the fp32 sum is normalised, its bf16 rounding is the
    next residual), then puts the padding back (zeros).
  - ``Qwen3Attention``: merged QKV projection (vLLM's ``QKVParallelLinear``; the GEMM's
    reduction chain may depend on N), per-head q/k RMSNorm, vLLM's RoPE table and order, the
    registered attention function over packed ``cu_seqlens``, ``o_proj``.
  - ``Qwen3MLP``: merged gate/up projection, :func:`bi_train.silu_and_mul`, ``down_proj``.
  - ``Qwen3RMSNorm`` and every ``nn.Linear`` (``lm_head`` included): :func:`bi_train.rms_norm`
    / :func:`bi_train.fused_add_rms_norm` / :func:`bi_train.linear`.

Scope: scoring and training (no KV cache, no generation), default RoPE, SiLU MLP, no sliding
window, no gradient checkpointing yet.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .attention import ATTN_IMPLEMENTATION, register_transformers_attention
from .autograd import fused_add_rms_norm, linear, rms_norm
from .elementwise import cos_sin_cache, rotary_embedding, silu_and_mul
from .layout import PackedLayout, packed_layout

_SUPPORTED_MODELS = ("Qwen3ForCausalLM", "Qwen3Model")


class Qwen3Patch:
    """The hooks on one model; :meth:`remove` restores every replaced ``forward``.

    Use :func:`patch_qwen3` (a context manager) or :func:`apply_qwen3_hooks`.
    """

    def __init__(self, model: nn.Module) -> None:
        name = type(model).__name__
        if name not in _SUPPORTED_MODELS:
            raise TypeError(f"model must be one of {_SUPPORTED_MODELS}, got {name}")
        self.model = model
        self.backbone: Any = model.model if name == "Qwen3ForCausalLM" else model
        self.config: Any = model.config
        _check_config(self.config)
        self._saved: list[tuple[nn.Module, Any]] = []
        self._previous_attn: str | None = None
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.active = False

    # ---------------------------------------------------------------- install / remove
    def apply(self) -> Qwen3Patch:
        """Register the attention function and replace the forwards (idempotent)."""
        if self.active:
            return self
        register_transformers_attention()
        self._previous_attn = self.config._attn_implementation
        _set_attn_implementation(self.model, ATTN_IMPLEMENTATION)
        self._replace(self.backbone, _backbone_forward)
        for layer in self.backbone.layers:
            self._replace(layer, _layer_forward)
            self._replace(layer.self_attn, _attention_forward)
            self._replace(layer.mlp, _mlp_forward)
        for module in self.model.modules():
            if type(module).__name__ == "Qwen3RMSNorm":
                self._replace(module, _norm_forward)
            elif isinstance(module, nn.Linear):
                self._replace(module, _linear_forward)
        self.active = True
        return self

    def remove(self) -> None:
        """Undo :meth:`apply`: original forwards and attention implementation back."""
        for module, original in reversed(self._saved):
            module.__dict__.pop("_bi_patch", None)
            if original is None:
                del module.forward
            else:
                module.forward = original
        self._saved.clear()
        if self._previous_attn is not None:
            _set_attn_implementation(self.model, self._previous_attn)
        self.active = False

    def _replace(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._saved.append((module, module.__dict__.get("forward")))
        module.forward = types.MethodType(fn, module)  # type: ignore[method-assign]
        module._bi_patch = self  # type: ignore[assignment]

    def rope_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The vLLM cos/sin table of this model, built once per device and dtype."""
        key = (device, dtype)
        if key not in self._tables:
            cfg = self.config
            self._tables[key] = cos_sin_cache(
                _head_dim(cfg), cfg.max_position_embeddings, _rope_theta(cfg),
                dtype=dtype, device=device,
            )  # fmt: skip
        return self._tables[key]


def apply_qwen3_hooks(model: nn.Module) -> Qwen3Patch:
    """Install the hooks on ``model`` until ``.remove()`` is called on the returned patch."""
    return Qwen3Patch(model).apply()


@contextmanager
def patch_qwen3(model: nn.Module) -> Iterator[Qwen3Patch]:
    """Run ``model`` (a ``transformers`` Qwen3) on bi-train's ops inside the block.

    Combine with ``batch_invariant()`` to get the batch-invariant kernels::

        with bi_train.patch_qwen3(model), bi_train.batch_invariant():
            logits = model(input_ids, attention_mask=mask).logits

    Outside ``batch_invariant()`` the same ops dispatch to torch's default kernels.
    """
    patch = Qwen3Patch(model).apply()
    try:
        yield patch
    finally:
        patch.remove()


# -------------------------------------------------------------------- configuration checks
def _head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise ValueError("config has no rope_theta (rope_parameters['rope_theta'])")
    return float(theta)


def _check_config(cfg: Any) -> None:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"only the default RoPE is supported, got rope_type={rope_type!r}")
    if cfg.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {cfg.hidden_act!r}")
    if getattr(cfg, "use_sliding_window", False):
        raise ValueError("sliding-window attention is not supported yet (use_sliding_window)")


def _set_attn_implementation(model: Any, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    if model.config._attn_implementation != name:
        model.config._attn_implementation = name


# -------------------------------------------------------------------- replacement forwards
def _linear_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def _norm_forward(self: Any, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
    if residual is None:
        return rms_norm(x, self.weight, self.variance_epsilon)
    return fused_add_rms_norm(x, residual, self.weight, self.variance_epsilon)


def _merged(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weights: list[torch.Tensor] = [m.weight for m in layers]
    weight = torch.cat(weights)
    if all(m.bias is None for m in layers):
        return weight, None
    biases: list[torch.Tensor] = [
        m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in layers
    ]
    return weight, torch.cat(biases)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    weight, bias = _merged([self.gate_proj, self.up_proj])
    return self.down_proj(silu_and_mul(linear(x, weight, bias)))  # type: ignore[no-any-return]


def _attention_forward(
    self: Any, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cfg, t, d = self.config, x.shape[0], self.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    weight, bias = _merged([self.q_proj, self.k_proj, self.v_proj])
    q, k, v = linear(x, weight, bias).split([nq * d, nkv * d, nkv * d], dim=-1)
    q = self.q_norm(q.reshape(t, nq, d))
    k = self.k_norm(k.reshape(t, nkv, d))
    table = self._bi_patch.rope_table(x.device, q.dtype)
    q, k = rotary_embedding(q, positions, table), rotary_embedding(k, positions, table)
    attend = ALL_ATTENTION_FUNCTIONS[cfg._attn_implementation]
    out, _ = attend(
        self,
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.reshape(t, nkv, d).transpose(0, 1).unsqueeze(0),
        None,
        scaling=self.scaling,
        dropout=0.0,
        cu_seq_lens_q=cu_seqlens,
        cu_seq_lens_k=cu_seqlens,
    )
    return self.o_proj(out.reshape(t, nq * d))  # type: ignore[no-any-return]


def _layer_forward(
    self: Any,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is None:
        residual = hidden
        hidden = self.input_layernorm(hidden)
    else:
        hidden, residual = self.input_layernorm(hidden, residual)
    hidden = self.self_attn(hidden, positions, cu_seqlens)
    hidden, residual = self.post_attention_layernorm(hidden, residual)
    return self.mlp(hidden), residual


def _backbone_forward(
    self: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    use_cache: bool | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    if cache is not None or past_key_values is not None or use_cache:
        raise ValueError("patch_qwen3 scores whole sequences: pass no cache and use_cache=False")
    for flag in ("output_hidden_states", "output_attentions"):
        if kwargs.get(flag):
            raise ValueError(f"patch_qwen3 does not support {flag}=True")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if any(getattr(layer, "gradient_checkpointing", False) for layer in self.layers):
        raise ValueError("patch_qwen3 does not support gradient checkpointing yet")
    embeds = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    layout: PackedLayout = packed_layout(
        embeds.shape[0], embeds.shape[1], attention_mask, position_ids, embeds.device
    )
    hidden, residual = layout.pack(embeds), None
    for layer in self.layers[: self.config.num_hidden_layers]:
        hidden, residual = layer(hidden, residual, layout.positions, layout.cu_seqlens)
    hidden = self.norm(hidden) if residual is None else self.norm(hidden, residual)[0]
    return BaseModelOutputWithPast(last_hidden_state=layout.unpack(hidden))
