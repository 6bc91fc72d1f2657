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

_CUSTOM_OPS_SRC = """
def cutlass_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias=None):
    return "vllm-cutlass"
"""


def write_tree(root: Path, layout: str) -> Path:
    """Write a fake ``vllm`` package of ``layout`` (``"0.26"`` or ``"0.32"``) under ``root``."""
    bi_path = BI_PATHS[layout]
    bi_module = bi_path[:-3].replace("/", ".")
    files = {
        bi_path: _BI_SRC + f"\nPATCHES_TORCH_BMM = {layout == '0.26'}\n",
        "vllm/model_executor/layers/linear.py": f"from {bi_module} import linear_batch_invariant\n",
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
