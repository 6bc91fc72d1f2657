"""Qwen3's q/k norms + RoPE: the fused kernel against the steps it replaces (GPU time).

Why this exists: with the fusion on, vLLM's single-stream decode measured slower in two engine
pairs (1.95 against 1.69 ms/token) while prefill-heavy gained 2-5%, and single-stream timings of
every mode, default vLLM's included, swing between about 1.6 and 2.5 ms/token from engine to
engine. This benchmark takes the engine out: the GPU time of one layer's q/k norms and RoPE, per
call, inside a CUDA graph (as vLLM's decode steps run), at decode and prefill token counts.

Columns, q and k being views of one QKV output as in vLLM:

* ``fused``: :func:`bi_triton_ascend.qk_norm_rope`, one launch;
* ``two_step``: the kit's ``rms_norm`` on q, then on k, then RoPE compiled by Inductor (what the
  plugin runs with ``VLLM_BI_QK_FUSION`` off); the baseline of ``ratio_vs_two_step``;
* ``inductor``: ir-dispatch's native ``qk_norm_rope`` (the norms and RoPE) compiled by
  Inductor, as default vLLM compiles them (not batch-invariant by contract);
  ``ratio_vs_default`` is against it.

Each row also checks that the fused result equals the two steps bitwise and that token 0 alone
gives the bits it has among T tokens.

    python bench/bench_qk_norm_rope.py [--tokens 1,8,...] [--shapes 0.6b,8b] [--rep 30]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import _common
import torch

_common.add_src_paths()

import bi_triton_ascend as bta  # noqa: E402
from ir_dispatch.ops import norm as ref_norm  # noqa: E402

# (q heads, kv heads) of Qwen3-0.6B and Qwen3-8B; both have head_dim 128.
SHAPES = {"0.6b": (16, 8), "8b": (32, 8)}
HEAD_DIM = 128
TOKENS = [1, 8, 64, 256, 2048, 16384]
MAX_POSITION = 40960
EPS = 1e-6
DT = torch.bfloat16

Case = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # qkv, positions, cos_sin_cache


def _rope_both(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = ref_norm.rope_table(positions, cache)
    return ref_norm.neox_rope(q, cos, sin), ref_norm.neox_rope(k, cos, sin)


def _split(qkv: torch.Tensor, hq: int, hk: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = qkv.shape[0]
    q, k, _ = qkv.split([hq * HEAD_DIM, hk * HEAD_DIM, hk * HEAD_DIM], dim=-1)
    return q.view(t, hq, HEAD_DIM), k.view(t, hk, HEAD_DIM)


def _implementations(
    hq: int, hk: int, qw: torch.Tensor, kw: torch.Tensor
) -> dict[str, Callable[[Case], Any]]:
    # Dynamic shapes, as vLLM compiles its graphs (one compile for every token count).
    rope = torch.compile(_rope_both, dynamic=True)
    native = torch.compile(ref_norm.qk_norm_rope.native, dynamic=True)

    def fused(case: Case) -> Any:
        q, k = _split(case[0], hq, hk)
        return bta.qk_norm_rope(q, k, qw, kw, EPS, case[1], case[2])

    def two_step(case: Case) -> Any:
        q, k = _split(case[0], hq, hk)
        return rope(bta.rms_norm(q, qw, EPS), bta.rms_norm(k, kw, EPS), case[1], case[2])

    def inductor(case: Case) -> Any:
        q, k = _split(case[0], hq, hk)
        return native(q, k, qw, kw, EPS, case[1], case[2])

    return {"fused": fused, "two_step": two_step, "inductor": inductor}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rep", type=int, default=30, help="timed graph replays")
    args = parser.parse_args()
    torch.manual_seed(0)
    cache = torch.randn(MAX_POSITION, HEAD_DIM, device="cuda", dtype=DT)
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for shape in args.shapes.split(","):
        hq, hk = SHAPES[shape]
        qw = torch.randn(HEAD_DIM, device="cuda", dtype=DT)
        kw = torch.randn(HEAD_DIM, device="cuda", dtype=DT)
        impls = _implementations(hq, hk, qw, kw)
        width = (hq + 2 * hk) * HEAD_DIM
        for t in (int(x) for x in args.tokens.split(",")):
            qkv = torch.randn(t, width, device="cuda", dtype=DT)
            positions = torch.randint(0, MAX_POSITION, (t,), device="cuda")
            case = (qkv, positions, cache)
            fused = impls["fused"](case)
            two = impls["two_step"](case)
            alone = impls["fused"]((qkv[:1], positions[:1], cache))
            same_bits = all(torch.equal(a, b) for a, b in zip(fused, two, strict=True))
            invariant = all(torch.equal(a[:1], b) for a, b in zip(fused, alone, strict=True))
            copies = [
                (qkv.clone(), positions.clone(), cache)
                for _ in range(_common.copies_for(qkv.numel() * 2))
            ]
            times = {
                name: _common.time_graph_ms([functools.partial(f, c) for c in copies], args.rep)
                for name, f in impls.items()
            }
            us = {name: _common.median(ts) * 1e3 for name, ts in times.items()}
            rows.append({
                "shape": shape, "tokens": t, "fused_us": us["fused"],
                "two_step_us": us["two_step"], "inductor_us": us["inductor"],
                "ratio_vs_two_step": us["two_step"] / us["fused"],
                "ratio_vs_default": us["inductor"] / us["fused"],
                "same_bits": same_bits, "invariant": invariant,
                **{f"{name}_ms_all": ts for name, ts in times.items()},
            })  # fmt: skip
            for name in impls:
                panels.setdefault(shape, {}).setdefault(name, []).append((t, us[name]))
            del copies
    cols = ["shape", "tokens", "fused_us", "two_step_us", "inductor_us", "ratio_vs_two_step",
            "ratio_vs_default", "same_bits", "invariant"]  # fmt: skip
    _common.print_table(rows, cols, "q/k norm + RoPE per layer, bf16, GPU time in a CUDA graph")
    out = _common.out_dir()
    _common.write_json(
        out / "bench_qk_norm_rope.json", rows,
        ratio_note="ratio_vs_* = baseline time / fused time (above 1: the fusion is faster)",
    )  # fmt: skip
    _common.plot_lines(out / "bench_qk_norm_rope.png", panels, "tokens", "µs per layer", logy=True)
    bad = [(r["shape"], r["tokens"]) for r in rows if not (r["same_bits"] and r["invariant"])]
    print("bit or invariance failures:", bad or "none")


if __name__ == "__main__":
    main()
