"""``fuse_allreduce_rms`` off by default on GPUs, on the fake vLLM trees (``_fusions``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import vllm_bi_plugin
from vllm_bi_plugin import _fusions, _patch, _providers, _vllm_compat, info, plugin
from vllm_bi_plugin._report import Report

PASS = _vllm_compat.ALLREDUCE_RMS_PASS
LOGGER = "vllm.vllm_bi_plugin"


def _config_module() -> Any:
    return _vllm_compat.import_module(_vllm_compat.VLLM_CONFIG_MODULE)


def _defaults() -> dict[str, Any]:
    """Each level's fuse_allreduce_rms default, as stored (the objects themselves)."""
    table = _config_module().OPTIMIZATION_LEVEL_TO_CONFIG
    return {lvl.name: d["compilation_config"]["pass_config"][PASS] for lvl, d in table.items()}


def _built(tp: int = 2, level: int = 2, **passes: bool) -> bool:
    """fuse_allreduce_rms of a VllmConfig built now (vLLM applies the level's defaults)."""
    config = _config_module().VllmConfig(tp, level, passes)
    return bool(config.compilation_config.pass_config.fuse_allreduce_rms)


@pytest.fixture(autouse=True)
def _no_provider_imports(monkeypatch) -> None:
    """Keep GPU provider packages unimported: importing one registers its kernels on CPU too."""
    monkeypatch.setattr(plugin, "import_providers", lambda platform: [])
    monkeypatch.setattr(_providers, "import_providers", lambda platform: [])


@pytest.fixture
def bi_on(fake_vllm_tree, monkeypatch):
    """Register on ``platform`` over the fake tree the test made (``fake_vllm_tree``)."""

    def register(platform: str) -> Report:
        monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
        monkeypatch.setenv("IR_DISPATCH_PLATFORM", platform)
        vllm_bi_plugin.register()
        report = plugin.installed()
        assert report is not None
        return report

    return register


@pytest.mark.parametrize("layout", ["0.26", "0.32"])
@pytest.mark.parametrize("platform", ["cuda", "rocm"])
def test_gpu_default_is_off_at_every_level_and_restored(bi_on, fake_vllm_tree, platform, layout):
    fake_vllm_tree(layout)
    before = _defaults()
    assert callable(before["O2"]) and callable(before["O3"]) and before["O0"] is False
    assert _built(tp=2)  # control: vLLM's default turns the pass on at TP > 1
    report = bi_on(platform)
    after = _defaults()
    assert after == {level: False for level in before}
    for level in (2, 3):
        assert not _built(tp=2, level=level)
    assert (_fusions.THEIRS, _fusions.OURS) in report.replacements
    assert f"compile pass {PASS}" in report.summary()
    where = [p.where for p in _patch.applied() if p.item]
    assert where == [f"OPTIMIZATION_LEVEL_TO_CONFIG[O{n}].pass_config.{PASS}" for n in (2, 3)]
    plugin.unregister()
    restored = _defaults()
    assert all(restored[level] is before[level] for level in before)
    assert _built(tp=2)
    cls = _config_module().VllmConfig
    assert _patch.original_of(cls._apply_optimization_level_defaults) is (
        cls._apply_optimization_level_defaults
    )


def test_explicit_user_setting_wins_and_true_warns(bi_on, fake_vllm_tree, caplog) -> None:
    fake_vllm_tree("0.32")
    bi_on("cuda")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert not _built(tp=2, fuse_allreduce_rms=False)
        assert not caplog.records
        assert _built(tp=1, fuse_allreduce_rms=True)  # TP=1: no all-reduce to fuse, no warning
        assert not caplog.records
        assert _built(tp=2, fuse_allreduce_rms=True)
    warnings = [r for r in caplog.records if f"{PASS}=True was set explicitly" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


@pytest.mark.parametrize("platform", ["cpu", "npu"])
def test_other_platforms_keep_vllms_defaults(bi_on, fake_vllm_tree, platform) -> None:
    """vLLM never turns the pass on there: nothing is patched or reported."""
    fake_vllm_tree("0.32")
    before = _defaults()
    report = bi_on(platform)
    after = _defaults()
    assert all(after[level] is before[level] for level in before)
    assert not [p for p in _patch.applied() if p.item]
    assert not any(PASS in theirs for theirs, _ in report.replacements)
    assert not any(PASS in gap for gap in report.gaps)


def test_missing_table_is_a_gap_not_a_failure(bi_on, fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.32")
    monkeypatch.delattr(_config_module(), "OPTIMIZATION_LEVEL_TO_CONFIG")
    report = bi_on("cuda")
    assert any("OPTIMIZATION_LEVEL_TO_CONFIG not found" in gap for gap in report.gaps)
    assert not any(PASS in theirs for theirs, _ in report.replacements)


def test_table_without_the_pass_is_a_gap(bi_on, fake_vllm_tree) -> None:
    fake_vllm_tree("0.32")
    for defaults in _config_module().OPTIMIZATION_LEVEL_TO_CONFIG.values():
        del defaults["compilation_config"]["pass_config"][PASS]
    report = bi_on("cuda")
    assert any(f"names {PASS}" in gap for gap in report.gaps)


def test_install_twice_records_nothing_new(bi_on, fake_vllm_tree) -> None:
    fake_vllm_tree("0.26")
    bi_on("cuda")
    first = _patch.applied()
    _fusions.install("cuda", Report("cuda"))
    assert _patch.applied() == first


def test_info_shows_the_default_and_undoes_it(fake_vllm_tree, monkeypatch) -> None:
    fake_vllm_tree("0.26")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cuda")
    before = _defaults()
    data = info.gather()
    plan = data["would_install"]
    assert {"vllm": _fusions.THEIRS, "plugin": _fusions.OURS} in plan["replacements"]
    assert f"{_fusions.THEIRS}  ->  {_fusions.OURS}" in info.format_info(data)
    assert plugin.installed() is None
    restored = _defaults()
    assert all(restored[level] is before[level] for level in before)


def test_patch_item_records_undoes_and_refuses_new_keys() -> None:
    original = object()
    table: dict[str, Any] = {"k": original}
    try:
        assert _patch.patch_item(table, "k", False, where="T.k")
        assert not _patch.patch_item(table, "k", False, where="T.k")
        assert table["k"] is False
        assert [p.where for p in _patch.applied()] == ["T.k"]
        with pytest.raises(KeyError, match=r"T\.nope does not exist"):
            _patch.patch_item(table, "nope", False, where="T.nope")
        assert "nope" not in table
    finally:
        _patch.undo_all()
    assert table["k"] is original and _patch.applied() == ()
