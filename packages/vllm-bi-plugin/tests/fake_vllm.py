"""A tiny stand-in for vLLM's module tree: only the names the plugin touches, per layout.

Both layouts are written from the plugin's view of them (``_vllm_compat``), so these tests check
that the hooks do what they claim on each layout without installing either vLLM.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

BI_PATHS = {
    "0.26": "vllm/model_executor/layers/batch_invariant.py",
    "0.32": "vllm/model_executor/determinism/batch_invariant.py",
}

_BI_SRC = """
import torch

CALLS = []
_batch_invariant_MODE = False


def linear_batch_invariant(input, weight, bias=None):
    return "vllm-linear"


def rms_norm_batch_invariant(input, weight, eps=1e-6, residual=None):
    return "vllm-rms"


def vllm_bmm(a, b):
    return "vllm-bmm"


def enable_batch_invariant_mode():
    global _batch_invariant_MODE
    CALLS.append("enable")
    _batch_invariant_MODE = True
    if PATCHES_TORCH_BMM:
        torch.bmm = vllm_bmm


def init_batch_invariance():
    enable_batch_invariant_mode()
"""

_REGISTRY_SRC = """
import enum

_ATTN_OVERRIDES = {}


class AttentionBackendEnum(enum.Enum):
    CPU_ATTN = "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend"
    FLASH_ATTN = "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"

    def get_path(self):
        return _ATTN_OVERRIDES.get(self, self.value)

    def clear_override(self):
        _ATTN_OVERRIDES.pop(self, None)


def register_backend(backend, class_path=None):
    _ATTN_OVERRIDES[backend] = class_path
    return lambda cls: cls
"""

_IR_OPS_SRC = """
class IrOp:
    def __init__(self, name):
        self.name = name
        self.impls = {"native": None}

    def register_impl(self, provider, *, supported=True, supports_args=None, inplace=False):
        def deco(fn):
            self.impls[provider] = (fn, supported, supports_args)
            return fn
        return deco


rms_norm = IrOp("rms_norm")
fused_add_rms_norm = IrOp("fused_add_rms_norm")
"""

_PLATFORMS_SRC = """
import os
from types import SimpleNamespace


class FakePlatform:
    device_type = os.environ.get("FAKE_VLLM_PLATFORM", "cpu")

    def is_cuda(self):
        return self.device_type == "cuda"

    def is_rocm(self):
        return False

    def is_xpu(self):
        return False

    def is_cpu(self):
        return self.device_type == "cpu"

    @classmethod
    def get_default_ir_op_priority(cls, vllm_config):
        return SimpleNamespace(rms_norm=["native"], fused_add_rms_norm=["native"])


current_platform = FakePlatform()
"""

_UTILS_SRC = """
def dispatch_cpu_unquantized_gemm(layer, remove_weight):
    layer.cpu_linear = "vllm"
"""

_LINEAR_SRC = """
import torch

from vllm.distributed.parallel_state import get_tp_group


class UnquantizedLinearMethod:
    def apply(self, layer, x, bias=None):
        return torch.nn.functional.linear(x, layer.weight, bias)


class RowParallelLinear(torch.nn.Module):
    \"\"\"vLLM's forward (0.26 and 0.32 alike) over a given rank's weight shard.\"\"\"

    def __init__(self, weight, bias=None, *, tp_rank=0, tp_size=1, input_is_parallel=True,
                 reduce_results=True, skip_bias_add=False, return_bias=False):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.input_is_parallel, self.reduce_results = input_is_parallel, reduce_results
        self.skip_bias_add, self.return_bias = skip_bias_add, return_bias
        self.quant_method = UnquantizedLinearMethod()

    def forward(self, input_):
        if self.input_is_parallel:
            input_parallel = input_
        else:
            input_parallel = torch.chunk(input_, self.tp_size, dim=-1)[self.tp_rank].contiguous()
        bias_ = None if (self.tp_rank > 0 or self.skip_bias_add) else self.bias
        output = self.quant_method.apply(self, input_parallel, bias_)
        if self.reduce_results and self.tp_size > 1:
            output = get_tp_group().all_reduce(output)
        if not self.return_bias:
            return output
        return output, (self.bias if self.skip_bias_add else None)
