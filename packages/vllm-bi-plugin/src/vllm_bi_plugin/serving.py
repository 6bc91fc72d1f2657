"""vLLM's OpenAI-compatible server on loopback, for the tests that compare it with the engine.

One module so that the CPU test (``tests-integration/test_serve.py``) and the GPU script
(``tests-integration/gpu/serve_vllm_gpu.py``) start, query and stop the server alike. The
server is started through its module (``python -m vllm.entrypoints.openai.api_server``)
because the ``vllm`` script of some builds looks up package metadata named ``vllm`` and exits.
Every wait is bounded and the server's whole process group is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT_S = 300.0


class ServerError(RuntimeError):
    """The server exited, or was not healthy in time (the message holds its log tail)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(model: str, port: int, engine_args: Sequence[str] = ()) -> list[str]:
    """The API server's command line: token-id prompts (no tokenizer), loopback only."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--host", "127.0.0.1", "--port", str(port), "--skip-tokenizer-init", *engine_args,
    ]  # fmt: skip


@contextmanager
def running_server(
    cmd: Sequence[str], env: Mapping[str, str], log: Path, port: int, startup_timeout_s: float
) -> Iterator[str]:
    """Start the server, yield its base URL once ``/health`` answers, stop it on exit.

    Raises:
        ServerError: the server exited before it was up, or was not healthy in time.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log, startup_timeout_s)
        yield base
    finally:
        stop(proc)


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"the server exited with {proc.returncode} before it was up:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    raise ServerError(f"the server was not healthy after {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def post(url: str, body: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """POST ``body`` as JSON and return the JSON answer."""
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def greedy_completion(
    base: str, model: str, prompt: list[int], max_tokens: int
) -> dict[str, list[Any]]:
    """``max_tokens`` greedy tokens for a token-id prompt, with each token's logprob.

    Same shape as the needle runner's generations (``tokens``, ``logprobs``), so the two
    compare with ``==``: logprobs come back as JSON floats, which hold the float32 values
    exactly.
    """
    out = post(
        base + "/v1/completions",
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": 1,
            "ignore_eos": True,
            "return_tokens_as_token_ids": True,
        },
    )
    lp = out["choices"][0]["logprobs"]
    return {
        "tokens": [int(t.split(":", 1)[1]) for t in lp["tokens"]],
        "logprobs": [float(x) for x in lp["token_logprobs"]],
    }
