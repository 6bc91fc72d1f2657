"""The op-level audit behind ``vllm-bi check``: which aten op first lets the batch change a row.

:func:`check_module` runs a probe input alone and inside batches of other inputs (at the front,
middle and back), records every aten op the module runs with a ``TorchDispatchMode``, and
compares each op's output for the probe with its output when the probe ran alone, bit for bit.
The first op whose probe slice differs is where batch variance enters; every op after it may
only inherit the difference, so the report names that first one, with shapes and the largest
absolute difference.

Finding the probe's slice of an op output: the output of the alone run and of a batch of ``B``
have the same rank; if exactly one dimension differs and it is ``B`` times the alone size, the
batch is folded into it batch-major (``[B, T, H]``, ``[B * T, H]``, ``[B * heads, T, D]``) and
the probe's slice is the block at its row. Outputs that do not change with the batch (weights,
``arange(seq_len)``, rotary tables) are compared whole. Skipped, and listed in the report with
the reason: outputs where the batch cannot be located (it appears in several dimensions),
undefined values (``empty``, random ops), and batch indices (``arange(batch)`` and ops on
nothing else), whose row ``r`` holds ``r``. The probe's batch dimension must be 0.

If the module runs other ops for another batch size (a kernel chosen by shape, a branch on the
batch), the op sequences stop lining up: the run is reported as diverged at that op.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from ._check_record import OpRecorder, difference
from ._check_report import NO_BATCH_DIM, CheckReport, OpDifference, RunResult

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "MODES",
    "NO_BATCH_DIM",
    "POSITIONS",
    "CheckReport",
    "OpDifference",
    "RunResult",
    "check_module",
]

MODES = ("batch_invariant", "default")
POSITIONS = ("front", "middle", "back")
DEFAULT_BATCH_SIZES = (1, 2, 3, 4, 8, 15, 16, 17, 32, 33)


def _check_args(
    module: object, probe_input: object, batch_sizes: object, positions: object, mode: object
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if not callable(module):
        raise TypeError(
            "module must be an nn.Module or a callable taking a tensor, "
            f"got {type(module).__name__}"
        )
    if not isinstance(probe_input, torch.Tensor):
        raise TypeError(f"probe_input must be a torch.Tensor, got {type(probe_input).__name__}")
    if probe_input.dim() == 0 or probe_input.shape[0] != 1:
        raise ValueError(
            "probe_input must have a leading batch dimension of size 1 (e.g. input_ids of shape "
            f"[1, seq_len], or x.unsqueeze(0)), got shape {tuple(probe_input.shape)}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Iterable):
        raise TypeError(f"batch_sizes must be a sequence of positive ints, got {batch_sizes!r}")
    sizes = tuple(batch_sizes)
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise ValueError(
            f"batch_sizes must be a non-empty sequence of positive ints, got {sizes!r}"
        )
    if isinstance(positions, str) or not isinstance(positions, Iterable):
        raise TypeError(f"positions must be a sequence drawn from {POSITIONS}, got {positions!r}")
    where = tuple(positions)
    unknown = [p for p in where if p not in POSITIONS]
    if not where or unknown:
        raise ValueError(
            f"positions must be a non-empty sequence drawn from {POSITIONS}, got {where!r}"
        )
    return sizes, where


def _make_fillers(probe: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` other rows like the probe: same shape and dtype, values of the same kind.

    Floats: Gaussian with the probe's mean and spread. Integers (token ids): the probe's own
    values, shuffled, so they stay valid ids. Booleans: random.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (count, *probe.shape[1:])
    if probe.is_floating_point():
        values = probe.detach().to("cpu", torch.float64)
        std = float(values.std()) if values.numel() > 1 else 1.0
        std = std if math.isfinite(std) and std > 0 else 1.0
        mean = float(values.mean()) if math.isfinite(float(values.mean())) else 0.0
        rows = torch.randn(shape, generator=g, dtype=torch.float64) * std + mean
    elif probe.dtype == torch.bool:
        rows = torch.rand(shape, generator=g) < 0.5
    else:
        flat = probe.detach().reshape(-1).to("cpu")
        rows = flat[torch.randint(0, flat.numel(), shape, generator=g)]
    return rows.to(device=probe.device, dtype=probe.dtype)


def _module_output(result: Any) -> torch.Tensor | None:
    """The tensor a module returns: itself, ``.logits`` (transformers), or the first leaf."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(result, dict) and isinstance(result.get("logits"), torch.Tensor):
        return result["logits"]
    leaves = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
    return leaves[0] if leaves else None


