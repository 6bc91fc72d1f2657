"""Real sizes on an NVIDIA GPU: Qwen3 shapes, vocabulary rows, CUDA-graph capture and replay.

Marked ``cuda``: skipped with a reason elsewhere (see ``conftest.py``). The generic tests of
the other files also run here, with the full batch-size list (1..257, 1000).
"""

from __future__ import annotations

import pytest
import torch
from bi_testutils import probe_positions, with_probe

import bi_triton_ascend as bta
from bi_triton_ascend.ops.gemm_config import Tiles, chain_for, force_tiles

pytestmark = pytest.mark.cuda

QWEN3 = {
    "0.6B-qkv": (4096, 1024), "0.6B-o": (1024, 2048), "0.6B-gate_up": (6144, 1024),
    "0.6B-down": (1024, 3072), "8B-qkv": (6144, 4096), "8B-o": (4096, 4096),
    "8B-gate_up": (24576, 4096), "8B-down": (4096, 12288),
    # Narrow outputs (tensor-parallel shards) take the split-K chain.
    "8B-kv-tp8": (256, 4096), "8B-o-tp8": (512, 4096),
}  # fmt: skip
BIG_MS = (
    1,
    2,
    3,
    15,
    16,
    17,
    31,
    32,
    33,
    63,
    64,
    65,
    127,
    128,
    129,
    255,
    256,
    257,
    320,
    321,
    1000,
    2048,
    4096,
    8192,
)
VOCAB = 151936


@pytest.mark.parametrize("n,k", list(QWEN3.values()), ids=list(QWEN3))
def test_qwen3_linear_rows_invariant_and_accurate(n: int, k: int) -> None:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    probe = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    alone = bta.linear(probe, w)
    for m in BIG_MS:
        x = with_probe(probe, m)
        out = bta.linear(x, w)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"{n}x{k} M={m} row {p}"
    ref = x.float() @ w.float().t()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_other_dtypes_invariant_at_real_size(dtype: torch.dtype) -> None:
    w = torch.randn(2048, 4096, device="cuda", dtype=dtype) / 64
    probe = torch.randn(1, 4096, device="cuda", dtype=dtype)
    alone = bta.linear(probe, w)
    for m in (1, 17, 64, 129, 1000, 4096):
        out = bta.linear(with_probe(probe, m), w)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m} row {p}"


def test_split_k_and_persistent_kernels_agree_on_a_segmented_shape() -> None:
    assert chain_for(256, 4096, torch.bfloat16).num_segs == 4
    a = torch.randn(96, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16)
    outs = []
    for tiles in (
        Tiles(True, 16, 16, 4, 8),
        Tiles(True, 64, 32, 4, 5),
        Tiles(False, 64, 64, 4, 4, flatten=True),
        Tiles(False, 128, 128, 8, 3, flatten=True),
        Tiles(False, 128, 128, 8, 3),
    ):
        with force_tiles(tiles):
            outs.append(bta.mm(a, b))
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.parametrize("op", [bta.log_softmax, bta.softmax], ids=["log_softmax", "softmax"])
def test_vocabulary_rows_invariant(op) -> None:
    probe = torch.randn(1, VOCAB, device="cuda", dtype=torch.bfloat16) * 4
    alone = op(probe, -1, torch.float32)
    for m in (1, 2, 3, 17, 64, 257, 1000):
        out = op(with_probe(probe, m), -1, torch.float32)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m} row {p}"
    ref = (
        torch.log_softmax(probe.double(), -1)
        if op is bta.log_softmax
        else torch.softmax(probe.double(), -1)
    )
    assert (alone.double() - ref).abs().max().item() < 1e-4


def test_rms_norm_rows_invariant_at_real_size() -> None:
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    probe = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    resid = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    alone = bta.rms_norm(probe, w, 1e-6)
    alone_f = bta.fused_add_rms_norm(probe, resid, w, 1e-6)
    for m in (1, 3, 65, 257, 1000, 8192):
        out = bta.rms_norm(with_probe(probe, m), w, 1e-6)
        fused, r = bta.fused_add_rms_norm(with_probe(probe, m), with_probe(resid, m), w, 1e-6)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0])
            assert torch.equal(fused[p], alone_f[0][0]) and torch.equal(r[p], alone_f[1][0])


