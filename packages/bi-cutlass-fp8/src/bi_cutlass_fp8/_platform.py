"""The only module of this package that asks CUDA about the device.

Everything else gets the SM version and SM count from here, so support checks, the config
selection and the launch agree, and CPU-only hosts never touch the CUDA driver.
"""

from __future__ import annotations

import functools

import torch


def cuda_available() -> bool:
    """Whether torch sees an NVIDIA GPU (ROCm builds excluded: CUTLASS is CUDA only)."""
    return torch.cuda.is_available() and torch.version.hip is None


@functools.cache
def _device_facts(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.multi_processor_count


def sm_version(device: torch.device | int | None = None) -> int | None:
    """``major * 10 + minor`` of a CUDA device (90 for H100/H200), ``None`` without CUDA."""
    if not cuda_available():
        return None
    return _device_facts(_index(device))[0]


def sm_count(device: torch.device | int | None = None) -> int:
    """Streaming multiprocessors of a CUDA device (the persistent kernels' grid bound).

    Raises:
        RuntimeError: no CUDA device is available.
    """
    if not cuda_available():
        raise RuntimeError("bi_cutlass_fp8: no CUDA device is available")
    return _device_facts(_index(device))[1]


def _index(device: torch.device | int | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    if device.type != "cuda":
        raise ValueError(f"expected a CUDA device, got {device}")
    return torch.cuda.current_device() if device.index is None else device.index
