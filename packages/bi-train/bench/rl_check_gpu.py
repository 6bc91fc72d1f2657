"""GPU check: vLLM rollout logprobs vs bi-train's ``transformers`` scoring, and trainer speed.

NOT RUN YET (written on a CPU-only machine). Steps, each its own process (``all`` runs them in
order, each under a timeout), on one H100 with vLLM 0.26 staged per
``shared/gpu-vllm/README.md`` and the plugin installed with its ``.dist-info``::

    export PYTHONPATH=/tmp/vllm-site:packages/ir-dispatch/src:packages/bi-triton-ascend/src:\\
    packages/bi-train/src:packages/vllm-bi-plugin/src
    python packages/bi-train/bench/rl_check_gpu.py all           # or one step at a time:
    python packages/bi-train/bench/rl_check_gpu.py make-model    # random Qwen3, bf16
    python packages/bi-train/bench/rl_check_gpu.py rollout --mode plugin   # VLLM_BATCH_INVARIANT=1
    python packages/bi-train/bench/rl_check_gpu.py rollout --mode default
    python packages/bi-train/bench/rl_check_gpu.py score         # per rollout x trainer x layout
    python packages/bi-train/bench/rl_check_gpu.py bench         # fwd+bwd tokens/s, packed 16x2048

Rollout: 64 prompts of 16-1024 random tokens, ``n=4`` samples each at temperature 1 (seeded),
512 new tokens (``ignore_eos``), ``logprobs=0`` (the sampled token's raw logprob). Scoring: the
same model in ``transformers``, trainer modes ``bi`` (:func:`bi_train.patch_qwen3` +
``batch_invariant()``) and ``hf_default`` (plain ``transformers``, sdpa), layouts ``alone``
(batch 1), ``right_padded``/``left_padded`` (batches of 16) and ``packed`` (one row,
``position_ids`` restarting; ``bi`` only). Each row of ``score.json`` counts the tokens whose
logprob is not bitwise vLLM's, with max/mean ``|diff|``.

Known reason for mismatches to look at first: with the plugin, vLLM 0.26 on CUDA keeps its own
attention backend (FlashAttention 3, ``num_splits=1``), while the trainer runs
``bi_triton_ascend``'s varlen kernel; bitwise agreement needs vLLM's attention served by the
same kernel family. RoPE: ``--eager`` (default) keeps vLLM's per-op rounding (its CUDA rotary
kernel); a compiled vLLM lowers the native RoPE through Inductor (fp32, one rounding), which
bi-train does not reproduce. Large files go to ``$RL_CHECK_DIR`` (default ``/tmp/rl_check``);
only JSON goes to ``$OUT``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORK = Path(os.environ.get("RL_CHECK_DIR", "/tmp/rl_check"))
OUT = Path(os.environ.get("OUT", "/tmp/rl_check_out"))
MODEL = WORK / "model"
BENCH_MODEL = WORK / "bench_model"
# ``cpu`` (with TRITON_INTERPRET=1 and a tiny SHAPE) only to smoke-test the scoring code.
DEVICE = os.environ.get("RL_CHECK_DEVICE", "cuda")
# Qwen3-0.6B's layer shape (head 128, GQA 16/8), 4 layers, the real vocab.
SHAPE: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
# The trainer benchmark keeps the layer shape; a 32k vocab keeps 32768 x vocab logits in memory.
BENCH_VOCAB = 32768
PROMPTS, SAMPLES, NEW_TOKENS, MIN_LEN, MAX_LEN = 64, 4, 512, 16, 1024
PAD_BATCH = 16
PACK_BUDGET = 16384  # tokens per packed row while scoring
ENV = {
    "VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo",
    "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}  # fmt: skip


def _versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("vllm", "transformers", "triton"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # record why, keep going
            out[name] = f"unavailable: {type(exc).__name__}"
    return out


def _write(name: str, results: Any, **extra: Any) -> None:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **extra,
        "results": results,
    }
    (OUT / name).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1)[:4000])


# ----------------------------------------------------------------------------------- model
def make_model(path: Path, vocab: int) -> None:
    """A random bf16 Qwen3 with init std 0.1 (peaked logits), written with save_pretrained."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(**{**SHAPE, "vocab_size": vocab})
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(path)
    print("wrote", path)


def _prompts() -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(1234)
    lens = torch.randint(MIN_LEN, MAX_LEN + 1, (PROMPTS,), generator=gen).tolist()
    return [torch.randint(0, SHAPE["vocab_size"], (n,), generator=gen).tolist() for n in lens]


