"""From a ``transformers`` batch (padded or packed) to packed varlen rows and back.

vLLM never sees padding: every sequence is a run of tokens at positions ``0, 1, 2, ...``. The
trainer gets there by dropping the padding of a ``[B, S]`` batch (left, right or both) and
packing the kept tokens back to back, with ``cu_seqlens`` marking where each sequence starts;
a batch of one already packed row (``position_ids`` restarting at 0 per sequence, as
``DataCollatorWithFlattening`` builds) is used as is. Row-wise ops then see exactly the rows
vLLM sees, and attention sees each sequence alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import cu_seqlens_from_mask, cu_seqlens_from_positions


@dataclass(frozen=True)
class PackedLayout:
    """Where the packed rows come from.

    Attributes:
        batch: ``B`` of the original ``[B, S]`` batch.
        seq_len: ``S``.
        index: ``[T]`` flat indices (into ``B * S``) of the kept tokens, or ``None`` when every
            token is kept (no padding: the packed rows are the flattened batch).
        positions: ``[T]`` position of each packed row within its sequence.
        cu_seqlens: ``[num_seqs + 1]`` int32 offsets of the sequences in the packed rows.
    """

    batch: int
    seq_len: int
    index: torch.Tensor | None
    positions: torch.Tensor
    cu_seqlens: torch.Tensor

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, ...]`` -> ``[T, ...]`` (differentiable)."""
        flat = x.reshape(self.batch * self.seq_len, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, S, ...]`` with zeros at the padding (differentiable)."""
        if self.index is not None:
            full = rows.new_zeros(self.batch * self.seq_len, *rows.shape[1:])
            rows = full.index_copy(0, self.index, rows)
        return rows.reshape(self.batch, self.seq_len, *rows.shape[1:])


def packed_layout(
    batch: int,
    seq_len: int,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    device: torch.device,
) -> PackedLayout:
    """The packed layout of a ``[B, S]`` batch.

    Args:
        batch: ``B``.
        seq_len: ``S``.
        attention_mask: ``None`` or ``[B, S]`` with 1 for real tokens and 0 for padding; each row
            is then one sequence.
        position_ids: ``None`` or ``[B, S]``/``[1, S]``. Without a mask, a row may hold several
            sequences, each restarting at 0. With a mask, the kept positions must count from 0.
        device: where the index tensors go.

    Raises:
        ValueError: a 4-D mask, mismatched shapes, or positions that do not count 0, 1, 2, ...
            within each sequence (varlen attention treats each sequence as starting at 0).
    """
    pos = None
    if position_ids is not None:
        if position_ids.dim() != 2 or position_ids.shape[1] != seq_len:
            raise ValueError(
                f"position_ids must be [B, {seq_len}] or [1, {seq_len}], got "
                f"{tuple(position_ids.shape)}"
            )
        pos = position_ids.to(device).expand(batch, seq_len).reshape(-1)
    if attention_mask is not None:
        if attention_mask.shape != (batch, seq_len):
            raise ValueError(
                f"attention_mask must be a [B, S] = [{batch}, {seq_len}] padding mask, got "
                f"{tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(device)
        index, cu = cu_seqlens_from_mask(mask)
        counted = (mask.bool().long().cumsum(-1) - 1).reshape(-1)
        positions = (counted if pos is None else pos).index_select(0, index)
        if pos is not None and not torch.equal(positions, counted.index_select(0, index)):
            raise ValueError(
                "with an attention_mask, position_ids of the kept tokens must count 0, 1, 2, ... "
                "in each row (one sequence per row)"
            )
        keep_all = bool(mask.bool().all())
        return PackedLayout(batch, seq_len, None if keep_all else index, positions, cu)
    if pos is None:
        positions = torch.arange(seq_len, device=device).repeat(batch)
        cu = torch.arange(0, (batch + 1) * seq_len, seq_len, dtype=torch.int32, device=device)
        return PackedLayout(batch, seq_len, None, positions, cu)
    return PackedLayout(batch, seq_len, None, pos, cu_seqlens_from_positions(pos))
