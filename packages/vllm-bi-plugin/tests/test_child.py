from __future__ import annotations

import os
import sys
from pathlib import Path

from vllm_bi_plugin.child import KILLED, log_tail, run_streaming


def test_progress_lines_reach_say_and_everything_reaches_the_log(tmp_path: Path) -> None:
    code = (
        "import sys; print('out line'); sys.stderr.write('[p] step 1\\nnoise\\n[p] step 2\\n');"
        " sys.exit(3)"
    )
    said: list[str] = []
    log = tmp_path / "logs" / "child.log"
    status = run_streaming([sys.executable, "-c", code], os.environ, log, 60, "[p] ", said.append)
    assert status == 3
    assert said == ["step 1", "step 2"]
    text = log.read_text()
    assert "out line" in text and "noise" in text and "[p] step 2" in text
    assert log_tail(log, 1).strip() in {"[p] step 2", "out line"}


def test_watchdog_kills_a_child_past_its_time(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; time.sleep(30)"]
    status = run_streaming(cmd, os.environ, tmp_path / "slow.log", 0.5, "[p] ", print)
    assert status == KILLED
