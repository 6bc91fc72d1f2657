"""How to start vLLM in each of the three modes the GPU tests and benchmarks compare.

``default``
    ``VLLM_BATCH_INVARIANT`` unset: vLLM as shipped (batch-variant).
``vllm-bi``
    ``VLLM_BATCH_INVARIANT=1`` with every plugin kept out (``VLLM_PLUGINS`` names none):
    vLLM's own batch-invariant mode.
``plugin``
    ``VLLM_BATCH_INVARIANT=1`` with vllm-bi-plugin loaded (through its entry point when it is
    installed with metadata, else by :func:`vllm_bi_plugin.register` in the child process).

One module so that the end-to-end tests, the serving benchmark and the tensor-parallel runs
start their engines the same way.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping

MODES: tuple[str, ...] = ("default", "vllm-bi", "plugin")

PLUGIN_ENTRY = "vllm_bi_plugin.plugin:register"

GPU_ENV: dict[str, str] = {
    # The engine in the calling process: a multi-process start stalled on a fresh lent machine.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # Otherwise FlashInfer's sampling kernels are JIT-built with nvcc during warm-up (minutes).
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    # The lent machines have no network: keep every rendezvous on loopback.
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "NCCL_SOCKET_IFNAME": "lo",
}
"""Settings that keep engine starts short on the lent GPU machine (``shared/gpu-vllm``)."""


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`MODES`.

    Raises:
        ValueError: naming the argument and the modes there are.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a mode; expected one of {', '.join(MODES)}")
    return mode


def mode_env(mode: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process that runs vLLM in ``mode``.

    Args:
        mode: one of :data:`MODES`.
        base: the environment to start from (default: this process's), with :data:`GPU_ENV`
            laid over it.
    """
    check_mode(mode)
    env = {**(os.environ if base is None else base), **GPU_ENV}
    env.pop("VLLM_BATCH_INVARIANT", None)
    env.pop("VLLM_PLUGINS", None)
    if mode in ("vllm-bi", "plugin"):
        env["VLLM_BATCH_INVARIANT"] = "1"
    if mode == "vllm-bi":
        env["VLLM_PLUGINS"] = "none"  # an allowlist naming no installed plugin
    return env


def plugin_has_entry_point() -> bool:
    """Whether vLLM can find the plugin through installed package metadata."""
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    return any(ep.value == PLUGIN_ENTRY for ep in eps)


def needs_register_in_child(mode: str) -> bool:
    """Whether a ``plugin``-mode child must call ``register()`` itself (no entry point here)."""
    return check_mode(mode) == "plugin" and not plugin_has_entry_point()
