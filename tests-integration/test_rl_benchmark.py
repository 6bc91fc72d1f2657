"""benchmarks/rl_benchmark.py: issue #13's trainer and rollout results joined into one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from script_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_benchmark.py"


bench = load_script(SCRIPT)


def _trainer(bi_tps: float, device: str = "NVIDIA H100 80GB HBM3 (sm90, 132 SMs)") -> dict:
    return {
        "device": device, "versions": {"torch": "2.11.0"}, "date": "2026-11-28T03:00:00+00:00",
        "batch": 16, "seq_len": 2048,
        "results": [
            {"trainer": "hf_default", "tokens_per_s": 100.0, "reps_s": [1.0, 1.0]},
            {"trainer": "bi", "tokens_per_s": bi_tps, "reps_s": [1.4, 1.5]},
        ],
    }  # fmt: skip


def _rollout(decode: float, single_ms: float, modes: tuple[str, ...] = ("default", "plugin")):
    rows: list[dict[str, Any]] = []
    for mode in modes:
        ours = mode != "default"
        rows.append(
            {
                "shape": "0.6b",
                "load": "decode-heavy",
                "mode": mode,
                "median": decode if ours else 100.0,
                "unit": "generated tokens/s",
                "reps": [1.0],
                "ratio_vs_default": decode / 100.0 if ours else 1.0,
            }
        )
        rows.append({"shape": "0.6b", "load": "single-stream", "mode": mode,
                     "median": single_ms if ours else 2.0, "unit": "ms/token", "reps": [1.0],
                     "ratio_vs_default": 2.0 / single_ms if ours else 1.0})  # fmt: skip
    return {"device": "NVIDIA H100 80GB HBM3 (132 SMs, sm90)", "versions": {"vllm": "0.26.0"},
            "date": "2026-11-28T03:30:00+00:00", "results": rows}  # fmt: skip


def test_targets_are_judged_per_row_and_all_together() -> None:
    doc = bench.combine(_trainer(bi_tps=70.0), _rollout(decode=96.0, single_ms=2.2))
    by_load = {r["load"]: r for r in doc["results"]}
    trainer = by_load["fwd+bwd, packed 16 x 2048"]
    assert trainer["time_ratio_vs_default"] == pytest.approx(100 / 70) and trainer["met"]
    assert by_load["decode-heavy"]["met"] and by_load["decode-heavy"]["ratio_vs_default"] == 0.96
    assert not by_load["single-stream"]["met"]  # 2.0 / 2.2 = 0.91 < 0.95
    assert doc["summary"]["met"] is False
    assert list(doc)[:4] == ["device", "versions", "date", "sources"]
    assert doc["date"] == "2026-11-28T03:30:00+00:00"
    assert bench.combine(_trainer(70.0), _rollout(96.0, 2.0))["summary"]["met"] is True
    assert not bench.combine(_trainer(60.0), _rollout(96.0, 2.0))["results"][0]["met"]


def test_files_from_other_gpus_or_without_both_modes_are_refused() -> None:
    with pytest.raises(bench.InputError, match="different GPUs"):
        bench.combine(_trainer(70.0, device="NVIDIA H200 (sm90, 132 SMs)"), _rollout(96.0, 2.0))
    with pytest.raises(bench.InputError, match="decode-heavy"):
        bench.combine(_trainer(70.0), _rollout(96.0, 2.0, modes=("plugin",)))
    with pytest.raises(bench.InputError, match="'bi' and 'hf_default'"):
        bench.combine({"device": "NVIDIA H100 80GB HBM3", "results": []}, _rollout(96.0, 2.0))


def test_the_script_writes_the_combined_file(tmp_path: Path) -> None:
    trainer, rollout, out = tmp_path / "t.json", tmp_path / "r.json", tmp_path / "rl.json"
    trainer.write_text(json.dumps(_trainer(70.0)))
    rollout.write_text(json.dumps(_rollout(96.0, 2.0)))
    args = ["--trainer", str(trainer), "--rollout", str(rollout), "--out", str(out)]
    assert bench.main(args) == 0
    doc = json.loads(out.read_text())
    assert [r["part"] for r in doc["results"]] == ["trainer", "rollout", "rollout"]
    assert doc["summary"] == {"met": True}
