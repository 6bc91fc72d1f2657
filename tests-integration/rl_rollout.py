"""The rollout half of the RL check: vLLM samples completions and reports their logprobs.

Run in its own process (vLLM's mode and the plugin's hooks are per process)::

    python rl_rollout.py CONFIG.json OUT.json

``CONFIG.json`` holds ``model``, ``prompts`` (token id lists), ``samples``, ``max_tokens``,
``temperatures``, ``seed``, ``engine`` (extra ``vllm.LLM`` keyword arguments) and optionally
``rescore``. ``OUT.json`` gets one record per completion: the temperature, prompt index, sampled
token ids and the logprob vLLM reported for each (as Python floats, which carry float32 values
exactly), plus the engine's ``logprobs_mode`` and KV block size, which the scorer needs to mirror,
``seconds`` (wall time of the sampling and of the re-scoring) and vLLM's version.

With ``rescore: true`` the same engine then scores every prompt + completion again as one
prefill (``SamplingParams(max_tokens=1, prompt_logprobs=0)``, all sequences in one batch) and
each record gets ``prefill_logprobs``: the prompt logprob vLLM reports for each completion token.
vLLM 0.32 computes prompt logprobs from the raw logits (``log_softmax`` in fp32, no temperature,
no logits processors, whatever ``logprobs_mode`` says), and a request with ``prompt_logprobs``
skips reading the prefix cache, so every token is recomputed; compare them with decode
logprobs of a ``raw_logprobs`` engine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

ENGINE_DEFAULTS: dict[str, Any] = {
    "skip_tokenizer_init": True,
    "max_model_len": 512,
    "seed": 0,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 128 << 20,
}


def rollout(cfg: dict[str, Any]) -> dict[str, Any]:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_bi_plugin import plugin

    llm = LLM(model=cfg["model"], **{**ENGINE_DEFAULTS, **cfg.get("engine", {})})
    vllm_config = llm.llm_engine.vllm_config
    prompts = [TokensPrompt(prompt_token_ids=p) for p in cfg["prompts"]]
    records = []
    t0 = time.perf_counter()
    for t_index, temperature in enumerate(cfg["temperatures"]):
        params = SamplingParams(
            n=cfg["samples"], temperature=temperature, seed=cfg["seed"] + t_index,
            max_tokens=cfg["max_tokens"], logprobs=0, ignore_eos=True,
        )  # fmt: skip
        outs = llm.generate(prompts, params, use_tqdm=False)
        for p_index, out in enumerate(outs):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                steps = zip(tokens, completion.logprobs, strict=True)
                logprobs = [float(step[t].logprob) for t, step in steps]
                records.append(
                    {"temperature": temperature, "prompt": p_index, "tokens": tokens,
                     "logprobs": logprobs}
                )  # fmt: skip
    seconds = {"generate": time.perf_counter() - t0}
    if cfg.get("rescore"):
        t0 = time.perf_counter()
        rescore(llm, cfg["prompts"], records)
        seconds["rescore"] = time.perf_counter() - t0
    installed = plugin.installed()
    return {
        "records": records,
        "logprobs_mode": str(vllm_config.model_config.logprobs_mode),
        "block_size": int(vllm_config.cache_config.block_size),
        "dtype": str(vllm_config.model_config.dtype),
        "plugin": None if installed is None else installed.summary(),
        "seconds": seconds,
        "vllm": vllm.__version__,
    }


def rescore(llm: Any, prompts: list[list[int]], records: list[dict[str, Any]]) -> None:
    """Add ``prefill_logprobs`` to each record: its completion scored again as a prefill."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    seqs = [TokensPrompt(prompt_token_ids=prompts[r["prompt"]] + r["tokens"]) for r in records]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    outs = llm.generate(seqs, params, use_tqdm=False)
    for r, out in zip(records, outs, strict=True):
        n, scored = len(prompts[r["prompt"]]), out.prompt_logprobs
        assert scored is not None and len(scored) == n + len(r["tokens"])
        r["prefill_logprobs"] = [float(scored[n + j][t].logprob) for j, t in enumerate(r["tokens"])]


def main() -> int:
    cfg_path, out_path = sys.argv[1:3]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with open(cfg_path) as f:
        cfg = json.load(f)
    result = rollout(cfg)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