def test_cuda_graph_capture_and_replay() -> None:
    w = torch.randn(512, 4096, device="cuda", dtype=torch.bfloat16) / 64  # split-K chain
    w2 = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16) / 64
    norm_w = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    logits_in = torch.randn(8, VOCAB, device="cuda", dtype=torch.bfloat16)

    def step() -> tuple[torch.Tensor, ...]:
        h = bta.linear(x, w)
        g = bta.rms_norm(bta.linear(x, w2), norm_w, 1e-6)
        return h, g, bta.log_softmax(logits_in, -1, torch.float32), bta.mean(g, [-1])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm up: compile kernels, allocate split-K counters outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        logits_in.copy_(torch.randn_like(logits_in))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(static_out, step(), strict=True):
            assert torch.equal(got, want)


class _Block(torch.nn.Module):
    """A Qwen3-0.6B-shaped decoder block in plain torch ops (eager attention, no fused kernels)."""

    def __init__(self, hidden: int = 1024, heads: int = 16, head_dim: int = 64) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = torch.nn.Parameter(torch.rand(hidden) + 0.5)
        self.norm2 = torch.nn.Parameter(torch.rand(hidden) + 0.5)
        self.qkv = torch.nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.o = torch.nn.Linear(heads * head_dim, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, 3072, bias=False)
        self.down = torch.nn.Linear(3072, hidden, bias=False)

    @staticmethod
    def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self._rms(x, self.norm1)).view(b, t, 3, self.heads, -1).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.head_dim**0.5
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        attn = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, -1)
        h = x + self.o(attn)
        return h + self.down(torch.nn.functional.silu(self.up(self._rms(h, self.norm2))))


@torch.inference_mode()
def test_block_through_overrides_is_invariant_for_batch_1_to_64_and_default_is_not() -> None:
    """Issue #3's acceptance check: the probe sequence's output, alone vs in batches 1..64."""
    import ir_dispatch as ird

    torch.manual_seed(0)
    block = _Block().cuda().to(torch.bfloat16)
    seqs = torch.randn(64, 32, 1024, device="cuda", dtype=torch.bfloat16)
    probe = seqs[:1]

    def probe_outputs() -> list[tuple[int, int, torch.Tensor]]:
        alone = block(probe)
        outs = []
        for size in range(1, 65):
            for index in probe_positions(size):
                batch = torch.cat([seqs[1:size][:index], probe, seqs[1:size][index:]])
                outs.append((size, index, block(batch)[index : index + 1]))
        return [(s, i, o) for s, i, o in outs if not torch.equal(o, alone)]

    with ird.aten_overrides(), ird.batch_invariant():
        assert probe_outputs() == []
    assert probe_outputs(), "default cuBLAS path matched at every batch size: the check cannot fail"


def test_launch_table_serves_cuda_launches_with_the_same_bits() -> None:
    """Launches through the table (no per-call binding) give Triton's own launch's bits, and
    alignment changes (an offset view) get their own compiled kernel rather than a wrong one."""
    from bi_triton_ascend import _launch_cache

    assert _launch_cache.enabled(), "the launch table should serve CUDA launches"
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(33, 1025, generator=g).to("cuda", torch.bfloat16)
    w = torch.randn(4096, 1024, generator=g).to("cuda", torch.bfloat16)
    nw = torch.randn(1024, generator=g).to("cuda", torch.bfloat16)
    logits = torch.randn(5, 151936, generator=g).cuda()

    def run() -> list[torch.Tensor]:
        out = []
        for view in (x[:, :1024], x[:, 1:]):  # 16-byte aligned, then 2-byte aligned rows
            out += [bta.linear(view, w), bta.rms_norm(view, nw, 1e-6)]
        return [*out, bta.log_softmax(logits, -1), bta.mean(logits, [-1])]

    with _launch_cache.table_off():
        expected = run()
    before = _launch_cache.cached_kernels()
    first, second = run(), run()  # the first call fills the table, the second hits it
    assert _launch_cache.cached_kernels() > before
    for want, got1, got2 in zip(expected, first, second, strict=True):
        assert torch.equal(want, got1) and torch.equal(want, got2)
