"""The one module that knows which accelerator this process runs on.

Every other module (and every provider package) asks here instead of probing
``torch.cuda`` / ``torch.npu`` itself, so that support checks, aten-override dispatch
keys and device properties agree everywhere.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch


class PlatformKind(str, enum.Enum):
    """The device families the kit distinguishes."""

    CUDA = "cuda"
    ROCM = "rocm"
    NPU = "npu"
    XPU = "xpu"
    CPU = "cpu"


# The torch dispatch key that aten overrides are registered under, per platform.
_DISPATCH_KEYS: dict[PlatformKind, str] = {
    PlatformKind.CUDA: "CUDA",
    PlatformKind.ROCM: "CUDA",
    PlatformKind.NPU: "PrivateUse1",
    PlatformKind.XPU: "XPU",
    PlatformKind.CPU: "CPU",
}


@dataclass(frozen=True)
class Platform:
    """What dispatch needs to know about the current device.

    Attributes:
        kind: the device family.
        device_type: the torch device type string tensors carry (``"cuda"``, ``"npu"``, ...).
        dispatch_key: the dispatch key aten overrides are installed under.
        device_name: a human-readable name (``"NVIDIA H100 80GB HBM3"``, ``"cpu"``).
        compute_capability: ``(major, minor)`` on CUDA, ``None`` elsewhere.
        compute_units: streaming multiprocessors (CUDA), AI cores (NPU) or CPU threads.
    """

    kind: PlatformKind
    device_type: str
    dispatch_key: str
    device_name: str
    compute_capability: tuple[int, int] | None
    compute_units: int

    @property
    def is_gpu_like(self) -> bool:
        """True for accelerators with their own memory (everything but the CPU)."""
        return self.kind is not PlatformKind.CPU

    def device_module(self) -> Any:
        """The ``torch.<device>`` module (``torch.cuda``, ``torch.npu``, ...)."""
        if self.kind is PlatformKind.NPU:
            _import_torch_npu()
        return getattr(torch, self.device_type)

    def describe(self) -> str:
        cc = (
            f" sm{self.compute_capability[0]}{self.compute_capability[1]}"
            if self.compute_capability
            else ""
        )
        return f"{self.kind.value} ({self.device_name}{cc}, {self.compute_units} compute units)"


def _import_torch_npu() -> bool:
    """Import ``torch_npu`` if it is installed and importable (it needs Ascend CANN)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except Exception:  # CANN missing or broken: this is not an NPU host.
        return False
    return True


def _detect_kind() -> PlatformKind:
    forced = os.environ.get("IR_DISPATCH_PLATFORM")
    if forced:
        try:
            return PlatformKind(forced.lower())
        except ValueError:
            valid = ", ".join(k.value for k in PlatformKind)
            raise ValueError(
                f"IR_DISPATCH_PLATFORM={forced!r} is not a platform; expected one of {valid}"
            ) from None
    if torch.cuda.is_available():
        return PlatformKind.ROCM if torch.version.hip else PlatformKind.CUDA
    if _import_torch_npu() and torch.npu.is_available():  # type: ignore[attr-defined]
        return PlatformKind.NPU
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return PlatformKind.XPU
    return PlatformKind.CPU


def _describe_device(kind: PlatformKind) -> Platform:
    device_type = {PlatformKind.ROCM: "cuda"}.get(kind, kind.value)
    name, capability, units = "cpu", None, torch.get_num_threads()
    if kind in (PlatformKind.CUDA, PlatformKind.ROCM) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        name, units = props.name, props.multi_processor_count
        capability = (props.major, props.minor)
    elif kind is PlatformKind.NPU and _import_torch_npu():
        name = str(torch.npu.get_device_name())  # type: ignore[attr-defined]
        units = _npu_ai_core_count()
    elif kind is PlatformKind.XPU and torch.xpu.is_available():
        xpu_props = torch.xpu.get_device_properties(torch.xpu.current_device())
        name, units = xpu_props.name, int(getattr(xpu_props, "gpu_subslice_count", 1))
    return Platform(
        kind=kind,
        device_type=device_type,
        dispatch_key=_DISPATCH_KEYS[kind],
        device_name=name,
        compute_capability=capability,
        compute_units=units,
    )


def _npu_ai_core_count() -> int:
    try:
        from triton.runtime import driver

        props = driver.active.utils.get_device_properties(torch.npu.current_device())  # type: ignore[attr-defined]
        return int(props.get("num_aicore", props.get("num_vectorcore", 1)))
    except Exception:
        return 1


@functools.cache
def current_platform() -> Platform:
    """The platform of this process, detected once.

    ``IR_DISPATCH_PLATFORM`` (``cuda``, ``rocm``, ``npu``, ``xpu``, ``cpu``) overrides the
    detection, for tests and for hosts where detection would import a broken driver.
    """
    return _describe_device(_detect_kind())


def reset_platform_cache() -> None:
    """Forget the detected platform (tests that fake another device call this)."""
    current_platform.cache_clear()


def platform_of(*tensors: object) -> PlatformKind:
    """The platform the given tensors live on (the first tensor decides).

    A CPU tensor on a CUDA host is dispatched as CPU: support checks must look at where
    the data is, not only at what the host has.
    """
    for t in tensors:
        if isinstance(t, torch.Tensor):
            device_type = t.device.type
            if device_type == "cpu" or device_type == "meta":
                return PlatformKind.CPU
            if device_type == "cuda":
                return (
                    current_platform().kind
                    if current_platform().kind is PlatformKind.ROCM
                    else PlatformKind.CUDA
                )
            if device_type in ("npu", "privateuseone"):
                return PlatformKind.NPU
            if device_type == "xpu":
                return PlatformKind.XPU
    return current_platform().kind
