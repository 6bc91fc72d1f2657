"""benchmarks/host_cost.py (#4, #10: host cost per call of these kernels) runs on CPU.

The numbers that matter come from the GPU machine; here ``--tiny`` runs every path under
Triton's interpreter in a child process, so a broken CLI, an ir-dispatch API change or a wrong
JSON shape shows up in CI rather than on the lent machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "host_cost.py"
PATHS = {"torch", "kernel", "select", "ir_op"}  # "graph" needs CUDA
OPS = {"linear", "rms_norm", "fused_add_rms_norm", "mean", "softmax", "log_softmax"}


# numpy 2.5 turned the "array with ndim > 0 to scalar" deprecation into an error, which Triton
# 3.6's interpreter hits in the GEMM (seen on the GPU machine's image, numpy 2.5.2).
NUMPY_BREAKS_INTERPRETER = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 5)


@pytest.mark.skipif(
    NUMPY_BREAKS_INTERPRETER,
    reason=f"numpy {np.__version__} breaks Triton's interpreter (array-to-scalar is an error)",
)
def test_tiny_run_writes_every_path_with_reps_and_ratio(tmp_path: Path) -> None:
    # CPU tensors under the interpreter, also on a GPU machine.
    env = os.environ | {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = ["--tiny", "--calls", "2", "--reps", "2", "--warmup", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((tmp_path / "host_cost.json").read_text())
    assert list(payload)[:3] == ["device", "versions", "date"]
    rows = payload["results"]
    assert {r["op"] for r in rows} == OPS
    for op in OPS:
        assert {r["path"] for r in rows if r["op"] == op} >= PATHS
    for op in ("linear", "mean", "softmax", "log_softmax"):  # ops with an aten overload
        assert {"aten", "aten_select_every_call"} <= {r["path"] for r in rows if r["op"] == op}
    for r in rows:
        assert len(r["reps"]) == 2 and r["value"] > 0
        assert r["ratio_vs_default"] > 0
    torch_rows = [r for r in rows if r["path"] == "torch"]
    assert all(r["ratio_vs_default"] == 1.0 for r in torch_rows)
    assert payload["profile_linear_ir_op"], "the cProfile lines are missing"
