"""Vision-encoder forward: this package's attention vs a faithful per-layer-copy baseline.

A Qwen3-VL-like vision tower (random bf16 weights, 27 blocks, hidden 1152 = 16 heads x 72,
MLP 4304, LayerNorm, GELU) encodes 1-16 images of 1024-4096 patches. Only the attention layer
changes between the variants:

- ``ours``: ``MMEncoderAttention`` with ``cu_seqlens`` built by ``to_device_cu_seqlens`` (the
  host offsets handed over, as vLLM 0.32 does through ``maybe_recompute_cu_seqlens``): no
  device-to-host copy in the whole forward.
- ``ours_read_once``: the same layer with ``cu_seqlens`` made on the device only: one read in
  layer 0, shared by the other 26 layers.
- ``baseline``: what the upstream Ascend layer did, on this GPU: every layer copies
  ``diff(cu_seqlens)`` to the host (a synchronising device-to-host copy), then runs the *same*
  varlen kernel. The difference to ``ours`` is therefore host overhead only.

Per configuration and variant it records the forward latency (host clock around forward plus a
final synchronize), the host time (until forward returns, i.e. how long the host is busy or
blocked), CUDA-event device time, and the device-to-host reads of ``cu_seqlens``, every
repetition, plus the ratio to the baseline. Two checks ride along: ``ours`` and ``baseline``
produce bitwise-equal towers (same kernels), and image 0's attention output is bitwise the same
alone and inside the batch.

Run (H100, < 3 minutes)::

    OUT=/tmp/out PYTHONPATH=packages/ir-dispatch/src:packages/mm-encoder-ascend/src \\
        python packages/mm-encoder-ascend/bench/bench_encoder.py

``--smoke`` runs a 2-layer toy on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import _report

import mm_encoder_ascend as mea
from mm_encoder_ascend import _platform
from mm_encoder_ascend._seqlens import HostSeqLens
from mm_encoder_ascend.ops.mm_encoder_attention import attend_per_sequence
from mm_encoder_ascend.ops.mm_encoder_attention_varlen import attend_varlen

# Qwen3-VL vision tower (Qwen3-VL-8B vision_config): depth 27, hidden 1152, 16 heads, MLP 4304.
LAYERS, HIDDEN, HEADS, MLP = 27, 1152, 16, 4304
HEAD_SIZE = HIDDEN // HEADS
TIME_BUDGET_S = 150.0
CONFIGS: list[tuple[str, list[int]]] = [
    ("1x1024", [1024]),
    ("4x1024", [1024] * 4),
    ("16x1024", [1024] * 16),
    ("1x4096", [4096]),
    ("4x4096", [4096] * 4),
    ("8xmixed", [random.Random(8).randint(1024, 4096) for _ in range(8)]),
    ("16xmixed", [random.Random(16).randint(1024, 4096) for _ in range(16)]),
    ("16x4096", [4096] * 16),
]
VARIANTS = ["ours", "ours_read_once", "baseline"]


class PerLayerCopyAttention(nn.Module):
    """The upstream pattern: ``diff(cu_seqlens).to("cpu")`` in every layer, then the kernel."""

    def __init__(self, kernel: str) -> None:
        super().__init__()
        self.kernel = kernel
        self.scale = HEAD_SIZE**-0.5
        self.copies = 0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> Any:
        seq_lens = torch.diff(cu).to("cpu")  # device-to-host copy + sync, every layer
        self.copies += 1
        offsets = [0, *seq_lens.cumsum(0).tolist()]
        lens = HostSeqLens.from_values(offsets)
        if self.kernel == "varlen":
            return attend_varlen(q, k, v, cu, lens, self.scale)
        return attend_per_sequence(q, k, v, lens, self.scale)


class Block(nn.Module):
    def __init__(self, ours: nn.Module, baseline: PerLayerCopyAttention) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN, eps=1e-6), nn.LayerNorm(HIDDEN, eps=1e-6)
        self.qkv, self.proj = nn.Linear(HIDDEN, 3 * HIDDEN), nn.Linear(HIDDEN, HIDDEN)
        self.fc1, self.fc2 = nn.Linear(HIDDEN, MLP), nn.Linear(MLP, HIDDEN)
        self.ours, self.baseline = ours, baseline
        self.use_baseline = False

    def forward(self, x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(self.norm1(x)).view(1, t, 3, HEADS, HEAD_SIZE).unbind(2)
        a = self.baseline(q, k, v, cu) if self.use_baseline else self.ours(q, k, v, cu_seqlens=cu)
        x = x + self.proj(a.reshape(t, HIDDEN))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class Tower(nn.Module):
    def __init__(self, provider: str | None, kernel: str) -> None:
        super().__init__()
        self.blocks: list[Block] = nn.ModuleList(  # type: ignore[assignment]
            Block(
                mea.MMEncoderAttention(
                    HEADS, HEAD_SIZE, prefix=f"visual.blocks.{n}.attn.attn", provider=provider
                ),
                PerLayerCopyAttention(kernel),
            )
            for n in range(LAYERS)
        )

    def use(self, variant: str) -> None:
        for b in self.blocks:
            b.use_baseline = variant == "baseline"

    def forward(self, x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x, cu)
        return x

    def baseline_copies(self) -> int:
        return sum(b.baseline.copies for b in self.blocks)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cu_for(variant: str, lengths: list[int], device: torch.device) -> torch.Tensor:
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    if variant == "ours":
        return mea.to_device_cu_seqlens(offsets, device)
    return torch.tensor(offsets, dtype=torch.int32, device=device)  # device-only, no hand-over


def time_variant(
    tower: Tower, variant: str, x: torch.Tensor, lengths: list[int], reps: int, warmup: int
) -> dict[str, Any]:
    device = x.device
    tower.use(variant)
    reads: list[torch.Tensor] = []
    remove = _platform.add_read_hook(reads.append)
    latency, host, gpu, reads_per, copies_per = [], [], [], [], []
    out = x
    try:
        for i in range(warmup + reps):
            cu = _cu_for(variant, lengths, device)  # a new request: a new cu_seqlens tensor
            _sync(device)
            n_reads, n_copies = len(reads), tower.baseline_copies()
            start_ev = end_ev = None
            if device.type == "cuda":
                start_ev = torch.cuda.Event(enable_timing=True)
                end_ev = torch.cuda.Event(enable_timing=True)
                start_ev.record()
            t0 = time.perf_counter()
            with torch.inference_mode(), mea.encoder_forward():
                out = tower(x, cu)
            t1 = time.perf_counter()
            if end_ev is not None:
                end_ev.record()
            _sync(device)
            t2 = time.perf_counter()
            if i >= warmup:
                host.append((t1 - t0) * 1e3)
                latency.append((t2 - t0) * 1e3)
                if start_ev is not None and end_ev is not None:
                    gpu.append(start_ev.elapsed_time(end_ev))
                reads_per.append(len(reads) - n_reads)
                copies_per.append(tower.baseline_copies() - n_copies)
    finally:
        remove()
    return {
        "variant": variant,
        "latency_ms": statistics.median(latency),
        "latency_ms_reps": latency,
        "host_ms": statistics.median(host),
        "host_ms_reps": host,
        "device_ms": statistics.median(gpu) if gpu else None,
        "device_ms_reps": gpu,
        "d2h_copies_per_forward": max(r + c for r, c in zip(reads_per, copies_per, strict=True)),
        "_out": out,
    }


def attention_invariant(provider: str | None, lengths: list[int], device: torch.device) -> bool:
    """Image 0's attention output alone vs inside the batch, bitwise."""
    attn = mea.MMEncoderAttention(HEADS, HEAD_SIZE, provider=provider)
    total = sum(lengths)
    qkv = torch.randn(1, total, 3, HEADS, HEAD_SIZE, dtype=torch.bfloat16, device=device)
    q, k, v = qkv.unbind(2)
    n0 = lengths[0]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    with torch.inference_mode():
        batched = attn(q, k, v, cu_seqlens=mea.to_device_cu_seqlens(offsets, device))
        alone = attn(
            q[:, :n0], k[:, :n0], v[:, :n0], cu_seqlens=mea.to_device_cu_seqlens([0, n0], device)
        )
    return bool(torch.equal(batched[0, :n0], alone[0]))


