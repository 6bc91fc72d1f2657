"""ir-dispatch: a batch-invariance-aware op registry.

Ops are declared from a native reference; providers register implementations flagged
``batch_invariant``; in batch-invariant mode dispatch only picks those, and says why when it
cannot. Quick tour::

    import ir_dispatch as ird

    with ird.batch_invariant():
        y = ird.ops.rms_norm(x, w, 1e-6)     # through the torch custom op ir_dispatch::rms_norm
    print(ird.explain("mm", a, b, batch_invariant=True))
"""

from . import ops
from .explain import Candidate, Explanation, explain
from .layout import layout_key
from .lowering import install_lowering, lower_graph, lowering_installed, uninstall_lowering
from .mode import batch_invariant, is_batch_invariant, reload_from_env, set_batch_invariant
from .overrides import (
    DEFAULT_OVERRIDES,
    aten_overrides,
    install_aten_overrides,
    installed_overrides,
    uninstall_aten_overrides,
)
from .platform import Platform, PlatformKind, current_platform, platform_of, reset_platform_cache
from .providers import cpu as _cpu_provider  # noqa: F401  (registers provider "cpu")
from .registry import (
    Impl,
    IrOp,
    NoBatchInvariantImplError,
    UnknownOpError,
    get_op,
    list_ops,
    recording,
    register_op,
    remembering,
    set_remembering,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OVERRIDES",
    "Candidate",
    "Explanation",
    "Impl",
    "IrOp",
    "NoBatchInvariantImplError",
    "Platform",
    "PlatformKind",
    "UnknownOpError",
    "aten_overrides",
    "batch_invariant",
    "current_platform",
    "explain",
    "get_op",
    "install_aten_overrides",
    "install_lowering",
    "installed_overrides",
    "is_batch_invariant",
    "layout_key",
    "list_ops",
    "lower_graph",
    "lowering_installed",
    "ops",
    "platform_of",
    "recording",
    "register_op",
    "reload_from_env",
    "remembering",
    "reset_platform_cache",
    "set_batch_invariant",
    "set_remembering",
    "uninstall_aten_overrides",
    "uninstall_lowering",
]
