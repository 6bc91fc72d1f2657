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
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------- tensor parallelism (TP > 1)

TP_ENV: dict[str, str] = {
    # TP workers are separate processes; "spawn" gives each a clean CUDA context.
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    # The same all-reduce path in every mode: NCCL (the plugin's batch-invariant settings turn
    # vLLM's symmetric-memory all-reduce off anyway).
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    # The lent machines keep NVLink multicast off; restated for children with their own env.
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Laid over a TP > 1 engine's environment, whatever its mode."""

TP_ENGINE_DEFAULTS: dict[str, Any] = {
    # vLLM fuses the TP all-reduce with the next RMSNorm through FlashInfer when TP > 1 on
    # Hopper/Blackwell. On the lent 2-GPU machines every engine with it on died in its first
    # all-reduce (2026-11-25, all three modes); it is also batch-variant (one- or two-shot
    # all-reduce chosen by the token count). The plugin turns its default off; the controls
    # (default, vLLM's own mode) get the same setting so that the modes stay comparable.
    "compilation_config": {"pass_config": {"fuse_allreduce_rms": False}},
}
"""``vllm.LLM`` settings of every TP > 1 engine the GPU scripts start."""

ENTRY_POINT_DIST = "vllm_bi_plugin_entry_point-0.0.0.dist-info"


def write_entry_point(root: Path) -> Path:
    """Write a ``.dist-info`` under ``root`` declaring the plugin's vLLM entry point; return root.

    TP workers are spawned processes that load plugins only through package metadata; on a
    machine where the packages run from ``src/`` (not installed), putting ``root`` on the
    children's ``PYTHONPATH`` lets every worker find the plugin.
    """
    info = root / ENTRY_POINT_DIST
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm-bi-plugin-entry-point\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[vllm.general_plugins]\nbatch_invariant = {PLUGIN_ENTRY}\n"
    )
    return root


def entry_point_env(
    mode: str, entry_point_root: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """:func:`mode_env`, with the entry point of :func:`write_entry_point` for ``plugin``.

    Only ``plugin``-mode children get ``entry_point_root`` on their ``PYTHONPATH``: ``vllm-bi``
    and ``default`` must not load the plugin.
    """
    env = mode_env(mode, base)
    if mode == "plugin":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(entry_point_root), env.get("PYTHONPATH", "")) if p
        )
    return env


def tp_mode_env(
    mode: str, entry_point_root: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """:func:`entry_point_env` for a TP > 1 engine, with :data:`TP_ENV` on top.

    Args:
        mode: one of :data:`MODES`.
        entry_point_root: a folder made by :func:`write_entry_point`.
        base: the environment to start from (default: this process's).
    """
    return {**entry_point_env(mode, entry_point_root, base), **TP_ENV}
