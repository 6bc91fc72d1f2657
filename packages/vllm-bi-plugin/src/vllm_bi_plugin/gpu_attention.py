"""Batch-invariant attention for vLLM's CUDA build: FLASH_ATTN running the kit's paged kernel.

vLLM's own batch-invariant mode runs FlashAttention with ``max_num_splits=1``: invariant, but a
decode step at small batch launches only as many programs as the batch has heads while it reads
the whole KV cache. The kit's ``paged_attention`` op (bi-triton-ascend's ``triton`` provider,
reached through ir-dispatch) walks each sequence's keys in the chunks of a fixed grid of
absolute positions (256-key chunks up to key 4096, 512-key chunks after) and folds the chunk
partials in chunk order, so a query row gets the same bits decoded or prefilled, with any
prompt chunking or cached prefix, alone or in any batch, while a long decode still spreads over
many programs.

This backend is vLLM's FLASH_ATTN with one change, the attention computation: it keeps
FLASH_ATTN's name, metadata builder, KV cache layout and cache write (``reshape_and_cache_flash``),
so the scheduler, prefix caching and chunked prefill see the backend they know.

Not supported, refused with an error when the layer is built or the batch arrives: ALiBi, logits
soft cap, attention sinks, a quantized (FP8) KV cache, fused output quantization, decode context
parallelism, head sizes above 256, multimodal prefix-LM ranges, R-SWA, per-sequence causal masks,
non-causal sliding windows, cross-attention and cascade attention (which vLLM's batch-invariant
mode turns off anyway).
Encoder attention (no KV cache) keeps FLASH_ATTN's own batch-invariant path (``num_splits=1``).

CUDA graphs: the builder declares ``AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE``, so with
vLLM's default ``FULL_AND_PIECEWISE`` a pure decode batch replays one FULL graph (attention
included) and mixed or prefill batches run piecewise graphs with attention eager between them.
What makes the forward capturable: it never syncs with the host (sizes come from the builder's
Python ints); for single-token batches, captured or warming up for a capture, the kit's split
grid and partial buffers are sized from the model's max length (:func:`split_bound`), so a graph
captured on one-key dummy requests is right when replayed on long sequences and its kernels
were loaded before the capture; and FULL-graph padding (requests with no keys, with or without
a query, stale block-table rows) reads no key and writes zeros for such a request's rows. Rows
of padded tokens that belong to no request are left unwritten, as FLASH_ATTN leaves them.

Importing this module imports vLLM; vLLM loads it by class path once the plugin registered it.
"""

from __future__ import annotations

from typing import Any

import torch

import ir_dispatch

from ._vllm_compat import ATTENTION_BASE_MODULE, FLASH_ATTN_MODULE, import_module

_flash_attn: Any = import_module(FLASH_ATTN_MODULE)
_attention_base: Any = import_module(ATTENTION_BASE_MODULE)
AttentionCGSupport: Any = _attention_base.AttentionCGSupport
AttentionType: Any = _attention_base.AttentionType

KIT_OP = "paged_attention"
KIT_MAX_HEAD_SIZE = 256
UNQUANTIZED_KV_CACHE = ("auto", "float16", "bfloat16")
ENCODER_TYPES = ("encoder", "encoder_only")
"""Attention types without a KV cache: FLASH_ATTN's own batch-invariant path serves them."""


class UnsupportedAttentionError(NotImplementedError):
    """A layer or batch needs a feature the kit's attention backend does not have."""


def _refuse(what: str) -> UnsupportedAttentionError:
    return UnsupportedAttentionError(
        f"vllm-bi-plugin's batch-invariant attention (VLLM_BI_ATTENTION=1) does not support "
        f"{what}; unset VLLM_BI_ATTENTION to use vLLM's own batch-invariant FLASH_ATTN"
    )


