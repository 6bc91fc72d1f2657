"""The Gluon experiments of ``bench/`` against the Triton kernels, bit for bit (sm90 only).

``bench/gluon_split_decode.py`` and ``bench/gluon_prefill.py`` mirror the Triton split decode and
fused prefill with other schedules (tiles in flight, the softmax under the next score MMA). They
are usable only if every row comes out with the Triton kernels' bits, so these tests compare
them with ``launch`` on lengths around the tile (64 keys), the short chunk (256), the switch to
long chunks (4096) and a long chunk (512), with Qwen3-8B heads. Gluon has no interpreter: the
modules are imported inside the tests, which skip on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _attn_cases import cuda_only

from bi_triton_ascend.attention._launch import launch

BENCH = Path(__file__).resolve().parents[2] / "bench"
LENGTHS = [1, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 4607, 4608, 4609, 9001]


def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


pytestmark = [
    *cuda_only,
    pytest.mark.skipif(not _sm90(), reason="the Gluon kernels are written for sm90 (Hopper)"),
]


def _bench_module(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return __import__(name)


@pytest.mark.parametrize("bound", [None, 40960], ids=["exact-bound", "bound-40k"])
def test_gluon_split_decode_gives_the_triton_split_bits(bound: int | None) -> None:
    gluon = _bench_module("gluon_split_decode")
    gen = torch.Generator(device="cuda").manual_seed(0)
    case = gluon.random_paged(LENGTHS, [1] * len(LENGTHS), gen, query_scale=3.0)
    max_seq_len = bound or max(LENGTHS)
    want = launch(
        case["query"], case["key_cache"], case["value_cache"], case["block_table"],
        case["seq_lens"], case["q_start"], None, scale=128**-0.5, sliding_window=None,
        causal=True, max_seq_len=max_seq_len, mode="split",
    )  # fmt: skip
    for stages in (2, 3):
        got = gluon.split_decode(
            case["query"], case["key_cache"], case["value_cache"], case["block_table"],
            case["seq_lens"], scale=128**-0.5, max_seq_len=max_seq_len, stages=stages,
        )  # fmt: skip
        assert torch.equal(got, want), f"stages={stages}"


@pytest.mark.parametrize("stages", [3, 4])
def test_gluon_prefill_gives_the_triton_fused_bits(stages: int) -> None:
    gluon = _bench_module("gluon_prefill")
    gen = torch.Generator(device="cuda").manual_seed(1)
    paged = _bench_module("gluon_split_decode").random_paged
    # (keys, new queries): whole prompts and chunked-prefill steps over a cached prefix.
    shapes = [(1, 1), (70, 5), (64, 64), (300, 100), (4097, 129), (5000, 1000), (9001, 4096)]
    case = paged([k for k, _ in shapes], [q for _, q in shapes], gen, query_scale=3.0)
    want = launch(
        case["query"], case["key_cache"], case["value_cache"], case["block_table"],
        case["seq_lens"], case["q_start"], None, scale=128**-0.5, sliding_window=None,
        causal=True, max_seq_len=None, mode="fused",
    )  # fmt: skip
    got = gluon.prefill(
        case["query"], case["key_cache"], case["value_cache"], case["block_table"],
        case["seq_lens"], case["q_start"], scale=128**-0.5, stages=stages,
    )  # fmt: skip
    assert torch.equal(got, want)
