"""Run one engine in a child process, with its log on disk and its progress on screen.

vLLM's mode and the plugin's hooks are per process, so the demo, the GPU tests and the
benchmarks start one child per mode. This is the one loop that runs such a child: stdout and
stderr go to a log file, stderr lines that start with a given prefix are passed on as progress,
and a watchdog kills the child when it runs past its time.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

KILLED = -9
"""The exit status :func:`run_streaming` reports for a child killed by its watchdog."""


def run_streaming(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    prefix: str,
    say: Callable[[str], None],
) -> int:
    """Run ``cmd``; log everything to ``log_path``; pass ``prefix``-ed stderr lines to ``say``.

    Args:
        cmd: the child's command line.
        env: its environment.
        log_path: the log file (its folder is created).
        timeout_s: seconds before the child is killed.
        prefix: stderr lines starting with it are progress; ``say`` gets them without it.
        say: where progress goes.

    Returns:
        The child's exit status, :data:`KILLED` when the watchdog killed it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd), env=dict(env), stdout=log, stderr=subprocess.PIPE, text=True
        )
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        try:
            for line in proc.stderr or ():
                log.write(line)
                if line.startswith(prefix):
                    say(line[len(prefix) :].rstrip())
            return proc.wait()
        finally:
            watchdog.cancel()


def log_tail(log_path: Path, lines: int) -> str:
    """The last ``lines`` lines of a child's log (undecodable bytes replaced)."""
    text = log_path.read_text(errors="replace")
    return "".join(text.splitlines(keepends=True)[-lines:])