"""

_PARALLEL_STATE_SRC = """
TP_GROUP = None  # tests put a group with all_gather/all_reduce here


def get_tp_group():
    return TP_GROUP
"""

_CUSTOM_OPS_SRC = """
def cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias=None):
    return "vllm-cutlass"
"""

_ATTENTION_BASE_SRC = """
import enum


class AttentionType(str, enum.Enum):
    DECODER = "decoder"
    ENCODER = "encoder"
    ENCODER_ONLY = "encoder_only"
    ENCODER_DECODER = "encoder_decoder"


class AttentionCGSupport(enum.Enum):
    ALWAYS = 3
    UNIFORM_BATCH = 2
    UNIFORM_SINGLE_TOKEN_DECODE = 1
    NEVER = 0
"""

# vLLM 0.26's FLASH_ATTN as far as the plugin's subclass relies on it: the Impl's constructor
# attributes (FlashAttention's (w - 1, 0) window), forward signature and the builder's flags.
_FLASH_ATTN_SRC = """
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType

CALLS = []


class FlashAttentionImpl:
    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes,
                 sliding_window, kv_cache_dtype, logits_soft_cap=None,
                 attn_type=AttentionType.DECODER, kv_sharing_target_layer_name=None,
                 sinks=None):
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.sliding_window = (-1, -1) if sliding_window is None else (sliding_window - 1, 0)
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.dcp_world_size = 1

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        CALLS.append("vllm-flash-attn")
        return output.fill_(0)


class FlashAttentionMetadataBuilder:
    _cudagraph_support = AttentionCGSupport.UNIFORM_BATCH

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec):
        return cls._cudagraph_support

    def use_cascade_attention(self, *args, **kwargs):
        return True


class FlashAttentionBackend:
    @staticmethod
    def get_name():
        return "FLASH_ATTN"

    @staticmethod
    def get_impl_cls():
        return FlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return FlashAttentionMetadataBuilder
"""

# vllm.config.vllm (0.26 and 0.32 alike): per -O level defaults, a value or f(config), applied by
# VllmConfig only to fields the user left None; fuse_allreduce_rms on at O2/O3 when TP > 1.
_CONFIG_SRC = """
import enum
from types import SimpleNamespace


class OptimizationLevel(enum.IntEnum):
    O0 = 0
    O1 = 1
    O2 = 2
    O3 = 3


def enable_allreduce_rms_fusion(cfg):
    return cfg.parallel_config.tensor_parallel_size > 1


def _level(allreduce_rms):
    passes = {"fuse_norm_quant": False, "fuse_allreduce_rms": allreduce_rms}
    return {"compilation_config": {"pass_config": passes, "cudagraph_mode": None}}


OPTIMIZATION_LEVEL_TO_CONFIG = {
    OptimizationLevel.O0: _level(False),
    OptimizationLevel.O1: _level(False),
    OptimizationLevel.O2: _level(enable_allreduce_rms_fusion),
    OptimizationLevel.O3: _level(enable_allreduce_rms_fusion),
}


