"""A compiled Qwen3 decoder in batch-invariant mode gives a prompt the same logits in any batch.

``benchmarks/compile_bits.py`` on the tiny config, on CPU, in a child process with its own
Inductor cache (a cached graph would skip ir-dispatch's pass). With ir-dispatch's defaults
(reductions routed, eager casts kept) the compiled model must be bitwise invariant; the same
script found it batch-variant without them, here and on an H100.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_bits.py"


def test_compiled_tiny_decoder_is_batch_invariant_with_the_defaults(tmp_path: Path) -> None:
    env = os.environ | {
        "TRITON_INTERPRET": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }
    env.pop("IR_DISPATCH_LOWER_REDUCTIONS", None)
    env.pop("IR_DISPATCH_LOWER", None)
    args = ["--shape", "tiny", "--layers", "1", "--batch", "3", "--seq", "8",
            "--variants", "model,norms", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "compile_bits_tiny.json").read_text())
    assert list(payload)[:3] == ["device", "versions", "date"]
    rows = {row["variant"]: row for row in payload["results"]}
    assert set(rows) == {"eager", "model", "norms"}
    for name, row in rows.items():
        assert "error" not in row, row
        assert row["invariant"] is True and row["max_abs_diff"] == 0.0, (name, row)
    assert rows["norms"]["equals_eager"] is True  # routed mean + kept casts: eager's bits