def unsupported_layer_features(
    *,
    attn_type: str,
    head_size: int,
    alibi_slopes: object,
    logits_soft_cap: float | None,
    kv_cache_dtype: str,
    sinks: object,
) -> list[str]:
    """What of a decoder layer's configuration the kit's kernel cannot run (empty: all of it)."""
    found = []
    if attn_type == "encoder_decoder":
        found.append("cross-attention (encoder-decoder models)")
    if head_size > KIT_MAX_HEAD_SIZE:
        found.append(f"head size {head_size} (at most {KIT_MAX_HEAD_SIZE})")
    if alibi_slopes is not None:
        found.append("ALiBi")
    if logits_soft_cap:
        found.append(f"logits soft cap {logits_soft_cap}")
    if kv_cache_dtype not in UNQUANTIZED_KV_CACHE:
        found.append(f"KV cache dtype {kv_cache_dtype!r} (needs one of {UNQUANTIZED_KV_CACHE})")
    if sinks is not None:
        found.append("attention sinks")
    return found


def kit_window(window: tuple[int, int] | None) -> int | None:
    """FLASH_ATTN's ``(left, right)`` window as the kit's key count (``None``: no window).

    FlashAttention's ``(w - 1, 0)`` lets a query see itself and ``w - 1`` keys before it; the
    kit's ``sliding_window`` counts the same ``w`` keys. ``(-1, -1)`` is no window.
    """
    if window is None or tuple(window) == (-1, -1):
        return None
    left, right = window
    if right != 0 or left < 0:
        raise _refuse(f"the sliding window {tuple(window)} (only causal (w - 1, 0) windows)")
    return int(left) + 1


def check_batch(metadata: Any) -> None:
    """Refuse a batch whose metadata asks for what the kernel cannot do (Python fields only)."""
    if metadata.use_cascade:
        raise _refuse("cascade attention")
    if isinstance(metadata.causal, torch.Tensor):
        raise _refuse("per-sequence causal masks")
    for name in ("mm_prefix_range_tensor", "rswa_prefix_lens"):
        if getattr(metadata, name, None) is not None:
            raise _refuse(f"{name} (multimodal prefix-LM / R-SWA)")


