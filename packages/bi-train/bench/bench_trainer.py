"""Trainer fwd+bwd throughput: bi-train (``patch_qwen3`` + ``batch_invariant()``) vs default.

What the batch invariance costs the trainer. One packed row of 16 x 2048 tokens
(``position_ids`` restarting per sequence) through a random bf16 Qwen3 (Qwen3-0.6B's layer
shape, 4 layers, a 32768-token vocabulary so that the default path's ``[32768, vocab]`` logits
fit), forward, token logprobs and backward:

``hf_default``
    plain ``transformers`` (sdpa), ``[16, 2048]`` batch, full logits, ``log_softmax`` in fp32.
``bi``
    the same model under :func:`bi_train.patch_qwen3` + ``batch_invariant()``, packed, with
    :func:`bi_train.token_logprobs` on the ``lm_head`` rows.

One warm-up step each (Triton compiles), then ``--reps`` timed steps. Writes
``$OUT/bench_trainer.json``: top-level ``device``, ``versions``, ``date``, ``shape``,
``results`` (per trainer: every repetition, the median, tokens/s and ``ratio_vs_default``,
the median speed relative to ``hf_default``; ``ratio_to_hf_default`` is the same number, the
field's older name). The model is written once to ``--model-dir``. On the lent GPU::

    source scripts/gpu/env.sh && python3 packages/bi-train/bench/bench_trainer.py

``--tiny`` (hidden 256, 2 layers, vocab 4096, 2 x 256 tokens) with ``--device cpu`` only
checks that the script runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

SHAPE: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, vocab_size=32768, max_position_embeddings=40960,
    rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
TINY_SHAPE: dict[str, Any] = SHAPE | dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, vocab_size=4096, max_position_embeddings=1024,
)  # fmt: skip


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    dists = ["torch", "transformers", "triton", "ir-dispatch", "bi-triton-ascend", "bi-train"]
    for dist in dists:
        module = dist.replace("-", "_")
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
            with contextlib.suppress(Exception):  # not importable here: leave None
                out[dist] = getattr(__import__(module), "__version__", None)
    return out


def device_name(device: Any) -> str:
    import torch

    if device.type != "cuda":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    p = torch.cuda.get_device_properties(device)
    return f"{p.name} (sm{p.major}{p.minor}, {p.multi_processor_count} SMs)"


def make_model(path: Path, shape: dict[str, Any]) -> Path:
    """A random bf16 Qwen3 with 2-D weights of std 0.1, written once (``save_pretrained``)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    marker = path / "bench_shape.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return path
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**shape))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(path)
    marker.write_text(json.dumps(shape))
    print("wrote", path)
    return path


def bench(
    model_path: Path, device: Any, batch: int, seq_len: int, reps: int, vocab: int
) -> list[dict[str, Any]]:
    """Time ``reps`` fwd+bwd steps per trainer; one row per trainer."""
    import torch
    from transformers import Qwen3ForCausalLM

    import bi_train

    model = Qwen3ForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)
    pos = torch.arange(seq_len, device=device).repeat(batch)[None]

    def step_bi() -> None:
        with bi_train.patch_qwen3(model), bi_train.batch_invariant():
            hidden = model.model(
                input_ids=ids.reshape(1, -1), position_ids=pos, use_cache=False
            ).last_hidden_state
            lps = bi_train.token_logprobs(model.lm_head(hidden[0, :-1]), ids.reshape(-1)[1:])
        (-lps.sum()).backward()

    def step_default() -> None:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        lps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])
        (-lps.sum()).backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {}
    for name, step in (("hf_default", step_default), ("bi", step_bi)):
        step()  # warm-up (Triton compiles)
        model.zero_grad(set_to_none=True)
        times[name] = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    tokens = batch * seq_len
    base = statistics.median(times["hf_default"])
    rows = []
    for name, reps_s in times.items():
        median = statistics.median(reps_s)
        rows.append({
            "trainer": name, "tokens": tokens, "reps_s": reps_s, "median_s": median,
            "tokens_per_s": tokens / median, "ratio_vs_default": base / median,
            "ratio_to_hf_default": base / median,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--tiny", action="store_true", help="tiny shape, 2 x 256 tokens")
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("BENCH_DIR", "/tmp/bench_trainer"))
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_trainer.json"
    )
    args = parser.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be 'cuda' or 'cpu', got {args.device!r}")
    for name in ("reps", "batch", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tiny:
        args.batch, args.seq_len = min(args.batch, 2), min(args.seq_len, 256)
    shape = TINY_SHAPE if args.tiny else SHAPE

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    model = make_model(args.model_dir / ("tiny" if args.tiny else "model"), shape)
    rows = bench(model, device, args.batch, args.seq_len, args.reps, shape["vocab_size"])
    doc = {
        "device": device_name(device), "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "shape": shape, "batch": args.batch, "seq_len": args.seq_len, "results": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    for r in rows:
        print(f"{r['trainer']:>10}: {r['tokens_per_s']:.0f} tokens/s (median {r['median_s']:.3f} s,"
              f" {r['ratio_vs_default']:.2f}x default)")  # fmt: skip
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