class VllmConfig:
    def __init__(self, tensor_parallel_size=1, optimization_level=2, pass_config=None,
                 cudagraph_capture_sizes=None, max_cudagraph_capture_size=None,
                 max_num_batched_tokens=8192, max_num_seqs=256, performance_mode="balanced"):
        passes = {"fuse_norm_quant": None, "fuse_allreduce_rms": None, **(pass_config or {})}
        self.parallel_config = SimpleNamespace(tensor_parallel_size=tensor_parallel_size)
        self.compilation_config = SimpleNamespace(
            pass_config=SimpleNamespace(**passes), cudagraph_mode=None,
            cudagraph_capture_sizes=cudagraph_capture_sizes,
            max_cudagraph_capture_size=max_cudagraph_capture_size,
        )
        self.scheduler_config = SimpleNamespace(
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
        )
        self.performance_mode = performance_mode
        self.num_speculative_tokens = 0
        level = OptimizationLevel(optimization_level)
        self._apply_optimization_level_defaults(OPTIMIZATION_LEVEL_TO_CONFIG[level])
        self._set_cudagraph_sizes()

    def _set_cudagraph_sizes(self):
        # vLLM 0.26's logic, reduced: given sizes are filtered by max_num_batched_tokens,
        # else the default list up to min(max_num_seqs * 2, 512).
        cc, tokens = self.compilation_config, self.scheduler_config.max_num_batched_tokens
        top = cc.max_cudagraph_capture_size
        if top is None:
            top = min(self.scheduler_config.max_num_seqs * 2, 512)
        top = min(top, tokens)
        if cc.cudagraph_capture_sizes is not None:
            sizes = sorted(s for s in set(cc.cudagraph_capture_sizes) if s <= tokens)
        else:
            sizes = [s for s in (1, 2, 4) if s <= top] + list(range(8, min(top + 1, 256), 8))
            sizes = sorted(set(sizes + list(range(256, top + 1, 16))))
        cc.cudagraph_capture_sizes = sizes
        cc.max_cudagraph_capture_size = sizes[-1]

    def _apply_optimization_level_defaults(self, defaults):
        def apply(obj, values):
            for key, value in values.items():
                current = getattr(obj, key)
                if isinstance(value, dict):
                    apply(current, value)
                elif current is None:
                    setattr(obj, key, value(self) if callable(value) else value)

        apply(self, defaults)
"""


# The GPU model runner's logprob kernel (vLLM 0.26's V2 runner): the plugin replaces the
# module function; compute_topk_scores looks it up at call time, as vLLM's does.
_LOGPROB_SRC = """
import torch

CALLS = []


def compute_token_logprobs(logits, token_ids):
    CALLS.append("vllm")
    return torch.log_softmax(logits.float(), -1).gather(-1, token_ids.long())


def compute_topk_scores(logits, sampled_token_ids):
    return compute_token_logprobs(logits, sampled_token_ids.unsqueeze(-1))
"""


_QWEN3_SRC = """
class Qwen3Attention:
    def forward(self, positions, hidden_states):
        raise NotImplementedError("fake vLLM")
"""

_ROTARY_SRC = """
class RotaryEmbedding:
    pass
"""


def write_tree(root: Path, layout: str) -> Path:
    """Write a fake ``vllm`` package of ``layout`` (``"0.26"`` or ``"0.32"``) under ``root``."""
    bi_path = BI_PATHS[layout]
    bi_module = bi_path[:-3].replace("/", ".")
    files = {
        bi_path: _BI_SRC + f"\nPATCHES_TORCH_BMM = {layout == '0.26'}\n",
        "vllm/model_executor/layers/linear.py": (
            f"from {bi_module} import linear_batch_invariant\n" + _LINEAR_SRC
        ),
        "vllm/distributed/parallel_state.py": _PARALLEL_STATE_SRC,
        "vllm/model_executor/layers/vocab_parallel_embedding.py": (
            f"from {bi_module} import linear_batch_invariant\n"
        ),
        "vllm/model_executor/layers/layernorm.py": (
            f"from {bi_module} import rms_norm_batch_invariant\n"
        ),
        "vllm/model_executor/layers/utils.py": _UTILS_SRC,
        "vllm/v1/attention/backends/registry.py": _REGISTRY_SRC,
        "vllm/ir/ops/__init__.py": _IR_OPS_SRC,
        "vllm/platforms/__init__.py": _PLATFORMS_SRC,
        "vllm/_custom_ops.py": _CUSTOM_OPS_SRC,
        "vllm/v1/attention/backend.py": _ATTENTION_BASE_SRC,
        "vllm/v1/attention/backends/flash_attn.py": _FLASH_ATTN_SRC,
        "vllm/config/vllm.py": _CONFIG_SRC,
        "vllm/v1/worker/gpu/sample/logprob.py": _LOGPROB_SRC,
        # What the q/k norm + RoPE fusion patches (only where a qk_norm_rope kernel is
        # registered: the real bi-triton-ascend provider may be, whatever ran before).
        "vllm/model_executor/models/qwen3.py": _QWEN3_SRC,
        "vllm/model_executor/layers/rotary_embedding/base.py": _ROTARY_SRC,
    }
    for rel, src in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    for d in [p for p in root.rglob("*") if p.is_dir()]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text("")
    return root
