"""benchmarks/model_decoder.py (issue #4, model level) runs on CPU and writes the repo's one shape.

The GPU numbers come from the H100; here the ``--tiny`` config runs eager in both modes, in a
child process (as a user runs it), so a broken CLI, a transformers API change or a wrong JSON
shape shows up in CI rather than on the lent machine.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_module import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_decoder.py"
ROW_KEYS = {
    "shape", "phase", "batch", "seq", "compile", "mode", "reps", "median", "unit",
    "ratio_vs_default",
}  # fmt: skip


def run_tiny(out: Path, *extra: str, compile_mode: str = "eager", rounds: int = 2) -> dict:
    env = os.environ | {"TRITON_INTERPRET": "1", "OUT": str(out.parent)}
    if compile_mode != "eager":  # a fresh Inductor cache: a cached graph skips ir-dispatch's pass
        env["TORCHINDUCTOR_CACHE_DIR"] = str(out.parent / "inductor")
    args = ["--tiny", "--compile", compile_mode, "--reps", "5", "--warmup", "0", "--steps", "2",
            "--rounds", str(rounds), *extra]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_tiny_eager_both_modes_json_shape(tmp_path: Path) -> None:
    payload = run_tiny(tmp_path / "model_decoder.json")

    assert list(payload)[:3] == ["device", "versions", "date"]
    assert payload["versions"]["torch"] and payload["versions"]["transformers"]
    rows = payload["results"]
    assert {r["mode"] for r in rows} == {"default", "batch_invariant"}
    assert {(r["phase"], r["compile"]) for r in rows} == {
        ("prefill", "eager"), ("decode", "eager"),
    }  # fmt: skip
    for row in rows:
        assert not ROW_KEYS - set(row), row
        assert "error" not in row, row["error"]
        assert len(row["reps"]) == 10 and row["median"] > 0 and row["unit"] == "tokens/s"
        assert len(row["round_medians"]) == 2  # both rounds pooled into one row
        assert math.isfinite(row["ratio_vs_default"])
        if row["mode"] == "default":
            assert row["ratio_vs_default"] == 1.0
        else:
            assert row["providers_used"], "BI mode dispatched nothing to the registry"
    assert payload["summary"]["target_ratio"] == 0.8
    checks = payload["invariance"]
    assert {c["mode"] for c in checks} == {"default", "batch_invariant"}
    for check in checks:
        assert check["compile"] == "eager" and check["probe_rows"] == [0, 1], check
    assert payload["summary"]["bi_invariant"] is True


def test_interleaved_modes_pair_their_repetitions(tmp_path: Path) -> None:
    """``--interleave``: both modes per repetition; BI rows carry the per-pair ratios."""
    payload = run_tiny(tmp_path / "model_decoder.json", "--interleave")
    assert payload["setup"]["interleave"] is True
    rows = payload["results"]
    assert len(rows) == 8 and {r["mode"] for r in rows} == {"default", "batch_invariant"}
    for row in rows:
        assert "error" not in row, row["error"]
        assert len(row["reps"]) == 10 and len(row["round_medians"]) == 2
        if row["mode"] == "default":
            assert "paired_ratios" not in row
            continue
        assert row["providers_used"], "BI mode dispatched nothing to the registry"
        default = next(
            r for r in rows
            if r["mode"] == "default" and (r["phase"], r["batch"]) == (row["phase"], row["batch"])
        )  # fmt: skip
        expected = [b / d for b, d in zip(row["reps"], default["reps"], strict=True)]
        assert row["paired_ratios"] == pytest.approx(expected)
        assert row["paired_ratio"] == pytest.approx(statistics.median(expected))


def test_the_probe_check_fails_when_a_row_depends_on_the_batch() -> None:
    """``probe_rows_match`` is the benchmark's invariance check: it must be able to fail."""
    module = load_script(SCRIPT)
    case = module.Case("prefill", 5, 3)

    class Logits:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    def per_row(input_ids: torch.Tensor, **_: object) -> Logits:
        return Logits(input_ids.float().cumsum(-1)[:, -1:, None])

    def batch_variant(input_ids: torch.Tensor, **_: object) -> Logits:
        return Logits(per_row(input_ids).logits + input_ids.shape[0])

    assert module.probe_rows_match(per_row, case, vocab=50) == ([0, 2, 4], True)
    assert module.probe_rows_match(batch_variant, case, vocab=50) == ([0, 2, 4], False)