@contextlib.contextmanager
def _dispatch_mode(mode: str, probe: torch.Tensor) -> Iterator[None]:
    import ir_dispatch  # registers the cpu provider

    if mode == "default":
        with ir_dispatch.batch_invariant(False):
            yield
        return
    key = "CPU" if probe.device.type == "cpu" else ir_dispatch.current_platform().dispatch_key
    with ir_dispatch.batch_invariant(True), ir_dispatch.aten_overrides(dispatch_key=key):
        yield


@contextlib.contextmanager
def _inference(module: object) -> Iterator[None]:
    """``no_grad`` and eval mode (restored afterwards): dropout would make every run differ."""
    net = module if isinstance(module, torch.nn.Module) and module.training else None
    if net is not None:
        net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if net is not None:
            net.train()


def _index(batch: int, position: str) -> int:
    return {"front": 0, "middle": batch // 2, "back": batch - 1}[position]


def check_module(
    module: Callable[[torch.Tensor], Any],
    probe_input: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    positions: Sequence[str] = POSITIONS,
    mode: str = "batch_invariant",
    fillers: torch.Tensor | None = None,
    seed: int = 0,
) -> CheckReport:
    """Audit ``module`` for batch invariance op by op, with ``probe_input`` as the probe row.

    Args:
        module: an ``nn.Module`` (a ``transformers`` model takes ``input_ids``) or any callable
            taking one tensor whose dimension 0 is the batch. Run in eval mode without grad.
        probe_input: the probe, with a leading batch dimension of size 1.
        batch_sizes: batch sizes to hide the probe in.
        positions: where in each batch: ``front`` (row 0), ``middle`` (``B // 2``), ``back``.
        mode: ``batch_invariant`` (ir-dispatch's mode plus its aten overrides, so every
            overridden aten op runs a batch-invariant implementation) or ``default`` (torch's own
            kernels, to see where a model is batch-variant today).
        fillers: the other rows, ``[>= max(batch_sizes) - 1, *probe_input.shape[1:]]``; random
            rows like the probe (shuffled token ids for integer inputs) if ``None``.
        seed: seed of the random fillers.

    Returns:
        The :class:`CheckReport`; ``report.ok`` is ``True`` when no op ever differed.

    Raises:
        TypeError, ValueError: a bad argument (the message names it).
        ir_dispatch.NoBatchInvariantImplError: ``batch_invariant`` mode, and an op has no
            batch-invariant implementation on this platform.
    """
    sizes, where = _check_args(module, probe_input, batch_sizes, positions, mode)
    need = max(sizes) - 1
    if fillers is None:
        fillers = _make_fillers(probe_input, need, seed)
    elif not isinstance(fillers, torch.Tensor):
        raise TypeError(f"fillers must be a torch.Tensor or None, got {type(fillers).__name__}")
    elif (
        fillers.shape[1:] != probe_input.shape[1:]
        or fillers.shape[0] < need
        or fillers.dtype != probe_input.dtype
    ):
        raise ValueError(
            f"fillers must be {probe_input.dtype} of shape "
            f"[>= {need}, *{tuple(probe_input.shape[1:])}], "
            f"got {fillers.dtype} {tuple(fillers.shape)}"
        )
    name = type(module).__name__
    with _inference(module), _dispatch_mode(mode, probe_input):
        with OpRecorder() as alone_rec:
            alone_out = _module_output(module(probe_input))
        alone_out = alone_out.detach().clone() if alone_out is not None else None
        report = CheckReport(
            name,
            mode,
            tuple(probe_input.shape),
            str(probe_input.dtype).removeprefix("torch."),
            len(alone_rec.record),
        )
        whole: set[str] = set()
        for batch in sizes:
            rows: dict[int, str] = {}
            for position in where:
                rows.setdefault(_index(batch, position), position)
            for row, position in sorted(rows.items()):
                batch_input = torch.cat([fillers[:row], probe_input, fillers[row : batch - 1]])
                with OpRecorder(alone_rec.record, batch, row) as rec:
                    out = _module_output(module(batch_input))
                if rec.diverged is None and rec.index != len(alone_rec.record):
                    rec.diverged = (
                        f"{rec.index} aten ops in the batch, {len(alone_rec.record)} alone"
                    )
                out_diff = None
                if (
                    out is not None
                    and alone_out is not None
                    and out.dim() > 0
                    and out.shape[0] == batch * alone_out.shape[0]
                ):
                    piece = out.narrow(0, row * alone_out.shape[0], alone_out.shape[0])
                    out_diff = (
                        difference(piece, alone_out)[1] if piece.shape == alone_out.shape else None
                    )
                report.runs.append(
                    RunResult(batch, position, row, rec.first, rec.compared, rec.diverged, out_diff)
                )
                for op, why in rec.skipped.items():
                    report.skipped.setdefault(op, why)
                whole |= rec.whole
        report.whole = sorted(whole)
    return report
