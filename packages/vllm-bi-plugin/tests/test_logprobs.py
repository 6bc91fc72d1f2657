"""vLLM's reported logprobs through ir-dispatch's ``token_logprobs`` (``_logprobs``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vllm_bi_plugin import _logprobs, _patch, _providers, _vllm_compat, plugin
from vllm_bi_plugin._report import Report


@pytest.fixture(autouse=True)
def _no_provider_imports(monkeypatch) -> None:
    """Keep GPU provider packages unimported: importing one registers its kernels on CPU too."""
    monkeypatch.setattr(plugin, "import_providers", lambda platform: [])
    monkeypatch.setattr(_providers, "import_providers", lambda platform: [])


def _module() -> Any:
    return _vllm_compat.import_module(_vllm_compat.GPU_LOGPROB_MODULE)


def _inputs(rows: int = 7, vocab: int = 1000, dtype: torch.dtype = torch.bfloat16) -> tuple:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    ids = torch.randint(0, vocab, (rows, 3), generator=gen)
    return logits, ids


def test_replacement_is_the_kit_log_softmax_at_the_ids() -> None:
    import ir_dispatch

    logits, ids = _inputs()
    with ir_dispatch.batch_invariant():
        got = _logprobs.compute_token_logprobs(logits, ids)
        want = ir_dispatch.ops.log_softmax(logits.float(), -1, torch.float32).gather(-1, ids)
    assert got.dtype == torch.float32 and got.shape == ids.shape
    assert torch.equal(got, want)
    torch.testing.assert_close(got, torch.log_softmax(logits.double(), -1).gather(-1, ids).float())


def test_one_token_logprobs_dispatch_and_rows_alone_equal_rows_in_the_batch() -> None:
    """No row blocking any more: one ``token_logprobs`` call; each row's bits are its own."""
    import ir_dispatch

    logits, ids = _inputs(rows=11, dtype=torch.float32)
    with ir_dispatch.batch_invariant(), ir_dispatch.recording() as rec:
        whole = _logprobs.compute_token_logprobs(logits, ids)
    assert rec.providers()["token_logprobs"] == ["composite"]  # CPU: log_softmax + gather
    with ir_dispatch.batch_invariant():
        alone = [
            _logprobs.compute_token_logprobs(logits[i : i + 1], ids[i : i + 1]) for i in (0, 5, 10)
        ]
    assert all(torch.equal(a[0], whole[i]) for a, i in zip(alone, (0, 5, 10), strict=True))
    assert not hasattr(_logprobs, "ROWS_PER_CALL")


@pytest.mark.parametrize("layout", ["0.26", "0.32"])
def test_gpu_register_routes_vllms_logprob_kernel(fake_vllm_tree, monkeypatch, layout) -> None:
    import vllm_bi_plugin

    fake_vllm_tree(layout)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cuda")
    monkeypatch.setattr(_logprobs, "covered", lambda needs, platform: True)
    vllm_bi_plugin.register()
    report = plugin.installed()
    assert report is not None
    module = _module()
    assert module.compute_token_logprobs is _logprobs.compute_token_logprobs
    assert any(
        "token logprobs" in line and "ir_dispatch::token_logprobs" in line
        for line in report.summary().split(";")
    )
    logits, ids = _inputs(rows=3)
    module.compute_topk_scores(logits, ids[:, 0])  # vLLM's caller looks the name up at call time
    assert module.CALLS == []
    plugin.unregister()
    _patch.undo_all()
    assert module.compute_token_logprobs is not _logprobs.compute_token_logprobs


def test_without_a_log_softmax_kernel_vllms_kernel_stays(fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.26")
    monkeypatch.setattr(_logprobs, "covered", lambda needs, platform: False)
    report = Report("cuda")
    assert _logprobs.install("cuda", report) is False
    assert _module().compute_token_logprobs is not _logprobs.compute_token_logprobs
    assert any("token logprobs" in k for k in report.kept)


def test_a_vllm_without_the_gpu_runner_module_is_left_alone(fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.32")

    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(_logprobs, "import_module", missing)
    assert _logprobs.install("cuda", Report("cuda")) is False
