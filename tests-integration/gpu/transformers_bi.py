"""GPU proof for `with batch_invariant():` outside vLLM (issue #7, "Outside vLLM").

A `transformers` Qwen3 (random weights, Qwen3-0.6B shape, fewer layers) generates greedily; the
needle prompt's tokens and per-step logprobs must be bitwise equal alone and inside batches of
1-32 equal-length prompts (no padding: left padding shifts the needle inside each softmax and
P@V reduction, which no kernel can make invariant) at the front, middle and back - inside the
context with the aten overrides installed, and shown to differ outside it.

Run on the GPU machine (needs bi_triton_ascend and ir_dispatch on PYTHONPATH):
    python tests-integration/gpu/transformers_bi.py --out $OUT/transformers_bi.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import torch

import ir_dispatch as ird

BATCH_SIZES = (1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32)
POSITIONS = ("front", "middle", "back")


def build_model(layers: int) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()
    return model


@torch.inference_mode()
def generate(
    model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decode with a KV cache; returns (token ids [B, T], fp32 logprobs of them [B, T])."""
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    tokens = out.sequences[:, prompts.shape[1] :]
    logits = torch.stack(out.logits, dim=1)  # [B, T, vocab]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0]
    return tokens, logprobs


def place(
    needle: torch.Tensor, others: torch.Tensor, size: int, where: str
) -> tuple[torch.Tensor, int]:
    index = {"front": 0, "middle": size // 2, "back": size - 1}[where]
    rows = list(others[: size - 1])
    rows.insert(index, needle)
    return torch.stack(rows), index


def run_mode(
    model: torch.nn.Module, needle: torch.Tensor, others: torch.Tensor, new_tokens: int
) -> dict:
    alone_tokens, alone_lp = generate(model, needle[None], new_tokens)
    cases, equal = [], 0
    for size in BATCH_SIZES:
        for where in POSITIONS if size > 1 else ("front",):
            batch, index = place(needle, others, size, where)
            tokens, lp = generate(model, batch, new_tokens)
            same = bool(
                torch.equal(tokens[index], alone_tokens[0]) and torch.equal(lp[index], alone_lp[0])
            )
            max_diff = float((lp[index] - alone_lp[0]).abs().max())
            cases.append(
                {
                    "batch": size,
                    "position": where,
                    "bitwise_equal": same,
                    "max_logprob_diff": max_diff,
                }
            )
            equal += same
    return {"cases": cases, "equal": equal, "total": len(cases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import transformers

    import bi_triton_ascend  # registers the Triton providers

    model = build_model(args.layers)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 151936, (max(BATCH_SIZES), args.prompt_len), generator=gen).cuda()
    needle, others = prompts[0], prompts[1:]

    started = time.perf_counter()
    default = run_mode(model, needle, others, args.new_tokens)
    t_default = time.perf_counter() - started
    started = time.perf_counter()
    with ird.aten_overrides(), ird.batch_invariant(), ird.recording() as rec:
        invariant = run_mode(model, needle, others, args.new_tokens)
    t_invariant = time.perf_counter() - started

    report = {
        "device": torch.cuda.get_device_name(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "bi_triton_ascend": getattr(bi_triton_ascend, "__version__", "?"),
            "python": platform.python_version(),
        },
        "date": datetime.date.today().isoformat(),
        "setup": vars(args) | {"batch_sizes": BATCH_SIZES, "positions": POSITIONS, "attn": "eager"},
        "providers_used": rec.providers(),
        "results": [
            {"mode": "default", "seconds": t_default, **default},
            {"mode": "batch_invariant", "seconds": t_invariant, **invariant},
        ],
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for name, res, secs in (
        ("default", default, t_default),
        ("batch_invariant", invariant, t_invariant),
    ):
        print(f"{name}: {res['equal']}/{res['total']} placements bitwise equal ({secs:.1f}s)")
    print("providers:", rec.providers())
    ok = invariant["equal"] == invariant["total"] and default["equal"] < default["total"]
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
