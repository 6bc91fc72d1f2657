"""The Inductor pass object of :mod:`.lowering` (a module of its own: importing it loads Inductor).

Inductor pickles its config, this pass included, into its cache keys, so the class lives at
module level; ``uuid`` tells the caches what the pass does (the mode and the lowerings).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from .lowering import lower_graph, lowerings_fingerprint, reductions_routed
from .mode import is_batch_invariant

_user_casts: list[bool] = []  # Inductor's emulate_precision_casts before eager_casts(True)


def eager_casts(on: bool) -> None:
    """Inductor's ``emulate_precision_casts`` on, or back to what it was before.

    Inductor elides the bf16 round trips between fused operations where its fusions allow, and
    which fusions it makes follows the shapes: a compiled Qwen3 decoder in batch-invariant mode,
    its reductions already routed to the kit, still gave a prompt other logits inside a batch
    than alone until the casts were kept (H100 and CPU, ``benchmarks/compile_bits.py``). With
    both, the compiled model gave the eager model's bits. Set by the pass before Inductor
    compiles each graph; a graph Inductor finds in its caches skips the pass, and was compiled
    with the same setting, since the switch is part of the pass's cache key.
    """
    from torch._inductor import config

    if on:
        if not _user_casts:
            _user_casts.append(config.emulate_precision_casts)
        config.emulate_precision_casts = True
    elif _user_casts:
        config.emulate_precision_casts = _user_casts.pop()


class LoweringPass(CustomGraphPass):  # type: ignore[misc]
    """Inductor's pre-grad pass running :func:`lower_graph`, then the passes set before."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous  # restored by uninstall_lowering
        chained = () if previous is None else previous
        self.chained = tuple(chained) if isinstance(chained, list | tuple) else (chained,)

    def __call__(self, graph: torch.fx.Graph) -> None:
        eager_casts(is_batch_invariant() and reductions_routed())
        lower_graph(graph)
        for chained in self.chained:
            chained(graph)

    def uuid(self) -> Any:
        """The cache key; ``None`` (no caching) when a chained pass has none."""
        keys = [getattr(p, "uuid", lambda: None)() for p in self.chained]
        if any(key is None for key in keys):
            return None
        return (lowerings_fingerprint(), *keys)