# --------------------------------------------------------------------------------- rollout
def rollout(mode: str, eager: bool) -> None:
    """Generate with vLLM (``plugin``: ``VLLM_BATCH_INVARIANT=1``, set before vLLM imports)."""
    os.environ.update(ENV)
    os.environ["VLLM_BATCH_INVARIANT"] = "1" if mode == "plugin" else "0"
    from importlib.metadata import entry_points

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    plugins = [ep.value for ep in entry_points(group="vllm.general_plugins")]
    if mode == "plugin" and not any("vllm_bi_plugin" in p for p in plugins):
        raise SystemExit(f"vllm-bi-plugin is not installed as a vLLM plugin (found {plugins})")
    llm = LLM(
        model=str(MODEL), skip_tokenizer_init=True, dtype="bfloat16", seed=0,
        max_model_len=MAX_LEN + NEW_TOKENS + 16, gpu_memory_utilization=0.6, enforce_eager=eager,
    )  # fmt: skip
    prompts = _prompts()
    params = [
        SamplingParams(
            n=SAMPLES,
            temperature=1.0,
            seed=10_000 + i,
            max_tokens=NEW_TOKENS,
            ignore_eos=True,
            logprobs=0,
            detokenize=False,
        )
        for i in range(PROMPTS)
    ]
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    seconds = time.perf_counter() - t0
    rows = []
    for prompt, out in zip(prompts, outs, strict=True):
        for sample in out.outputs:
            ids = list(sample.token_ids)
            lps = [step[tok].logprob for tok, step in zip(ids, sample.logprobs, strict=True)]
            rows.append({"prompt": prompt, "tokens": ids, "logprobs": lps})
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(rows, WORK / f"rollout_{mode}.pt")
    n_tok = sum(len(r["tokens"]) for r in rows)
    _write(
        f"rollout_{mode}.json",
        [{"mode": mode, "sequences": len(rows), "tokens": n_tok, "seconds": seconds}],
        plugins=plugins, enforce_eager=eager,
        attention_backend=os.environ.get("VLLM_ATTENTION_BACKEND", "vLLM default"),
    )  # fmt: skip


# ---------------------------------------------------------------------------------- scoring
def _hidden(model: Any, ids: Any, mask: Any = None, pos: Any = None) -> Any:
    return model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state


def _token_lps(model: Any, rows: Any, targets: Any) -> Any:
    import bi_train

    return bi_train.token_logprobs(model.lm_head(rows), targets)