def test_the_decode_check_fails_when_a_row_depends_on_the_batch() -> None:
    """``decode_rows_match`` (the decode half of the check) must be able to fail too."""
    module = load_script(SCRIPT)
    model = module.build_model(module.SHAPES["tiny"], 1, 32)
    case = module.Case("decode", 3, 8)

    def batch_variant(**kwargs: object) -> object:
        out = model(**kwargs)
        out.logits = out.logits + kwargs["input_ids"].shape[0]  # type: ignore[union-attr]
        return out

    with torch.inference_mode():
        assert module.decode_rows_match(model, model, case, 256, steps=2) == ([0, 1, 2], True)
        found = module.decode_rows_match(model, batch_variant, case, 256, steps=2)
    assert found == ([0, 1, 2], False)


def test_compiled_modes_interleave_through_wrappers_of_their_own(tmp_path: Path) -> None:
    """``--interleave --compile compile``: each mode runs the graph compiled in it (BI rows reach
    the registry, default rows never do) and BI mode's compiled model stays invariant."""
    payload = run_tiny(tmp_path / "model_decoder.json", "--interleave", compile_mode="compile",
                       rounds=1)  # fmt: skip
    rows = payload["results"]
    assert len(rows) == 8 and {r["compile"] for r in rows} == {"compile"}
    for row in rows:
        assert "error" not in row, row["error"]
        assert len(row["reps"]) == 5
        if row["mode"] == "default":
            assert row["providers_used"] == {}, "default mode ran a batch-invariant graph"
        else:
            assert row["providers_used"], "BI mode ran a graph compiled outside the mode"
            assert len(row["paired_ratios"]) == 5
    bi_checks = [c for c in payload["invariance"] if c["mode"] == "batch_invariant"]
    assert {c["phase"] for c in bi_checks} == {"prefill", "decode"}
    assert all(c["bitwise_equal"] is True for c in bi_checks), bi_checks


def test_replot_reads_its_own_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model_decoder.json"
    row = {
        "shape": "tiny", "phase": "prefill", "batch": 1, "seq": 8, "compile": "eager",
        "reps": [1.0], "median": 1.0, "unit": "tokens/s",
    }  # fmt: skip
    rows = [row | {"mode": "default", "ratio_vs_default": 1.0}]
    rows.append(row | {"mode": "batch_invariant", "ratio_vs_default": 0.9, "median": 0.9})
    path.write_text(json.dumps({"device": "cpu", "versions": {}, "date": "x", "results": rows}))
    module = load_script(SCRIPT)
    module.main(["--replot", str(path)])
    printed = capsys.readouterr().out
    assert "batch_invariant" in printed and "target >= 0.8: met" in printed


def test_graphs_rows_are_reported_beside_the_target_not_in_it() -> None:
    module = load_script(SCRIPT)
    row = {"shape": "tiny", "phase": "decode", "batch": 1, "seq": 8, "mode": "batch_invariant"}
    rows = [row | {"compile": "eager", "ratio_vs_default": 0.85},
            row | {"compile": "compile", "ratio_vs_default": 0.9},
            row | {"compile": "graphs", "ratio_vs_default": 0.5}]  # fmt: skip
    verdict = module.summary(rows)
    assert verdict["target_met"] and verdict["min_ratio"] == 0.85
    assert verdict["graphs_min_ratio"] == 0.5 and verdict["rows_below_target"] == 0
    verdict = module.summary([*rows[:2], row | {"compile": "eager", "ratio_vs_default": 0.7}])
    assert not verdict["target_met"] and verdict["graphs_min_ratio"] is None


def test_graphs_compiles_with_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script(SCRIPT)
    calls: list[dict] = []
    monkeypatch.setattr(module.torch, "compile", lambda model, **kw: calls.append(kw) or model)
    model = object()
    assert module.forward_fn(model, "eager") is model and calls == []
    module.forward_fn(model, "graphs")
    module.forward_fn(model, "compile")
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}, {"dynamic": False}]


def test_profile_model_tiny_writes_kernels_per_mode(tmp_path: Path) -> None:
    """benchmarks/profile_model.py (the model-level profile) runs and writes the common shape."""
    script = SCRIPT.with_name("profile_model.py")
    env = os.environ | {"TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--shape", "tiny", "--steps", "2", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "profile_model_tiny.json").read_text())
    assert list(payload)[:3] == ["device", "versions", "date"]
    rows = payload["results"]
    assert {(r["phase"], r["mode"]) for r in rows} == {
        (phase, mode) for phase in ("prefill", "decode") for mode in ("default", "batch_invariant")
    }
    for row in rows:
        assert row["wall_ms"] > 0 and row["reps"] == [row["wall_ms"]]
        assert math.isfinite(row["ratio_vs_default"]) and isinstance(row["top_kernels"], list)
        assert row["host_ms"] > 0 and row["wall_unprofiled_ms"] >= row["host_ms"]
        assert row["gpu_syncs"] == 0  # no GPU here: nothing can be counted
        assert isinstance(row["launch_counts"], dict)