def split_kv_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLASH_ATTN's packed cache as the kit's ``[num_blocks, block_size, kv_heads, head]`` views.

    vLLM 0.26 keeps keys and values side by side in the last dimension of a logical
    ``[num_blocks, kv_heads, block_size, 2 * head]`` tensor (physically NHD or HND); the kernel
    takes any strides, so these are views, never copies.
    """
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


def kit_attention_op() -> Any:
    """ir-dispatch's ``paged_attention`` op with the kit's batch-invariant provider registered."""
    from bi_triton_ascend.attention import providers

    providers.register()  # idempotent; the plugin registered it already in this process
    return ir_dispatch.get_op(KIT_OP)


def graph_capturing(t: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on ``t``'s device (host-only query, no sync)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def split_bound(metadata: Any, capturing: bool) -> int:
    """The ``max_seq_len`` the kit sizes its split grid and partial buffers from.

    Single-token batches (what FULL graphs capture) and anything captured: at least the
    builder's static ``kit_max_seq_len`` (the model's max length). The grid frozen into a graph
    must cover every sequence it will replay, not only the one-key dummies it was captured on;
    and the eager warm-up vLLM runs before each capture (V1 model runner: with the dummies' own
    max of 1) must launch the very kernel variants the capture will, since a Triton kernel
    cannot be loaded while a graph is being captured. Prefill and mixed batches keep the step's
    own maximum (the builder's Python int; no sync either way). Same bits with either bound.
    """
    bound = int(metadata.max_seq_len)
    if capturing or metadata.max_query_len <= 1:
        bound = max(bound, int(getattr(metadata, "kit_max_seq_len", 0)))
    return bound


def paged_forward(
    op: Any,
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: Any,
    output: torch.Tensor,
    *,
    head_size: int,
    scale: float,
    default_window: tuple[int, int] | None,
) -> torch.Tensor:
    """One decoder attention call through the kit's kernel, written into ``output``.

    ``query_start_loc``, ``seq_lens`` and ``block_table`` come straight from FLASH_ATTN's
    metadata (prefill, decode and mixed batches alike); ``max_seq_len`` is :func:`split_bound`,
    an upper bound that sizes the kernel's split grid without a device sync.
    """
    check_batch(metadata)
    key_cache, value_cache = split_kv_cache(kv_cache, head_size)
    window = metadata.sliding_window if metadata.sliding_window is not None else default_window
    n = metadata.num_actual_tokens
    with ir_dispatch.batch_invariant():  # never the batch-variant native reference
        out = op.call_selected(
            query[:n],
            key_cache,
            value_cache,
            metadata.block_table,
            metadata.seq_lens,
            metadata.query_start_loc,
            scale,
            kit_window(window),
            bool(metadata.causal),
            split_bound(metadata, graph_capturing(query)),
        )
    output[:n].copy_(out.reshape(output[:n].shape))
    return output


class BatchInvariantFlashAttentionImpl(_flash_attn.FlashAttentionImpl):  # type: ignore[misc]
    """FLASH_ATTN's implementation with the decoder attention computed by the kit's kernel."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None = None,
        attn_type: Any = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        self.uses_kit_kernel = attn_type not in ENCODER_TYPES
        if self.uses_kit_kernel:
            found = unsupported_layer_features(
                attn_type=attn_type,
                head_size=head_size,
                alibi_slopes=alibi_slopes,
                logits_soft_cap=logits_soft_cap,
                kv_cache_dtype=kv_cache_dtype,
                sinks=sinks,
            )
            if found:
                raise _refuse(", ".join(found))
        super().__init__(
            num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
            kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, sinks,
        )  # fmt: skip
        if self.uses_kit_kernel:
            if getattr(self, "dcp_world_size", 1) > 1:
                raise _refuse("decode context parallelism")
            self.kit_op = kit_attention_op()

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: Any,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.uses_kit_kernel or attn_metadata is None:
            # Encoder attention, or the profiling run (FLASH_ATTN zero-fills the output).
            return super().forward(  # type: ignore[no-any-return]
                layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale, output_block_scale,
            )  # fmt: skip
        if output_scale is not None or output_block_scale is not None:
            raise _refuse("fused output quantization")
        return paged_forward(
            self.kit_op,
            query,
            kv_cache,
            attn_metadata,
            output,
            head_size=self.head_size,
            scale=self.scale,
            default_window=self.sliding_window,
        )


class BatchInvariantFlashAttentionMetadataBuilder(_flash_attn.FlashAttentionMetadataBuilder):  # type: ignore[misc]
    """FLASH_ATTN's builder, declaring FULL CUDA graphs for single-token decode batches.

    It also hands the forward the static bound that captured split grids are sized from (see
    the module docstring).
    """

    _cudagraph_support = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    @classmethod
    def get_cudagraph_support(cls, vllm_config: Any, kv_cache_spec: Any) -> Any:
        return cls._cudagraph_support

    def build(
        self, common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False
    ) -> Any:
        """FLASH_ATTN's metadata plus ``kit_max_seq_len``, the model's max length.

        No sequence is longer, so a graph captured with this bound is right at every replay.
        """
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata.kit_max_seq_len = int(self.model_config.max_model_len)
        return metadata

    def use_cascade_attention(self, *args: Any, **kwargs: Any) -> bool:
        return False


class BatchInvariantFlashAttentionBackend(_flash_attn.FlashAttentionBackend):  # type: ignore[misc]
    """vLLM's ``FLASH_ATTN`` backend with the kit's kernel (same name, layout and builder)."""

    @staticmethod
    def get_impl_cls() -> type[BatchInvariantFlashAttentionImpl]:
        return BatchInvariantFlashAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[BatchInvariantFlashAttentionMetadataBuilder]:
        return BatchInvariantFlashAttentionMetadataBuilder


CLASS_PATH = f"{__name__}.{BatchInvariantFlashAttentionBackend.__qualname__}"
