"""The only module of this package that knows which platform the kernels run on.

Everything platform-specific the kernels need is answered here, from ``ir_dispatch.platform``'s
detection: whether Triton's interpreter runs them (CPU tensors, ``TRITON_INTERPRET=1``), how
many programs a persistent grid launches (CUDA streaming multiprocessors, Ascend vector cores,
a small fixed number in the interpreter), the device module, and the interpreter's ``tl.dot``
defect on 16-bit operands (wrong by ~1e10 in Triton 3.6's interpreter; kernels take a
``UPCAST_DOT`` constexpr and cast the operands to fp32 only when interpreting, never on a real
device where it would leave the tensor cores).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

from ir_dispatch.platform import PlatformKind, current_platform

# Programs of a persistent grid in the interpreter: enough to exercise the grid-stride loops,
# few enough that the interpreter's per-program cost stays small.
INTERPRETER_PROGRAMS = 4
_TRUE = ("1", "true", "yes", "on", "y")


def triton_available() -> bool:
    """Whether a ``triton`` module (NVIDIA's or triton-ascend's) can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when a kernel is decorated, so the answer is fixed at import.
    """
    return _interpreting()


@functools.cache
def _interpreting() -> bool:
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # triton-ascend 3.2 has no knobs module.
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def upcast_dot() -> bool:
    """Whether kernels must cast ``tl.dot`` operands to fp32 (only in the interpreter)."""
    return interpreting()


def dot_precision(dtype: torch.dtype) -> str | None:
    """``tl.dot``'s input precision: exact fp32 FMAs for fp32 operands (never TF32/HF32).

    16-bit operands ignore it, so ``None`` keeps each backend's own default there: triton
    rejects nothing, but triton-ascend refuses ``"tf32"``.
    """
    return "ieee" if dtype == torch.float32 else None


def supported_platforms() -> tuple[PlatformKind, ...]:
    """Platforms the Triton provider registers for.

    CUDA and Ascend always; CPU only under the interpreter, where Triton runs on CPU tensors.
    ROCm is left out: its MFMA accumulation chain has not been checked for invariance.
    """
    kinds = [PlatformKind.CUDA, PlatformKind.NPU]
    if interpreting():
        kinds.append(PlatformKind.CPU)
    return tuple(kinds)


def device_supported(t: torch.Tensor) -> bool | str:
    """``True`` if Triton kernels can run on ``t``'s device here, else the reason."""
    kind = t.device.type
    if kind == "cpu":
        return True if interpreting() else "CPU tensors need TRITON_INTERPRET=1"
    if kind == "cuda":
        if torch.version.hip:
            return "ROCm is not supported (invariance unverified)"
        return True if not interpreting() else "TRITON_INTERPRET=1 runs CPU tensors only"
    if kind in ("npu", "privateuseone"):
        return True if not interpreting() else "TRITON_INTERPRET=1 runs CPU tensors only"
    return f"device type {kind!r} is not supported"


def arch(device: torch.device) -> str:
    """The kernel-configuration family for ``device``: ``interp``, ``sm90``, ``cuda`` or ``npu``.

    ``sm90`` (Hopper with Triton >= 3.4, whose ``tl.range`` can flatten loop nests) gets the
    tuned H100 tiles; other CUDA devices get conservative ones.
    """
    if interpreting() or device.type == "cpu":
        return "interp"
    if device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())
    return "npu"


@functools.cache
def _cuda_arch(index: int) -> str:
    major, _ = torch.cuda.get_device_capability(index)
    return "sm90" if major == 9 and _triton_at_least(3, 4) else "cuda"


def shared_memory_limit(device: torch.device) -> int | None:
    """Bytes of shared memory one program may use on ``device``; ``None`` where unknown.

    Only CUDA reports it (``sharedMemPerBlockOptin``); the interpreter has no limit, and on
    Ascend the compiler sizes its own buffers.
    """
    if interpreting() or device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_shared_memory(index)


@functools.cache
def _cuda_shared_memory(index: int) -> int:
    # torch >= 2.3 reports the opt-in limit; its type stubs do not list the attribute.
    props = torch.cuda.get_device_properties(index)
    return int(props.shared_memory_per_block_optin)  # type: ignore[attr-defined]


def _triton_at_least(major: int, minor: int) -> bool:
    import triton

    parts = triton.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


@functools.cache
def _num_programs(device_type: str, index: int) -> int:
    if device_type == "cpu":
        return INTERPRETER_PROGRAMS
    if device_type == "cuda":
        return int(torch.cuda.get_device_properties(index).multi_processor_count)
    from triton.runtime import driver

    props: dict[str, Any] = driver.active.utils.get_device_properties(index)
    return int(props["num_vectorcore"])


def num_programs(device: torch.device) -> int:
    """Programs of a persistent grid on ``device``.

    CUDA: the SM count. Ascend: ``num_vectorcore`` from triton-ascend's driver. Interpreter:
    :data:`INTERPRETER_PROGRAMS`.
    """
    if interpreting():
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else _current_index(device.type)
    return _num_programs(device.type, index)


def row_programs(device: torch.device, rows: int) -> int:
    """Programs of a row-parallel kernel over ``rows`` rows (kernels grid-stride over rows).

    CUDA: one per row (the hardware scheduler balances). Ascend and the interpreter: the
    persistent count, since an Ascend launch should not exceed its vector cores.
    """
    if device.type == "cuda" and not interpreting():
        return max(rows, 1)
    return num_programs(device)


def _current_index(device_type: str) -> int:
    if device_type == "cuda":
        return torch.cuda.current_device()
    if device_type in ("npu", "privateuseone"):
        return int(current_platform().device_module().current_device())
    return 0


def device_module() -> Any:
    """``torch.cuda``, ``torch.npu`` or ``torch.cpu`` for this process's platform."""
    return current_platform().device_module()


def partials_cache_modifier(device: torch.device) -> str:
    """Load cache modifier for split-K partials written by other programs of the same launch.

    CUDA: ``.cg`` (L2 only: L1 is not coherent across SMs). Elsewhere the default.
    """
    return ".cg" if device.type == "cuda" and not interpreting() else ""


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def stream_key(device: torch.device) -> tuple[str, int, int]:
    """A key for per-stream scratch buffers (kernels on two streams must not share counters)."""
    if device.type == "cuda":
        return ("cuda", device.index or 0, torch.cuda.current_stream(device).cuda_stream)
    if device.type in ("npu", "privateuseone"):
        stream = current_platform().device_module().current_stream()
        return (device.type, device.index or 0, int(getattr(stream, "npu_stream", id(stream))))
    return (device.type, device.index or 0, 0)


__all__ = [
    "INTERPRETER_PROGRAMS",
    "PlatformKind",
    "arch",
    "capturing",
    "device_module",
    "device_supported",
    "interpreting",
    "num_programs",
    "partials_cache_modifier",
    "row_programs",
    "stream_key",
    "supported_platforms",
    "triton_available",
    "upcast_dot",
]
