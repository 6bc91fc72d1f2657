"""vllm-bi-plugin: one switch (``VLLM_BATCH_INVARIANT=1``) makes vLLM batch-invariant.

Installed, it is a ``vllm.general_plugins`` entry point (:func:`register`) that vLLM runs in
every process. Outside vLLM, ``batch_invariant`` (ir-dispatch's mode, re-exported) makes plain
PyTorch and ``transformers`` code dispatch to the same kernels::

    from vllm_bi_plugin import batch_invariant

    with batch_invariant():
        logits = model(input_ids).logits

Importing this package imports neither vLLM nor ir-dispatch: vLLM imports it in every process,
also with the switch off, where it must change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plugin import enabled, installed, register, unregister

if TYPE_CHECKING:
    from ir_dispatch import batch_invariant, is_batch_invariant

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "batch_invariant",
    "enabled",
    "installed",
    "is_batch_invariant",
    "register",
    "unregister",
]

_FROM_IR_DISPATCH = ("batch_invariant", "is_batch_invariant")


def __getattr__(name: str) -> Any:
    if name in _FROM_IR_DISPATCH:
        import ir_dispatch

        return getattr(ir_dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
