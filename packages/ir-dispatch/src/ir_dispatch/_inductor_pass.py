"""The Inductor pass object of :mod:`.lowering` (a module of its own: importing it loads Inductor).

Inductor pickles its config, this pass included, into its cache keys, so the class lives at
module level; ``uuid`` tells the caches what the pass does (the mode and the lowerings).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from .lowering import lower_graph, lowerings_fingerprint


class LoweringPass(CustomGraphPass):  # type: ignore[misc]
    """Inductor's pre-grad pass running :func:`lower_graph`, then the passes set before."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous  # restored by uninstall_lowering
        chained = () if previous is None else previous
        self.chained = tuple(chained) if isinstance(chained, list | tuple) else (chained,)

    def __call__(self, graph: torch.fx.Graph) -> None:
        lower_graph(graph)
        for chained in self.chained:
            chained(graph)

    def uuid(self) -> Any:
        """The cache key; ``None`` (no caching) when a chained pass has none."""
        keys = [getattr(p, "uuid", lambda: None)() for p in self.chained]
        if any(key is None for key in keys):
            return None
        return (lowerings_fingerprint(), *keys)
