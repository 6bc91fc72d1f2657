"""Row ops, ours vs torch: rms_norm, fused add + rms_norm, softmax/log_softmax, mean (GB/s).

bf16, M from 1 to 8192. rms_norm/fused add at hidden 1024 and 4096 (Qwen3-0.6B/8B),
softmax/log_softmax over the Qwen3 vocabulary (151936), mean over the last dim (4096), and
``mean_of_squares`` (against the ``x.float().pow(2).mean(-1)`` it replaces in compiled graphs)
over 128 and 1024. Timing:
CUDA graphs over rotating input copies (see ``_common.time_graph_ms``). GB/s
counts the bytes each op must move (inputs read once, outputs written once); "copy" is a
device-to-device copy of 1 GiB, the bandwidth ceiling (target: rms_norm >= 85% of it at
4096x4096). Each row also checks batch invariance: row 0 alone equals row 0 of the batch.

    python bench/bench_rows.py [--ms 1,8,...] [--rep 40]
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

VOCAB = 151936
MS = [1, 8, 32, 128, 512, 2048, 4096, 8192]
DT = torch.bfloat16


def _copy_gbps(rep: int) -> float:
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    t = _common.median(_common.time_graph_ms([lambda: dst.copy_(src)], rep))
    return 2 * src.numel() * 2 / t / 1e6


def _cases() -> list[tuple[str, int, Callable[..., Any], Callable[..., Any], Callable[..., int]]]:
    """(name, width, ours(x, aux), torch(x, aux), bytes(M))."""

    def rms_bytes(h: int) -> Callable[[int], int]:
        return lambda m: 2 * m * h * 2 + h * 2

    def fused_bytes(h: int) -> Callable[[int], int]:
        return lambda m: 4 * m * h * 2 + h * 2

    cases: list[tuple[str, int, Callable[..., Any], Callable[..., Any], Callable[..., int]]] = []
    for h in (1024, 4096):
        cases.append(
            (f"rms_norm h={h}", h, lambda x, a: bta.rms_norm(x, a[0], 1e-6),
             lambda x, a: ref_norm.rms_norm.native(x, a[0], 1e-6), rms_bytes(h))
        )  # fmt: skip
        cases.append(
            (f"fused_add_rms_norm h={h}", h,
             lambda x, a: bta.fused_add_rms_norm(x, a[1], a[0], 1e-6),
             lambda x, a: ref_norm.fused_add_rms_norm.native(x, a[1], a[0], 1e-6),
             fused_bytes(h))
        )  # fmt: skip
    cases.append(
        ("log_softmax V=151936", VOCAB, lambda x, a: bta.log_softmax(x, -1),
         lambda x, a: torch.log_softmax(x, -1), lambda m: 2 * m * VOCAB * 2)
    )  # fmt: skip
    cases.append(
        ("softmax V=151936", VOCAB, lambda x, a: bta.softmax(x, -1),
         lambda x, a: torch.softmax(x, -1), lambda m: 2 * m * VOCAB * 2)
    )  # fmt: skip
    cases.append(
        ("log_softmax fp32 out V=151936", VOCAB, lambda x, a: bta.log_softmax(x, -1, torch.float32),
         lambda x, a: torch.log_softmax(x, -1, dtype=torch.float32), lambda m: 6 * m * VOCAB)
    )  # fmt: skip
    cases.append(
        ("mean h=4096", 4096, lambda x, a: bta.mean(x, [-1]),
         lambda x, a: torch.mean(x, -1), lambda m: m * 4096 * 2 + m * 2)
    )  # fmt: skip
    for h in (128, 1024):  # an RMSNorm's statistic: per head (q/k norms) and over the hidden size
        cases.append(
            (f"mean_of_squares h={h}", h, lambda x, a: bta.mean_of_squares(x, [-1], True),
             lambda x, a: x.float().pow(2).mean(-1, keepdim=True), lambda m, h=h: m * h * 2 + m * 4)
        )  # fmt: skip
    return cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--rep", type=int, default=20, help="timed graph replays")
    args = parser.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    torch.manual_seed(0)
    copy = _copy_gbps(args.rep)
    print(f"copy bandwidth: {copy:.0f} GB/s")
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, width, ours, ref, nbytes in _cases():
        big = torch.randn(max(ms), width, device="cuda", dtype=DT)
        aux = (torch.randn(width, device="cuda", dtype=DT), torch.randn_like(big))
        alone = ours(big[:1], (aux[0], aux[1][:1]))
        for m in ms:
            x, a = big[:m], (aux[0], aux[1][:m])
            # Rotating input copies (> L2 together): each call reads from HBM.
            copies = [
                (x.clone(), (a[0], a[1].clone())) for _ in range(_common.copies_for(m * width * 2))
            ]
            got = ours(x, a)
            first = got[0][:1] if isinstance(got, tuple) else got[:1]
            want = alone[0] if isinstance(alone, tuple) else alone
            invariant = torch.equal(first, want)
            t_ours = _common.time_graph_ms([functools.partial(ours, *c) for c in copies], args.rep)
            t_ref = _common.time_graph_ms([functools.partial(ref, *c) for c in copies], args.rep)
            del copies
            gb_ours = nbytes(m) / _common.median(t_ours) / 1e6
            gb_ref = nbytes(m) / _common.median(t_ref) / 1e6
            speedup = _common.median(t_ref) / _common.median(t_ours)
            rows.append({
                "op": name, "M": m, "ours_us": _common.median(t_ours) * 1e3,
                "torch_us": _common.median(t_ref) * 1e3, "ours_GBps": gb_ours,
                "torch_GBps": gb_ref, "ratio_vs_torch": speedup,
                "frac_of_copy": gb_ours / copy, "invariant": invariant,
                "ours_ms_all": t_ours, "torch_ms_all": t_ref,
            })  # fmt: skip
            panels.setdefault(name, {}).setdefault("ours", []).append((m, gb_ours))
            panels[name].setdefault("torch", []).append((m, gb_ref))
            panels[name].setdefault("copy", []).append((m, copy))
        del big, aux
    cols = ["op", "M", "ours_us", "torch_us", "ours_GBps", "torch_GBps", "ratio_vs_torch",
            "frac_of_copy", "invariant"]  # fmt: skip
    _common.print_table(rows, cols, f"row ops, bf16 (copy {copy:.0f} GB/s)")
    out = _common.out_dir()
    _common.write_json(out / "bench_rows.json", rows, copy_GBps=copy)
    _common.plot_lines(out / "bench_rows.png", panels, "M (rows)", "GB/s")
    target = [r for r in rows if r["op"] == "rms_norm h=4096" and r["M"] == 4096]
    for r in target:
        print(f"rms_norm 4096x4096: {r['frac_of_copy']:.0%} of copy bandwidth (target >= 85%)")
    print("invariance failures:", [(r["op"], r["M"]) for r in rows if not r["invariant"]] or "none")


if __name__ == "__main__":
    main()
