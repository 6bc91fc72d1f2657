"""The attention's tile choice: one chain per layout, tiles from one same-bits family."""

from __future__ import annotations

import pytest
import torch

from bi_triton_ascend.attention.config import (
    PREFILL_BLOCK_M,
    attention_config,
    has_tile_family,
    launch_config,
)


@pytest.mark.parametrize("paged", [True, False])
@pytest.mark.parametrize("group", [1, 4, 5])
def test_prefill_tiles_keep_the_chain_and_change_only_rows_and_warps(
    paged: bool, group: int
) -> None:
    decode = launch_config(128, torch.bfloat16, group, False, prefill=False, paged=paged)
    prefill = launch_config(128, torch.bfloat16, group, False, prefill=True, paged=paged)
    assert decode == attention_config(128, torch.bfloat16, group, False)
    assert (decode.block_m, decode.num_warps) == (64, 4)
    assert (prefill.block_m, prefill.num_warps) == (PREFILL_BLOCK_M, 8)
    assert prefill.num_stages == 3
    # Paged prefill loads the block table a tile ahead; decode and packed keys do not.
    assert (prefill.prefetch_table, decode.prefetch_table) == (paged, False)
    # The chain (chunk, key tile) and the row packing stay; only rows, warps and stages move.
    same = ("kv_chunk", "block_n", "group_pad", "head_pad")
    assert [getattr(prefill, f) for f in same] == [getattr(decode, f) for f in same]


@pytest.mark.parametrize(
    ("head", "dtype", "interp"),
    [(128, torch.bfloat16, True), (256, torch.bfloat16, False), (128, torch.float32, False)],
    ids=["interpreter", "head256", "fp32"],
)
def test_outside_the_family_every_launch_gets_the_same_tiles(
    head: int, dtype: torch.dtype, interp: bool
) -> None:
    assert not has_tile_family(head, dtype, interp)
    for paged in (True, False):
        prefill = launch_config(head, dtype, 4, interp, prefill=True, paged=paged)
        assert prefill == attention_config(head, dtype, 4, interp)
