from __future__ import annotations

import pytest

from vllm_bi_plugin import needle


def test_prompts_are_seeded_and_mixed() -> None:
    cfg = needle.NeedleConfig(model="m", batch_sizes=[2, 9], needle_len=20, other_lens=(3, 30))
    a, others = needle.make_prompts(cfg)
    b, others_b = needle.make_prompts(cfg)
    assert a == b and others == others_b
    assert len(a) == 20 and len(others) == 8
    assert len({len(o) for o in others}) > 1
    assert all(3 <= t < cfg.vocab_size for p in [a, *others] for t in p)


@pytest.mark.parametrize(
    ("position", "index"),
    [("front", 0), ("middle", 4), ("back", 8)],
    ids=["front", "middle", "back"],
)
def test_place(position, index) -> None:
    others = [[i] for i in range(20)]
    batch, i = needle.place([99], others, 9, position)
    assert i == index and batch[i] == [99] and len(batch) == 9
    assert [p for p in batch if p != [99]] == others[:8]


def test_compare_is_bitwise() -> None:
    ref = {"tokens": [1, 2, 3], "logprobs": [-1.0, -2.0, -3.0]}
    assert needle.compare(ref, dict(ref))["identical"]
    near = {"tokens": [1, 2, 3], "logprobs": [-1.0, -2.0 + 2**-40, -3.0]}
    verdict = needle.compare(ref, near)
    assert not verdict["identical"] and verdict["tokens_equal"]
    assert verdict["first_diff_step"] == 1 and verdict["max_abs_logprob_diff"] > 0
    other_token = {"tokens": [1, 5, 3], "logprobs": [-1.0, -2.0, -3.0]}
    verdict = needle.compare(ref, other_token)
    assert not verdict["identical"] and verdict["first_diff_step"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": [1]}, "batch_sizes"),
        ({"batch_sizes": []}, "batch_sizes"),
        ({"positions": ["side"]}, "positions"),
        ({"other_lens": (5, 2)}, "other_lens"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_config(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        needle.NeedleConfig(model="m", **kwargs)
