"""Which kernel packages serve which platform, importing them, and what they then cover.

A provider package registers its kernels with ``ir-dispatch`` when imported. The plugin imports
the ones meant for the platform it runs on; a missing one is reported with the extra that
installs it, never as a traceback. What is *covered* is then read back from the registry: an op
counts as covered on a platform when a batch-invariant implementation other than the native
reference and the composite (reshape-only) one runs there, because only then does replacing
vLLM's own kernel keep the run bitwise and fast.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from ._log import logger

# Providers that do not add a kernel of their own.
_NOT_KERNELS = frozenset({"native", "composite"})


@dataclass(frozen=True)
class ProviderPackage:
    """A package that registers batch-invariant kernels with ir-dispatch on import.

    Attributes:
        module: the import name (``bi_triton_ascend``, ``ir_dispatch.providers.cpu``).
        distribution: the pip distribution that ships it.
        extra: the ``vllm-bi-plugin`` extra that installs it.
        what: one line on what it provides, for messages.
    """

    module: str
    distribution: str
    extra: str
    what: str


TRITON = ProviderPackage(
    "bi_triton_ascend", "bi-triton-ascend", "cuda", "Triton GEMM/norm/softmax/mean kernels"
)
TRITON_ASCEND = ProviderPackage(
    "bi_triton_ascend", "bi-triton-ascend", "ascend", "Triton-Ascend GEMM/norm/softmax/mean"
)
CUTLASS_FP8 = ProviderPackage("bi_cutlass_fp8", "bi-cutlass-fp8", "cuda", "CUTLASS FP8 GEMM")
MM_ENCODER = ProviderPackage(
    "mm_encoder_ascend", "mm-encoder-ascend", "ascend", "multimodal encoder attention"
)
CPU = ProviderPackage(
    "ir_dispatch.providers.cpu", "ir-dispatch", "cpu", "CPU GEMM/norm/softmax/mean kernels"
)

PACKAGES_BY_PLATFORM: dict[str, tuple[ProviderPackage, ...]] = {
    "cuda": (TRITON, CUTLASS_FP8),
    "rocm": (TRITON,),
    "npu": (TRITON_ASCEND, MM_ENCODER),
    "cpu": (CPU,),
    "xpu": (),
}


@dataclass(frozen=True)
class ImportResult:
    """The outcome of importing one provider package.

    Attributes:
        package: what was imported.
        ok: whether the import worked.
        message: empty when ``ok``; otherwise why not and what to install.
    """

    package: ProviderPackage
    ok: bool
    message: str = ""


def install_hint(package: ProviderPackage) -> str:
    """The pip command that brings ``package`` in."""
    if package.distribution == "ir-dispatch":
        return 'pip install -U "ir-dispatch" (its CPU provider ships with it)'
    return f'pip install "vllm-bi-plugin[{package.extra}]"'


def import_provider(package: ProviderPackage) -> ImportResult:
    """Import one provider package; report a missing or broken one without raising.

    A package that is not installed gets the install hint. One that is installed but fails to
    import (a driver, a compiler or a sibling package missing) gets the error's one-line text:
    batch-invariant mode then runs without it, and the log says so.
    """
    try:
        found = importlib.util.find_spec(package.module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return ImportResult(
            package,
            False,
            f"{package.module} ({package.what}) is not installed; {install_hint(package)}",
        )
    try:
        importlib.import_module(package.module)
    except Exception as exc:  # any import-time failure must not take vLLM down
        return ImportResult(
            package,
            False,
            f"{package.module} is installed but failed to import "
            f"({type(exc).__name__}: {exc}); {install_hint(package)}",
        )
    return ImportResult(package, True)


def import_providers(platform: str) -> list[ImportResult]:
    """Import every provider package meant for ``platform`` (``cuda``, ``npu``, ``cpu``, ...).

    Raises:
        ValueError: ``platform`` is not one of the known names.
    """
    if platform not in PACKAGES_BY_PLATFORM:
        raise ValueError(
            f"platform must be one of {sorted(PACKAGES_BY_PLATFORM)}, got {platform!r}"
        )
    results = [import_provider(p) for p in PACKAGES_BY_PLATFORM[platform]]
    for r in results:
        if not r.ok:
            logger.warning("vllm-bi-plugin: %s", r.message)
    return results


def kernel_providers(op_name: str, platform: str) -> list[str]:
    """Providers with a batch-invariant kernel of ``op_name`` on ``platform``, in dispatch order.

    Args:
        op_name: an ir-dispatch op (``mm``, ``rms_norm``, ...).
        platform: a ``PlatformKind`` value (``cuda``, ``cpu``, ...).
    """
    import ir_dispatch

    kind = ir_dispatch.PlatformKind(platform)
    op = ir_dispatch.get_op(op_name)
    return [
        impl.provider
        for impl in op.impls
        if impl.provider not in _NOT_KERNELS
        and kind in impl.platforms
        and impl.is_batch_invariant_on(kind)
    ]


def covered(op_names: Iterable[str], platform: str) -> bool:
    """Whether every op in ``op_names`` has a batch-invariant kernel on ``platform``."""
    return all(kernel_providers(name, platform) for name in op_names)


# aten overload -> the ir-dispatch ops its override ends up calling (composites included).
OVERLOAD_NEEDS: dict[str, tuple[str, ...]] = {
    "mm": ("mm",),
    "mm.out": ("mm",),
    "addmm": ("addmm",),
    "addmm.out": ("addmm",),
    "bmm": ("bmm",),
    "bmm.out": ("bmm",),
    "matmul": ("mm", "bmm"),
    "matmul.out": ("mm", "bmm"),
    "linear": ("mm", "addmm"),
    "linear.out": ("mm", "addmm"),
    "_log_softmax": ("log_softmax",),
    "_log_softmax.out": ("log_softmax",),
    "log_softmax.int": ("log_softmax",),
    "softmax.int": ("softmax",),
    "_softmax": ("softmax",),
    "_softmax.out": ("softmax",),
    "mean.dim": ("mean",),
    "mean.out": ("mean",),
}


def covered_overloads(overloads: Iterable[str], platform: str) -> tuple[str, ...]:
    """The aten overloads whose every underlying op has a kernel on ``platform``.

    Raises:
        ValueError: an overload this table does not know.
    """
    out = []
    for o in overloads:
        if o not in OVERLOAD_NEEDS:
            raise ValueError(f"overload {o!r} is unknown; known: {', '.join(OVERLOAD_NEEDS)}")
        if covered(OVERLOAD_NEEDS[o], platform):
            out.append(o)
    return tuple(out)
