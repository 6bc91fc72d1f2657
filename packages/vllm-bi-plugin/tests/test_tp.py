"""TP-invariant mode on the fake vLLM tree: RowParallelLinear patched, undone, and bitwise.

TP > 1 runs the ranks as threads of one process that exchange partials through a fake TP group
(a barrier-synchronised all-gather), so the patched forward runs exactly as it would per rank.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

import ir_dispatch
import vllm_bi_plugin
from ir_dispatch import tp
from vllm_bi_plugin import _patch, _settings, _vllm_compat, plugin

TP_SIZES = (1, 2, 4, 8)


class ThreadGroup:
    """A TP group of ``size`` threads: ``all_gather`` along dim 0 and ``all_reduce`` (sum)."""

    def __init__(self, size: int) -> None:
        self.world_size = size
        self._barrier = threading.Barrier(size)
        self._slots: list[torch.Tensor | None] = [None] * size
        self._local = threading.local()

    def set_rank(self, rank: int) -> None:
        self._local.rank = rank

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._slots[self._local.rank] = x
        self._barrier.wait()
        parts = [t for t in self._slots if t is not None]
        self._barrier.wait()
        return parts

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return torch.cat(self._exchange(x), dim=dim)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        parts = self._exchange(x)
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out


def _linear_module():
    return _vllm_compat.import_module(_vllm_compat.LINEAR_MODULE)


def _run_tp(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, size: int, **kwargs: object
) -> list[object]:
    """Every rank's output of a RowParallelLinear at TP=``size`` (rank threads, fake group)."""
    linear = _linear_module()
    state = _vllm_compat.import_module(_vllm_compat.DISTRIBUTED_MODULE)
    group = ThreadGroup(size)
    state.TP_GROUP = group
    shard = w.shape[1] // size
    outs: list[object] = [None] * size
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            group.set_rank(r)
            layer = linear.RowParallelLinear(
                w[:, r * shard : (r + 1) * shard].contiguous(),
                bias,
                tp_rank=r,
                tp_size=size,
                **kwargs,
            )
            xr = (
                x
                if kwargs.get("input_is_parallel") is False
                else x[..., r * shard : (r + 1) * shard]
            )
            outs[r] = layer(xr)
        except BaseException as e:  # surfaced below
            errors.append(e)
            group._barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state.TP_GROUP = None
    if errors:
        raise errors[0]
    return outs


@pytest.fixture
def tp_plugin(fake_vllm_tree, monkeypatch) -> Callable[[str, str | None], None]:
    def register(layout: str, tp_value: str | None = "1") -> None:
        fake_vllm_tree(layout)
        monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
        monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
        if tp_value is None:
            monkeypatch.delenv(_settings.TP_INVARIANT_ENV, raising=False)
        else:
            monkeypatch.setenv(_settings.TP_INVARIANT_ENV, tp_value)
        vllm_bi_plugin.register()

    return register


def _data(seed: int, m: int = 5, k: int = 256, n: int = 48, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / 16).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    return x, w, bias


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_bad_tp_switch_is_a_value_error_naming_it(tp_plugin, value) -> None:
    with pytest.raises(ValueError, match=f"VLLM_BI_TP_INVARIANT='{value}'"):
        tp_plugin("0.32", value)
    assert plugin.installed() is None