def _score_layout(model: Any, seqs: list[dict], layout: str, device: Any) -> list[Any]:
    """vLLM-comparable logprobs of each sequence's generated tokens, computed in ``layout``."""
    import torch

    def full(s: dict) -> Any:
        return torch.tensor(s["prompt"] + s["tokens"][:-1], device=device)

    def pick(hidden_rows: Any, s: dict) -> Any:
        p = len(s["prompt"])
        targets = torch.tensor(s["tokens"], device=device)
        return _token_lps(model, hidden_rows[p - 1 :], targets).cpu()

    out: list[Any] = []
    if layout == "alone":
        for s in seqs:
            out.append(pick(_hidden(model, full(s)[None])[0], s))
    elif layout == "packed":
        group: list[dict] = []
        for nxt in [*seqs, None]:
            if nxt is not None and sum(len(full(g)) for g in group) + len(full(nxt)) <= PACK_BUDGET:
                group.append(nxt)
                continue
            ids = torch.cat([full(g) for g in group])[None]
            pos = torch.cat([torch.arange(len(full(g)), device=device) for g in group])[None]
            hidden = _hidden(model, ids, pos=pos)[0]
            beg = 0
            for g in group:
                n = len(full(g))
                out.append(pick(hidden[beg : beg + n], g))
                beg += n
            group = [nxt] if nxt is not None else []
    else:
        for b in range(0, len(seqs), PAD_BATCH):
            batch = seqs[b : b + PAD_BATCH]
            longest = max(len(full(s)) for s in batch)
            ids = torch.zeros(len(batch), longest, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            spans = []
            for i, s in enumerate(batch):
                n = len(full(s))
                beg = 0 if layout == "right_padded" else longest - n
                ids[i, beg : beg + n], mask[i, beg : beg + n] = full(s), 1
                spans.append(beg)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = _hidden(model, ids, mask, pos)
            for i, s in enumerate(batch):
                n = len(full(s))
                out.append(pick(hidden[i, spans[i] : spans[i] + n], s))
    return out


def score() -> None:
    """Every rollout file x trainer mode x layout: bitwise mismatches and |diff| vs vLLM."""
    import contextlib

    import torch
    from transformers import Qwen3ForCausalLM

    import bi_train
    import ir_dispatch as ird

    device = torch.device(DEVICE)
    model = Qwen3ForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).to(device).eval()
    model.set_attn_implementation("sdpa")
    results = []
    for path in sorted(WORK.glob("rollout_*.pt")):
        rows = torch.load(path)
        want = [torch.tensor(r["logprobs"], dtype=torch.float32) for r in rows]
        for trainer in ("bi", "hf_default"):
            layouts = ("alone", "right_padded", "left_padded", "packed")
            for layout in layouts if trainer == "bi" else layouts[:3]:
                ctx = (
                    (bi_train.patch_qwen3(model), bi_train.batch_invariant(), ird.recording())
                    if trainer == "bi"
                    else (contextlib.nullcontext(),) * 2 + (ird.recording(),)
                )
                t0 = time.perf_counter()
                with torch.no_grad(), ctx[0], ctx[1], ctx[2] as rec:
                    got = _score_layout(model, rows, layout, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                diff = torch.cat([(g - w).abs() for g, w in zip(got, want, strict=True)])
                results.append({
                    "rollout": path.stem.removeprefix("rollout_"), "trainer": trainer,
                    "layout": layout, "tokens": diff.numel(),
                    "mismatches": int((diff != 0).sum()),
                    "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                    "seconds": time.perf_counter() - t0, "providers": rec.providers(),
                })  # fmt: skip
                print(results[-1])
    _write("score.json", results)


# ------------------------------------------------------------------------------ throughput
def bench(reps: int) -> None:
    """Trainer fwd+bwd tokens/s, packed 16 x 2048: bi-train vs default transformers (sdpa)."""
    import torch
    from transformers import Qwen3ForCausalLM

    import bi_train

    device = torch.device(DEVICE)
    model = Qwen3ForCausalLM.from_pretrained(BENCH_MODEL, dtype=torch.bfloat16).to(device)
    model.set_attn_implementation("sdpa")
    model.train()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, BENCH_VOCAB, (16, 2048), generator=gen).to(device)
    pos = torch.arange(2048, device=device).repeat(16)[None]

    def step_bi() -> None:
        with bi_train.patch_qwen3(model), bi_train.batch_invariant():
            hidden = model.model(input_ids=ids.reshape(1, -1), position_ids=pos).last_hidden_state
            lps = bi_train.token_logprobs(model.lm_head(hidden[0, :-1]), ids.reshape(-1)[1:])
        (-lps.sum()).backward()

    def step_default() -> None:
        logits = model(input_ids=ids).logits[:, :-1].float()
        lps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])
        (-lps.sum()).backward()

    results = []
    times: dict[str, list[float]] = {}
    for name, step in (("hf_default", step_default), ("bi", step_bi)):
        step()  # warm-up (Triton compiles)
        model.zero_grad(set_to_none=True)
        times[name] = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    base = sorted(times["hf_default"])[reps // 2]
    for name, reps_s in times.items():
        median = sorted(reps_s)[reps // 2]
        results.append({
            "trainer": name, "tokens": 16 * 2048, "median_s": median,
            "tokens_per_s": 16 * 2048 / median, "reps_s": reps_s,
            "ratio_to_hf_default": base / median,
        })  # fmt: skip
    _write("bench.json", results, shape={**SHAPE, "vocab_size": BENCH_VOCAB})


# ------------------------------------------------------------------------------------ main
def _run_all(timeout: int, eager: bool) -> None:
    me = [sys.executable, __file__]
    steps = [["make-model"], ["rollout", "--mode", "plugin"], ["rollout", "--mode", "default"],
             ["score"], ["bench"]]  # fmt: skip
    for step in steps:
        cmd = me + step + ([] if eager or step[0] != "rollout" else ["--compile"])
        print("+", " ".join(cmd), flush=True)
        try:
            rc = subprocess.run(cmd, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        print(f"step {step} exited with {rc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make-model")
    roll = sub.add_parser("rollout")
    roll.add_argument("--mode", choices=("plugin", "default"), required=True)
    roll.add_argument("--compile", action="store_true", help="let vLLM compile (not eager)")
    sub.add_parser("score")
    b = sub.add_parser("bench")
    b.add_argument("--reps", type=int, default=5)
    a = sub.add_parser("all")
    a.add_argument("--timeout", type=int, default=540)
    a.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.cmd == "make-model":
        make_model(MODEL, SHAPE["vocab_size"])
        make_model(BENCH_MODEL, BENCH_VOCAB)
    elif args.cmd == "rollout":
        rollout(args.mode, eager=not args.compile)
    elif args.cmd == "score":
        score()
    elif args.cmd == "bench":
        bench(args.reps)
    else:
        _run_all(args.timeout, eager=not args.compile)


if __name__ == "__main__":
    main()
