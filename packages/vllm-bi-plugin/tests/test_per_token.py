from __future__ import annotations

import pytest
import torch

from vllm_bi_plugin._per_token import per_token_requests


def _meta(q_lens: list[int], seq_lens: list[int], pad: int = 0):
    qsl = torch.tensor(
        [0, *torch.tensor(q_lens).cumsum(0).tolist()] + [sum(q_lens)] * pad, dtype=torch.int32
    )
    sl = torch.tensor(seq_lens + [0] * pad, dtype=torch.int32)
    bt = torch.arange((len(q_lens) + pad) * 3, dtype=torch.int32).reshape(-1, 3)
    return qsl, sl, bt


@pytest.mark.parametrize(
    ("q_lens", "seq_lens"),
    [
        pytest.param([1, 1, 1], [301, 7, 64], id="decode-only"),
        pytest.param([5], [5], id="one-prefill"),
        pytest.param([3, 1, 4], [103, 50, 4], id="cached-prefix-chunk+decode+prefill"),
    ],
)
def test_each_token_gets_its_causal_length(q_lens, seq_lens) -> None:
    qsl, sl, bt = _meta(q_lens, seq_lens)
    tqsl, tsl, tbt = per_token_requests(qsl, sl, bt, len(q_lens))
    n = sum(q_lens)
    assert tqsl.tolist() == list(range(n + 1)) and tqsl.dtype == qsl.dtype
    expected_lens, expected_rows = [], []
    for r, (q, s) in enumerate(zip(q_lens, seq_lens, strict=False)):
        expected_lens += [s - q + i + 1 for i in range(q)]
        expected_rows += [bt[r].tolist()] * q
    assert tsl.tolist() == expected_lens and tsl.dtype == sl.dtype
    assert tbt.tolist() == expected_rows


def test_padding_rows_are_ignored() -> None:
    qsl, sl, bt = _meta([2, 1], [10, 4], pad=3)
    tqsl, tsl, tbt = per_token_requests(qsl, sl, bt, 2)
    assert tqsl.tolist() == [0, 1, 2, 3]
    assert tsl.tolist() == [9, 10, 4]
    assert tbt.shape == (3, 3)


def test_no_requests() -> None:
    qsl, sl, bt = _meta([], [])
    tqsl, tsl, tbt = per_token_requests(qsl, sl, bt, 0)
    assert tqsl.tolist() == [0] and tsl.numel() == 0 and tbt.shape == (0, 3)


def test_more_queries_than_tokens_is_rejected() -> None:
    qsl, sl, bt = _meta([4], [3])
    with pytest.raises(ValueError, match="seq_lens must be >= the query count"):
        per_token_requests(qsl, sl, bt, 1)


def test_a_tokens_entry_does_not_depend_on_its_neighbours() -> None:
    # The needle's 3 tokens (2 cached before them) get the same rows alone and in a batch.
    alone = per_token_requests(*_meta([3], [5]), 1)
    qsl, sl, bt = _meta([1, 3, 2], [40, 5, 2])
    bt[1] = torch.tensor([0, 1, 2], dtype=torch.int32)
    batched = per_token_requests(qsl, sl, bt, 3)
    assert batched[1][1:4].tolist() == alone[1].tolist()
    assert batched[2][1:4].tolist() == alone[2].tolist()