def test_tp_switch_is_ignored_without_batch_invariant_mode(fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.32")
    monkeypatch.setenv(_settings.TP_INVARIANT_ENV, "bad")  # not even parsed
    vllm_bi_plugin.register()
    assert plugin.installed() is None


@pytest.mark.parametrize("layout", ["0.26", "0.32"])
def test_patch_installed_reported_and_undone(tp_plugin, layout) -> None:
    tp_plugin(layout)
    cls = _linear_module().RowParallelLinear
    original = _patch.original_of(cls.forward)
    assert original is not cls.forward
    report = plugin.installed()
    assert report is not None
    assert report.tp["mode"].startswith("TP-invariant")
    assert report.tp["segments"].startswith(str(tp.TP_SEGMENTS))
    assert "collective" in report.tp
    assert "tensor parallel: " in report.summary()
    assert "mode TP-invariant (VLLM_BI_TP_INVARIANT=1)" in report.summary()
    plugin.unregister()
    assert cls.forward is original


def test_without_tp_mode_forward_is_vllms_and_collective_recorded(tp_plugin) -> None:
    tp_plugin("0.32", None)
    cls = _linear_module().RowParallelLinear
    assert _patch.original_of(cls.forward) is cls.forward
    report = plugin.installed()
    assert report is not None
    assert report.tp["mode"].startswith("bitwise at a fixed TP size")
    assert "collective" in report.tp and "segments" not in report.tp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_tp1_is_ir_dispatch_row_parallel_linear_and_tp_2_4_8_match(
    tp_plugin, with_bias, dtype
) -> None:
    tp_plugin("0.32")
    x, w, bias = _data(0, dtype=dtype)
    b = bias if with_bias else None
    expected = tp.row_parallel_linear(x, w, b)
    if dtype == torch.float32:  # control: vLLM's unpatched TP=1 forward gives other bits
        assert not torch.equal(torch.nn.functional.linear(x, w, b), expected)
    for size in TP_SIZES:
        assert torch.equal(tp.emulate_row_parallel_linear(x, w, size, b), expected), size
        for r, out in enumerate(_run_tp(x, w, b, size)):
            assert isinstance(out, torch.Tensor) and out.dtype == x.dtype
            assert torch.equal(out, expected), (size, r)


def test_split_input_and_return_bias(tp_plugin) -> None:
    tp_plugin("0.26")
    x, w, bias = _data(1)
    expected = tp.row_parallel_linear(x, w, None)
    for out in _run_tp(
        x, w, bias, 2, input_is_parallel=False, skip_bias_add=True, return_bias=True
    ):
        assert isinstance(out, tuple)
        assert torch.equal(out[0], expected) and torch.equal(out[1], bias)


def test_without_tp_mode_tp1_and_tp2_differ(tp_plugin) -> None:
    """vLLM's order (rank partials in bf16, then summed) changes the bits with the TP size."""
    tp_plugin("0.32", None)
    x, w, bias = _data(2, m=8, k=512, n=64)
    one = _run_tp(x, w, bias, 1)[0]
    two = _run_tp(x, w, bias, 2)
    assert isinstance(one, torch.Tensor) and isinstance(two[0], torch.Tensor)
    assert torch.equal(two[0], two[1])
    assert not torch.equal(one, two[0])


def test_patched_forward_compiles_whole(tp_plugin) -> None:
    tp_plugin("0.32")
    x, w, bias = _data(3)
    layer = _linear_module().RowParallelLinear(w, bias)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), tp.row_parallel_linear(x, w, bias))
    assert ir_dispatch.is_batch_invariant()


def test_info_shows_tp_mode_segments_and_collective(fake_vllm_tree, monkeypatch) -> None:
    from vllm_bi_plugin import info

    fake_vllm_tree("0.26")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cpu")
    monkeypatch.setenv(_settings.TP_INVARIANT_ENV, "1")
    data = info.gather()
    plan = data["would_install"]
    assert plan["tp"]["mode"].startswith("TP-invariant")
    assert plan["tp"]["segments"].startswith(str(tp.TP_SEGMENTS))
    text = info.format_info(data)
    assert "VLLM_BI_TP_INVARIANT: 1" in text
    assert "tensor parallel mode: TP-invariant" in text
    assert "tensor parallel collective: " in text
    assert plugin.installed() is None  # the dry run undid itself
    assert _patch.original_of(_linear_module().RowParallelLinear.forward) is (
        _linear_module().RowParallelLinear.forward
    )


def test_chain_rule_set_and_undone(tp_plugin) -> None:
    from bi_triton_ascend.ops import gemm_config

    tp_plugin("0.32")
    assert gemm_config.n_independent_chain()
    plugin.unregister()
    assert not gemm_config.n_independent_chain()


def test_unregister_imports_no_provider_package(tp_plugin, monkeypatch) -> None:
    """Undoing must not import bi_triton_ascend (its import registers kernels on CPU too)."""
    tp_plugin("0.32", None)
    real = builtins.__import__
    names: list[str] = []

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    try:
        plugin.unregister()
    finally:
        monkeypatch.setattr(builtins, "__import__", real)
    assert plugin.installed() is None
    assert not [n for n in names if n.startswith("bi_triton_ascend")]
