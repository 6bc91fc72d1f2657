"""Prefill steps in CUDA graphs: capture sizes up to 16384 tokens in batch-invariant mode.

vLLM captures piecewise CUDA graphs for steps of up to 512 tokens by default; a larger step (a
prefill) runs its ops from Python. The kit's ops are opaque to ``torch.compile``, so there each
pays its host cost (50-115 µs a call, against a few µs of GPU time at the 0.6B width), and the
0.6B prefill-heavy load ran at 0.49x of default vLLM on an H200. With capture sizes up to
16384 tokens it ran at 0.84x (2026-11-26, ``benchmarks/results/vllm_serving_graphs_h200.json``).

Padding a step to the next captured size keeps results bitwise: in batch-invariant mode a row
never depends on the rows beside it, padding rows included. So on CUDA the plugin adds
``PREFILL_SIZES`` to vLLM's default capture sizes when the user set neither
``cudagraph_capture_sizes`` nor ``max_cudagraph_capture_size`` (and not
``performance_mode="interactivity"``); vLLM itself drops sizes above
``max_num_batched_tokens``. ``VLLM_BI_PREFILL_GRAPHS=0`` keeps vLLM's sizes.

On every load (H200, 2026-11-26, ``benchmarks/results/vllm_serving_h200.json``), against the
plugin with vLLM's sizes: 0.6B prefill-heavy 0.84x vs 0.47x default, decode-heavy 1.10x vs
1.02x, but single-stream 1.02x vs 1.20x (not understood yet); at 8B the loads are level within
4%. Engine starts took 40 s vs 26 s (0.6B). The graphs' memory is not measured yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import _patch
from ._report import Report
from ._vllm_compat import SET_CUDAGRAPH_SIZES, vllm_config_class

ENV = "VLLM_BI_PREFILL_GRAPHS"
PLATFORMS = ("cuda",)
PREFILL_SIZES = (640, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
"""Geometric steps of about 1.5x: a step is padded by at most a third of its tokens."""
SMALL_MAX = 512


def default_small_sizes(max_size: int) -> list[int]:
    """The capture sizes vLLM 0.26 and 0.32 build by default, up to ``max_size``."""
    sizes = [s for s in (1, 2, 4) if s <= max_size]
    sizes += list(range(8, min(max_size + 1, 256), 8))
    sizes += list(range(256, max_size + 1, 16))
    return sorted(set(sizes))


def capture_sizes(
    max_num_seqs: int, max_num_batched_tokens: int, decode_query_len: int = 1
) -> list[int]:
    """The default sizes of vLLM for this engine, then ``PREFILL_SIZES`` up to the step budget.

    ``max_num_batched_tokens`` itself is included, so the largest step is captured too. Larger
    sizes are left out here: vLLM would drop them and warn that the user's sizes were overridden.
    """
    small = default_small_sizes(min(max_num_seqs * decode_query_len * 2, SMALL_MAX))
    small = [s for s in small if s <= max_num_batched_tokens] or [1]
    large = {s for s in PREFILL_SIZES if small[-1] < s <= max_num_batched_tokens}
    if max_num_batched_tokens > small[-1]:
        large.add(min(max_num_batched_tokens, PREFILL_SIZES[-1]))
    return sorted(set(small) | large)


def enabled() -> bool:
    """``VLLM_BI_PREFILL_GRAPHS`` is unset or not ``0`` (the default is on)."""
    return os.environ.get(ENV, "1").strip() != "0"


def _user_chose(vllm_config: Any) -> bool:
    compilation = vllm_config.compilation_config
    return (
        getattr(compilation, "cudagraph_capture_sizes", None) is not None
        or getattr(compilation, "max_cudagraph_capture_size", None) is not None
        or getattr(vllm_config, "performance_mode", "balanced") == "interactivity"
    )


def make_set_cudagraph_sizes(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``VllmConfig._set_cudagraph_sizes``: fill in the sizes first unless the user chose."""

    def _set_cudagraph_sizes(self: Any, *args: Any, **kwargs: Any) -> Any:
        if enabled() and not _user_chose(self):
            scheduler = self.scheduler_config
            spec = int(getattr(self, "num_speculative_tokens", 0) or 0)
            self.compilation_config.cudagraph_capture_sizes = capture_sizes(
                int(scheduler.max_num_seqs), int(scheduler.max_num_batched_tokens), 1 + spec
            )
        return original(self, *args, **kwargs)

    return _set_cudagraph_sizes


def install(platform: str, report: Report) -> None:
    """On CUDA, wrap vLLM's capture-size choice (see the module docstring); report it."""
    if platform not in PLATFORMS:
        return
    if not enabled():
        report.keep(f"CUDA-graph capture sizes ({ENV}=0: vLLM's, up to {SMALL_MAX} tokens)")
        return
    cls = vllm_config_class()
    if cls is None or not hasattr(cls, SET_CUDAGRAPH_SIZES):
        report.gap(
            f"VllmConfig.{SET_CUDAGRAPH_SIZES} not found: CUDA graphs keep vLLM's capture sizes"
        )
        return
    _patch.patch_attr(
        cls, SET_CUDAGRAPH_SIZES, make_set_cudagraph_sizes(getattr(cls, SET_CUDAGRAPH_SIZES))
    )
    report.replaced(
        f"CUDA-graph capture sizes (vLLM: up to {SMALL_MAX} tokens)",
        f"up to {PREFILL_SIZES[-1]} tokens when unset ({ENV}=0 keeps vLLM's)",
    )
