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


def test_run_in_child_passes_config_env_and_timeout_and_reads_the_result(
    tmp_path, monkeypatch
) -> None:
    """The one way the GPU scripts start a needle engine: config file in, result file out."""
    import json as _json
    from pathlib import Path

    from vllm_bi_plugin import child, needle

    seen: dict = {}

    def fake_run(cmd, env, log, timeout_s, prefix, say) -> int:
        seen.update(cmd=cmd, env=dict(env), log=log, timeout=timeout_s, prefix=prefix)
        cfg = _json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
        seen["cfg"] = cfg
        with open(cmd[cmd.index("--out") + 1], "w") as f:
            _json.dump({"cases": [], "model": cfg["model"]}, f)
        return 0

    monkeypatch.setattr(child, "run_streaming", fake_run)
    cfg = needle.NeedleConfig(model="/m", batch_sizes=[2, 3])
    done = needle.run_in_child(cfg, {"X": "1"}, tmp_path / "a.log", 12.5)
    assert done.code == 0 and done.result == {"cases": [], "model": "/m"} and done.log_tail == ""
    assert seen["cmd"][1:3] == ["-m", "vllm_bi_plugin.needle"]
    assert seen["env"] == {"X": "1"} and seen["timeout"] == 12.5 and seen["prefix"] == "[needle] "
    assert seen["cfg"]["batch_sizes"] == [2, 3]


def test_run_in_child_failure_keeps_the_log_tail(tmp_path, monkeypatch) -> None:
    from vllm_bi_plugin import child, needle

    def fake_run(cmd, env, log, timeout_s, prefix, say) -> int:
        log.write_text("x" * 5000 + "engine died")
        return child.KILLED

    monkeypatch.setattr(child, "run_streaming", fake_run)
    done = needle.run_in_child(needle.NeedleConfig(model="/m"), {}, tmp_path / "b.log", 1.0)
    assert done.code == child.KILLED and done.result is None
    assert done.log_tail.endswith("engine died") and len(done.log_tail) == needle.LOG_TAIL_CHARS
