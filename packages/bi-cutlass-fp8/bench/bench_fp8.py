"""FP8 scaled GEMM on Qwen3-8B linear shapes: ours vs cuBLASLt vs dequant + bf16 BI GEMM.

Providers, all ``out = (a @ w.t()) * scale_a * scale_b`` in bf16:

* ``ours_tensor`` / ``ours_rowwise``: :func:`bi_cutlass_fp8.scaled_mm` with per-tensor scales /
  per-token ``[M, 1]`` and per-channel ``[1, N]`` scales (the config :func:`select_config`
  picks from ``(N, K)``).
* ``scaled_mm_tensor`` / ``scaled_mm_rowwise``: ``torch._scaled_mm`` (cuBLASLt for per-tensor,
  torch's CUTLASS rowwise kernel) with ``use_fast_accum=True``, the accumulation mode of our
  SM90 configs. Batch-variant baselines.
* ``dequant_bi``: :func:`bi_cutlass_fp8.scaled_mm_dequant` in batch-invariant mode - exact bf16
  dequantization per call plus the batch-invariant bf16 GEMM (bi-triton-ascend's Triton
  kernel through ir-dispatch). Skipped, with the reason, if that package is missing.
* ``cfg:<name>`` (``--all-configs``): every built SM90 config forced, rowwise scales, to choose
  the (N, K) -> config table from measurements.

Ratios are TFLOP/s ratios: ``ratio_vs_scaled_mm`` (ours_tensor / scaled_mm_tensor and
ours_rowwise / scaled_mm_rowwise) and ``ratio_vs_dequant`` (ours_rowwise / dequant_bi), with
geomeans over all (shape, M). Targets: >= 0.9x scaled_mm, >= 1.4x dequant.

Run: ``python bench/bench_fp8.py [--all-configs] [--m 1 8 ...]``; JSON + PNG go to ``$OUT``
(or ``bench/results``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from _common import (
    add_src_paths,
    geomean,
    median,
    out_dir,
    plot_panels,
    print_table,
    time_ms,
    write_json,
)

add_src_paths()

import torch  # noqa: E402

QWEN3_8B = {  # (N, K) of Qwen3-8B's linear layers (hidden 4096, 32 q / 8 kv heads of 128)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (24576, 4096),
    "down": (4096, 12288),
}
M_VALUES = (1, 8, 32, 128, 512, 2048, 8192)
OUT_DTYPE = torch.bfloat16


def _fp8(*shape: int) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") * 2).clamp(-448, 448).to(torch.float8_e4m3fn)


def _providers(
    a: torch.Tensor, w: torch.Tensor, all_configs: bool, dequant_reason: str | None
) -> dict[str, Callable[[], Any]]:
    import bi_cutlass_fp8
    import ir_dispatch as ird
    from bi_cutlass_fp8.ops import scaled_mm_with_config

    m, n = a.shape[0], w.shape[0]
    b = w.t()
    s_tensor = torch.tensor(0.5, device="cuda")
    sa_row = torch.rand(m, 1, device="cuda") + 0.5
    sb_row = torch.rand(1, n, device="cuda") * 0.01
    fns: dict[str, Callable[[], Any]] = {
        "ours_tensor": lambda: bi_cutlass_fp8.scaled_mm(a, b, s_tensor, s_tensor, OUT_DTYPE),
        "ours_rowwise": lambda: bi_cutlass_fp8.scaled_mm(a, b, sa_row, sb_row, OUT_DTYPE),
        "scaled_mm_tensor": lambda: torch._scaled_mm(
            a, b, s_tensor, s_tensor, out_dtype=OUT_DTYPE, use_fast_accum=True
        ),
        "scaled_mm_rowwise": lambda: torch._scaled_mm(
            a, b, sa_row, sb_row, out_dtype=OUT_DTYPE, use_fast_accum=True
        ),
    }
    if dequant_reason is None:

        def dequant() -> Any:
            with ird.batch_invariant():
                return bi_cutlass_fp8.scaled_mm_dequant(a, b, sa_row, sb_row, OUT_DTYPE)

        fns["dequant_bi"] = dequant
    if all_configs:
        for cfg in bi_cutlass_fp8.SM90_CONFIGS:
            fns[f"cfg:{cfg.name}"] = functools.partial(
                scaled_mm_with_config, a, b, sa_row, sb_row, OUT_DTYPE, None, cfg.name
            )
    return fns


def _dequant_unavailable() -> str | None:
    """Why the dequant baseline cannot run (no batch-invariant bf16 mm on CUDA), or None."""
    try:
        import bi_triton_ascend  # noqa: F401  (registers the 'triton' provider)
    except Exception as err:  # missing package or no triton
        return f"bi-triton-ascend not importable ({type(err).__name__}: {err})"
    import ir_dispatch as ird

    x = torch.zeros(2, 32, dtype=torch.bfloat16, device="cuda")
    with ird.batch_invariant():
        verdicts = ird.ops.mm.evaluate(x, x.t())
    if any(r is None and i.provider != "native" for i, r in verdicts):
        return None
    return "no batch-invariant bf16 mm provider on CUDA: " + "; ".join(
        f"{i.provider}: {r}" for i, r in verdicts
    )


def run(
    shapes: dict[str, tuple[int, int]], m_values: tuple[int, ...], all_configs: bool
) -> dict[str, Any]:
    import bi_cutlass_fp8

    bi_cutlass_fp8.get_module()  # build outside the timings
    dequant_reason = _dequant_unavailable()
    if dequant_reason:
        print(f"dequant baseline skipped: {dequant_reason}")
    rows: list[dict[str, Any]] = []
    for shape, (n, k) in shapes.items():
        w = _fp8(n, k)
        for m in m_values:
            config = bi_cutlass_fp8.select_config(n, k, m=m).name
            a = _fp8(m, k)
            flops = 2.0 * m * n * k
            point: dict[str, dict[str, Any]] = {}
            for provider, fn in _providers(a, w, all_configs, dequant_reason).items():
                try:
                    times = time_ms(fn)
                except Exception as err:  # record and continue: one failure must not stop the sweep
                    print(f"{shape} M={m} {provider}: {type(err).__name__}: {err}")
                    point[provider] = {"error": f"{type(err).__name__}: {err}"}
                    continue
                ms = median(times)
                point[provider] = {"ms": ms, "ms_all": times, "tflops": flops / ms * 1e-9}
            for provider, rec in point.items():
                row = {
                    "shape": shape,
                    "n": n,
                    "k": k,
                    "m": m,
                    "provider": provider,
                    "config": config,
                    **rec,
                }
                if "tflops" in rec:
                    row["ratio_vs_scaled_mm"] = _ratio(
                        point, provider, _scaled_mm_baseline(provider)
                    )
                    row["ratio_vs_dequant"] = _ratio(point, provider, "dequant_bi")
                rows.append(row)
            del a
            torch.cuda.empty_cache()
        del w
    return {"rows": rows, "summary": _summary(rows), "dequant_skipped": dequant_reason}


def _scaled_mm_baseline(provider: str) -> str:
    return "scaled_mm_tensor" if provider.endswith("_tensor") else "scaled_mm_rowwise"


def _ratio(point: dict[str, dict[str, Any]], provider: str, baseline: str) -> float:
    mine, base = point.get(provider, {}), point.get(baseline, {})
    if "tflops" not in mine or "tflops" not in base:
        return float("nan")
    return float(mine["tflops"] / base["tflops"])


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def gm(provider: str, key: str, shape: str | None = None) -> float:
        return geomean(
            r[key] for r in rows
            if r["provider"] == provider and key in r and (shape is None or r["shape"] == shape)
        )  # fmt: skip

    providers = sorted({r["provider"] for r in rows})
    shapes = sorted({r["shape"] for r in rows})
    summary: dict[str, Any] = {
        "geomean_ratio_vs_scaled_mm": {p: gm(p, "ratio_vs_scaled_mm") for p in providers},
        "geomean_ratio_vs_dequant": {p: gm(p, "ratio_vs_dequant") for p in providers},
        "per_shape_geomean_ratio_vs_scaled_mm": {
            s: {p: gm(p, "ratio_vs_scaled_mm", s) for p in providers} for s in shapes
        },
        "targets": {"ratio_vs_scaled_mm": 0.9, "ratio_vs_dequant": 1.4},
    }
    cfgs = [p for p in providers if p.startswith("cfg:")]
    if cfgs:  # the best M-independent config per shape, by geomean over M
        summary["best_config_per_shape"] = {
            s: max(cfgs, key=functools.partial(_shape_score, gm, s)) for s in shapes
        }
    return summary


def _shape_score(gm: Callable[..., float], shape: str, provider: str) -> float:
    score = gm(provider, "ratio_vs_scaled_mm", shape)
    return score if score == score else -1.0  # NaN (failed runs) ranks last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    parser.add_argument("--shapes", nargs="+", choices=list(QWEN3_8B), default=list(QWEN3_8B))
    parser.add_argument("--all-configs", action="store_true", help="also time every built config")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_fp8 needs an NVIDIA SM90 GPU; torch sees no CUDA device")
        return 2
    shapes = {f"qwen3_8b_{s}": QWEN3_8B[s] for s in args.shapes}
    result = run(shapes, tuple(args.m), args.all_configs)
    rows = result["rows"]
    table = [
        {
            "shape": r["shape"], "M": r["m"], "provider": r["provider"],
            "us": r.get("ms", float("nan")) * 1e3, "TFLOP/s": r.get("tflops", float("nan")),
            "vs_scaled_mm": r.get("ratio_vs_scaled_mm"), "vs_dequant": r.get("ratio_vs_dequant"),
        }
        for r in rows
    ]  # fmt: skip
    print_table(table, ["shape", "M", "provider", "us", "TFLOP/s", "vs_scaled_mm", "vs_dequant"])
    summary = result["summary"]
    print("\n== geomean TFLOP/s ratio vs torch._scaled_mm (target >= 0.9)")
    for p, v in summary["geomean_ratio_vs_scaled_mm"].items():
        print(f"  {p:40s} {v:.3f}")
    print("== geomean TFLOP/s ratio vs dequant + BI bf16 GEMM (target >= 1.4)")
    for p, v in summary["geomean_ratio_vs_dequant"].items():
        print(f"  {p:40s} {v:.3f}")
    if "best_config_per_shape" in summary:
        print("== best config per shape (geomean over M vs scaled_mm_rowwise)")
        for s, p in summary["best_config_per_shape"].items():
            print(f"  {s:20s} {p}")
    out = out_dir()
    write_json(
        out / "bench_fp8.json", rows, summary=summary, dequant_skipped=result["dequant_skipped"]
    )
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if "tflops" in r:
            panels.setdefault(r["shape"], {}).setdefault(r["provider"], []).append(
                (r["m"], r["tflops"])
            )
    plot_panels(out / "bench_fp8.png", panels, "TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
