"""Host overhead: cu_seqlens is read back at most once per encoder forward, never stale.

A 24-layer encoder forward runs through the (fake) NPU kernel and through the CPU default.
Every read of ``cu_seqlens`` to the host goes through ``_platform.read_to_host``, which a hook
counts; on an accelerator each such read is a device-to-host copy plus a synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from _mm_reference import cu_from_lengths

import mm_encoder_ascend as mea
from mm_encoder_ascend import _platform

LAYERS = 24
HEADS, HEAD_SIZE = 2, 72


@pytest.fixture
def reads() -> Iterator[list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    remove = _platform.add_read_hook(seen.append)
    yield seen
    remove()


def _encoder(
    provider: str | None, prefix: str = "vision_tower.attn"
) -> list[mea.MMEncoderAttention]:
    # Prefixes without a layer digit: nothing here keys on layer names.
    return [
        mea.MMEncoderAttention(HEADS, HEAD_SIZE, prefix=prefix, provider=provider)
        for _ in range(LAYERS)
    ]


def _forward(layers, x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = x + layer(x, x, x, cu_seqlens=cu)
    return x


def _tokens(cu: list[int], dtype=torch.bfloat16) -> torch.Tensor:
    return torch.randn(1, cu[-1], HEADS * HEAD_SIZE, dtype=dtype) * 0.1


@pytest.mark.parametrize("provider", ["npu", None], ids=["fake-npu", "cpu-default"])
def test_handed_over_host_offsets_cost_no_read(provider, reads, request):
    if provider == "npu":
        fake = request.getfixturevalue("fake_npu")
    cu_host = np.array(cu_from_lengths([30, 7, 50]), dtype=np.int32)  # as vLLM builds it
    cu = mea.to_device_cu_seqlens(cu_host, "cpu")
    _forward(_encoder(provider), _tokens(cu_host.tolist()), cu)
    assert reads == []
    if provider == "npu":
        assert len(fake.calls) == LAYERS
        # One host lengths tensor, built once, shared by every layer's kernel call.
        assert len({id(c.seq_len) for c in fake.calls}) == 1
        assert fake.calls[0].seq_len.tolist() == [30, 7, 50]


@pytest.mark.parametrize("provider", ["npu", None], ids=["fake-npu", "cpu-default"])
def test_unknown_cu_seqlens_read_once_per_forward(provider, reads, request):
    if provider == "npu":
        request.getfixturevalue("fake_npu")
    layers = _encoder(provider)
    host = cu_from_lengths([12, 40])
    cu = torch.tensor(host, dtype=torch.int32)  # made on the "device" with no host hand-over
    with mea.encoder_forward() as fwd:
        _forward(layers, _tokens(host), cu)
    assert len(reads) == 1 and fwd.host_reads == 1 and fwd.hits == LAYERS - 1


def test_next_request_with_other_images_is_not_stale(fake_npu, reads):
    layers = _encoder("npu")
    for lengths in ([30, 7], [3, 3, 3, 64], [100]):
        host = cu_from_lengths(lengths)
        fake_npu.calls.clear()
        _forward(layers, _tokens(host), torch.tensor(host, dtype=torch.int32))
        assert {tuple(c.seq_len.tolist()) for c in fake_npu.calls} == {tuple(lengths)}
    assert len(reads) == 3


def test_buffer_refilled_in_place_is_not_stale(fake_npu, reads):
    """A reused cu_seqlens buffer: its version counter moves on copy_, the cache notices."""
    layers = _encoder("npu")
    buf = torch.tensor(cu_from_lengths([10, 10, 10]), dtype=torch.int32)
    _forward(layers, _tokens(buf.tolist()), buf)
    buf.copy_(torch.tensor(cu_from_lengths([5, 20, 1]), dtype=torch.int32))
    fake_npu.calls.clear()
    _forward(layers, _tokens(buf.tolist()), buf)
    assert {tuple(c.seq_len.tolist()) for c in fake_npu.calls} == {(5, 20, 1)}
    assert len(reads) == 2


def test_inference_buffer_refilled_in_place_inside_forward_scopes(fake_npu, reads):
    """Inference tensors have no version counter: a per-forward scope keeps them honest."""
    layers = _encoder("npu")
    with torch.inference_mode():
        buf = torch.tensor(cu_from_lengths([10, 10, 10]), dtype=torch.int32)
        for lengths in ([10, 10, 10], [5, 20, 1]):
            buf.copy_(torch.tensor(cu_from_lengths(lengths), dtype=torch.int32))
            fake_npu.calls.clear()
            with mea.encoder_forward() as fwd:
                _forward(layers, _tokens(buf.tolist()), buf)
            assert {tuple(c.seq_len.tolist()) for c in fake_npu.calls} == {tuple(lengths)}
            assert fwd.host_reads == 1
    assert len(reads) == 2


def test_forget_drops_remembered_lengths(fake_npu, reads):
    cu = mea.to_device_cu_seqlens([0, 4, 9], "cpu")
    mea.forget(cu)
    _forward(_encoder("npu")[:2], _tokens([0, 4, 9]), cu)
    assert len(reads) == 1


def test_two_encoders_interleaved_keep_their_own_lengths(fake_npu, reads):
    """Two towers (or Qwen2.5-VL's window and full attention) alternate two cu_seqlens."""
    full = mea.to_device_cu_seqlens(cu_from_lengths([64, 32]), "cpu")
    window = mea.to_device_cu_seqlens(cu_from_lengths([16] * 6), "cpu")
    layers = _encoder("npu", prefix="")
    x = _tokens(full.tolist())
    for n, layer in enumerate(layers):
        x = x + layer(x, x, x, cu_seqlens=window if n % 3 else full)
    expected = [(64, 32) if n % 3 == 0 else (16,) * 6 for n in range(LAYERS)]
    assert [tuple(c.seq_len.tolist()) for c in fake_npu.calls] == expected
    assert reads == []


def test_remember_rejects_mismatched_offsets():
    with pytest.raises(ValueError, match="same sequences"):
        mea.remember_host_cu_seqlens(torch.zeros(3, dtype=torch.int32), [0, 5])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        mea.remember_host_cu_seqlens([0, 5], [0, 5])  # type: ignore[arg-type]


def test_equal_lengths_need_no_read(fake_npu, reads):
    layers = _encoder("npu")
    x = torch.randn(2, 9, HEADS * HEAD_SIZE, dtype=torch.bfloat16)
    for layer in layers:
        x = x + layer(x, x, x)
    assert reads == [] and len({id(c.seq_len) for c in fake_npu.calls}) == 1


def test_alias_of_a_known_tensor_costs_no_read(reads):
    """Another tensor object over the same memory (a compiler may pass one) hits the cache."""
    cu = mea.to_device_cu_seqlens([0, 4, 9], "cpu")
    layers = _encoder(None)[:3]
    _forward(layers, _tokens([0, 4, 9]), cu.detach())
    assert reads == []
    cu.add_(0)  # in place: the shared version counter moves, the alias must miss
    _forward(layers, _tokens([0, 4, 9]), cu.detach())
    assert len(reads) == 1


def test_alias_after_its_owner_died_is_read_again(reads):
    owner = mea.to_device_cu_seqlens([0, 4, 9], "cpu")
    alias = owner.detach()
    del owner  # its memory lives on in the alias, but the entry no longer vouches for it
    _forward(_encoder(None)[:2], _tokens([0, 4, 9]), alias)
    assert len(reads) == 1
