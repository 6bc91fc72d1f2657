from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_bi_plugin import cli, demo, info


def test_parser_knows_the_three_commands() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--batch-sizes", "2,8", "--max-tokens", "4"])
    assert args.command == "demo" and args.batch_sizes == [2, 8] and args.max_tokens == 4
    assert parser.parse_args(["info", "--json"]).json
    args = parser.parse_args(["check", "m:f", "--positions", "front,back"])
    assert args.positions == ["front", "back"] and args.mode == "batch_invariant"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--batch-sizes", "2,x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["launch"])


def test_demo_rejects_batch_of_one(capsys) -> None:
    with pytest.raises(SystemExit, match="must all be >= 2"):
        cli.main(["demo", "--batch-sizes", "1,4"])


def test_check_a_factory_module(capsys) -> None:
    code = cli.main(["check", "cli_factories:module_and_probe", "--batch-sizes", "1,2,5", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "batch_invariant" and out["ok"] is True and code == 0
    assert {(r["batch_size"], r["position"]) for r in out["runs"]} >= {(2, "front"), (5, "back")}


def test_check_needs_a_probe_shape_for_a_bare_module() -> None:
    with pytest.raises(SystemExit, match="--probe-shape"):
        cli.main(["check", "cli_factories:module_only"])
    assert (
        cli.main(
            ["check", "cli_factories:module_only", "--probe-shape", "32", "--batch-sizes", "2"]
        )
        == 0
    )


def test_check_rejects_a_non_model_directory(tmp_path) -> None:
    pytest.importorskip("transformers", reason="model directories are loaded with transformers")
    with pytest.raises(SystemExit, match="neither a model directory"):
        cli.main(["check", str(tmp_path)])


@pytest.fixture
def no_triton_provider() -> Iterator[None]:
    """The registry as a process that never imported bi_triton_ascend sees it.

    Another test (the plugin's register on CPU) may have imported it, which registers its
    ``triton`` kernels for the rest of the process; restored afterwards.
    """
    bta = sys.modules.get("bi_triton_ascend")
    if bta is None or not bta.supported:
        yield
        return
    bta.unregister()
    try:
        yield
    finally:
        bta.register()


def test_info_without_vllm(monkeypatch, capsys, no_triton_provider) -> None:
    monkeypatch.setattr(info, "vllm_installed", lambda: False)
    monkeypatch.setattr(info, "detect_layout", lambda: None)
    monkeypatch.setattr(info.plugin, "detect_platform", lambda: "cpu")
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "ir-dispatch" in text and "mm " in text
    data = info.gather(run_dry=False)
    assert data["platform"] == "cpu" and "would_install" not in data
    assert data["kernels"]["mm"] == ["cpu"]
    assert data["kernels"]["linear"] == ["composite (mm/addmm)"]


def _fake_demo() -> dict:
    def case(bs, pos, same, diff):
        return {"batch_size": bs, "position": pos, "identical": same, "tokens_equal": True,
                "max_abs_logprob_diff": diff, "first_diff_step": None if same else 1,
                "seconds": 2.0, "generated_tokens": 32 * bs, "tokens": [1],
                "logprobs": [-1.0]}  # fmt: skip

    def result(same: bool) -> dict:
        cases = [case(bs, p, same or (bs, p) == (4, "front"), 0.0 if same else 1.5e-2)
                 for bs in (4, 16) for p in ("front", "back")]  # fmt: skip
        for c in cases:
            if c["identical"]:
                c["max_abs_logprob_diff"] = 0.0
        return {
            "config": {"max_tokens": 32},
            "engine_seconds": 5.0,
            "alone": {"tokens": [1] * 32},
            "cases": cases,
        }

    return {
        "model": {},
        "compile": False,
        "modes": {"default": result(False), "plugin": result(True)},
    }


def test_demo_table_and_summary() -> None:
    d = _fake_demo()
    s = demo.summarize(d)
    assert s["plugin"]["identical"] == 4 and s["default"]["identical"] == 1
    assert s["default"]["max_abs_logprob_diff"] == pytest.approx(1.5e-2)
    assert s["plugin"]["tokens_per_s"] == pytest.approx((32 * 4 + 32 * 4 + 32 * 16 * 2) / 8.0)
    table = demo.format_table(d)
    assert "vLLM + vllm-bi-plugin" in table and "identical to alone" in table
    assert "batch  16, back" in table and "differs (0.015, step 1)" in table
    assert "4/4" in table and "1/4" in table


def test_demo_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason='the plot needs matplotlib ("vllm-bi-plugin[cpu]")')
    path = demo.plot(_fake_demo(), tmp_path / "demo.png")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
