"""The RL guide's worked example runs as written: vLLM rollout, bitwise re-score, one step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "packages" / "bi-train" / "examples" / "on_policy_step.py"


def test_on_policy_step_example_reproduces_every_logprob() -> None:
    env = dict(os.environ)
    env.pop("VLLM_BATCH_INVARIANT", None)  # the example sets it itself, before importing vLLM
    bi_train_src = str(ROOT / "packages" / "bi-train" / "src")  # not installed in this group
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bi_train_src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "6/6 completions: trainer logprobs equal vLLM's bit for bit" in proc.stdout
    assert "one AdamW step taken" in proc.stdout