def versions() -> dict[str, str]:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mm_encoder_ascend": mea.__version__,
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def write_png(path: Path, rows: list[dict[str, Any]]) -> None:
    """Latency and host time per configuration and variant (matplotlib, else a plain bar PNG)."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    plt = _report.pyplot()
    if plt is None:
        _bars_png(
            path,
            [
                [
                    next(
                        (r["latency_ms"] for r in rows if r["config"] == c and r["variant"] == v),
                        0.0,
                    )
                    for v in VARIANTS
                ]
                for c in configs
            ],
        )
        return
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(VARIANTS)
    for j, v in enumerate(VARIANTS):
        for ax, key in zip(axes, ("latency_ms", "host_ms"), strict=True):
            vals = [
                next((r[key] for r in rows if r["config"] == c and r["variant"] == v), 0.0)
                for c in configs
            ]
            ax.bar([i + j * width for i in range(len(configs))], vals, width, label=v)
    for ax, title in zip(
        axes, ("encoder forward latency (ms)", "host time per forward (ms)"), strict=True
    ):
        ax.set_xticks([i + width for i in range(len(configs))], configs, rotation=30)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(f"Qwen3-VL-like vision tower, {LAYERS} layers, bf16 - {rows[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _bars_png(path: Path, groups: list[list[float]]) -> None:
    """A dependency-free grouped bar chart (no text): variants left to right in each group."""
    h, bar, gap = 300, 12, 16
    w = max(1, len(groups) * (len(VARIANTS) * bar + gap))
    top = max((v for g in groups for v in g), default=1.0) or 1.0
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]
    img = [[(255, 255, 255)] * w for _ in range(h)]
    for gi, g in enumerate(groups):
        for vi, val in enumerate(g):
            x0 = gi * (len(VARIANTS) * bar + gap) + vi * bar
            for y in range(h - int((h - 10) * val / top), h):
                for x in range(x0, x0 + bar - 2):
                    img[y][x] = colors[vi % 3]
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    global LAYERS, HIDDEN, HEADS, HEAD_SIZE, MLP, CONFIGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the script")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.smoke:
        LAYERS, HIDDEN, HEADS, MLP = 2, 64, 4, 128
        HEAD_SIZE = HIDDEN // HEADS
        CONFIGS = [("1x40", [40]), ("3xmixed", [17, 40, 9])]
        args.reps, args.warmup = 2, 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (use --smoke on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    torch.manual_seed(0)
    dtype = torch.bfloat16
    # On CPU (smoke) only per_sequence runs; on CUDA the dispatcher picks varlen.
    provider, kernel = (None, "varlen") if device.type == "cuda" else ("per_sequence", "per_seq")
    tower = Tower(provider, kernel).to(device=device, dtype=dtype).eval()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, lengths in CONFIGS:
        if time.perf_counter() - start > TIME_BUDGET_S:
            skipped.append(name)
            continue
        x = torch.randn(sum(lengths), HIDDEN, dtype=dtype, device=device)
        results = {v: time_variant(tower, v, x, lengths, args.reps, args.warmup) for v in VARIANTS}
        same = bool(torch.equal(results["ours"]["_out"], results["baseline"]["_out"]))
        invariant = attention_invariant(provider, lengths, device)
        base = results["baseline"]
        for v in VARIANTS:
            r = results[v]
            r.pop("_out")
            r.update(
                config=name,
                images=len(lengths),
                tokens=sum(lengths),
                device=dev_name,
                latency_ratio_to_baseline=r["latency_ms"] / base["latency_ms"],
                host_ratio_to_baseline=r["host_ms"] / base["host_ms"],
                bitwise_equal_to_baseline=same,
                image0_attention_bitwise_invariant=invariant,
            )
            rows.append(r)
            print(
                f"{name:>9} {v:>15}: latency {r['latency_ms']:8.2f} ms "
                f"(x{r['latency_ratio_to_baseline']:.3f})  host {r['host_ms']:8.2f} ms  "
                f"d2h/fwd {r['d2h_copies_per_forward']:3d}  equal={same} inv={invariant}"
            )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        **_report.header(dev_name, versions()),
        "bench": "mm-encoder-ascend/bench/bench_encoder.py",
        "model": {
            "layers": LAYERS,
            "hidden": HIDDEN,
            "heads": HEADS,
            "head_size": HEAD_SIZE,
            "mlp": MLP,
            "dtype": str(dtype),
            "attention_provider": provider or "dispatch",
        },
        "reps": args.reps,
        "warmup": args.warmup,
        "skipped_configs": skipped,
        "wall_s": time.perf_counter() - start,
        "results": rows,
    }
    stem = "bench_encoder_smoke" if args.smoke else "bench_encoder"
    _report.write_json(out_dir / f"{stem}.json", report, announce=False)
    if rows:
        write_png(out_dir / f"{stem}.png", rows)
    print(f"wrote {out_dir / stem}.json/.png in {report['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
