"""The tile-config table and the selection rule: M picks among same-chain tiles only."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from fp8_testing import FP8, GENERIC_SHAPES, QWEN3_8B

import bi_cutlass_fp8
from bi_cutlass_fp8 import _configs
from bi_cutlass_fp8._configs import (
    DESCRIBED_CONFIGS,
    SM90_CONFIGS,
    SM90_COOP,
    SM90_DEFAULT,
    SM90_N1280,
    SM90_PINGPONG,
    config_by_name,
    select_config,
)
from bi_cutlass_fp8.ops.scaled_mm import plan_scaled_mm

scaled_mm_module = importlib.import_module("bi_cutlass_fp8.ops.scaled_mm")
ALL_SHAPES = {**GENERIC_SHAPES, **QWEN3_8B}
M_VALUES = (1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4096, 8192)


def test_m_is_an_optional_keyword_of_the_selection() -> None:
    params = inspect.signature(select_config).parameters
    assert list(params) == ["n", "k", "arch", "m"] and params["m"].default is None


@pytest.mark.parametrize(("m", "n", "expected"), [
    pytest.param(None, 4096, SM90_DEFAULT, id="no-m"),
    pytest.param(0, 4096, SM90_DEFAULT, id="m0"),
    pytest.param(1, 4096, SM90_DEFAULT, id="m1"),
    pytest.param(64, 4096, SM90_DEFAULT, id="m64"),
    pytest.param(64, 1024, SM90_N1280, id="m64-narrow"),
    pytest.param(65, 4096, SM90_PINGPONG, id="m65"),
    pytest.param(65, 1024, SM90_PINGPONG, id="m65-narrow"),
    pytest.param(256, 4096, SM90_PINGPONG, id="m256"),
    pytest.param(257, 4096, SM90_COOP, id="m257"),
    pytest.param(8192, 1024, SM90_COOP, id="m8192-narrow"),
])  # fmt: skip
def test_sm90_tile_follows_the_m_bands(m: int | None, n: int, expected: object) -> None:
    assert select_config(n, 4096, 90, m=m) is expected


def test_every_selectable_sm90_config_shares_the_chain() -> None:
    """What the per-M choice rests on, as far as a CPU can see it: one accumulation recipe.

    Every tile the rule can return is a built swap-AB SM90 config with fast accumulation and a
    k-tile of whole FP8 wgmma steps, so only the CTA's extent and the warp schedule vary. The
    bits themselves are compared on the GPU (test_scaled_mm.py).
    """
    chosen = {select_config(n, k, 90, m=m) for n, k in ALL_SHAPES.values() for m in M_VALUES}
    assert chosen <= set(SM90_CONFIGS) and len(chosen) >= 3
    assert {(c.swap_ab, c.fast_accum, c.built) for c in chosen} == {(True, True, True)}
    assert all(c.tile_k % 32 == 0 for c in chosen)


def test_negative_m_raises() -> None:
    with pytest.raises(ValueError, match="m must be >= 0"):
        select_config(4096, 4096, 90, m=-1)


@pytest.mark.parametrize("m", [None, 1, 4096])
def test_described_archs_ignore_m(m: int | None) -> None:
    assert select_config(4096, 4096, 100, m=m) is select_config(4096, 4096, 100)


@pytest.mark.parametrize(("n", "k", "expected"), [
    pytest.param(16, 16, SM90_N1280, id="tiny"),
    pytest.param(1280, 4096, SM90_N1280, id="n1280-edge"),
    pytest.param(1296, 4096, SM90_DEFAULT, id="n1296"),
    pytest.param(1024, 2048, SM90_N1280, id="n1024_k2048"),
    *(pytest.param(n, k, SM90_DEFAULT, id=name) for name, (n, k) in QWEN3_8B.items()),
])  # fmt: skip
def test_sm90_selection(n: int, k: int, expected: _configs.TileConfig) -> None:
    assert select_config(n, k, 90) is expected


@pytest.mark.parametrize(("arch", "n", "k", "name"), [
    pytest.param(89, 4096, 4096, "sm89_w64_t64_k128_mma_sync", id="sm89"),
    pytest.param(89, 12288, 4096, "sm89_w64_t128_k128_mma_sync", id="sm89-wide-n"),
    pytest.param(100, 4096, 2048, "sm100_w64_t64_k128_noswap", id="sm100-small-k"),
    pytest.param(100, 4096, 4096, "sm100_w128_t64_k256_c4x1", id="sm100-large-k"),
    pytest.param(120, 4096, 4096, "sm120_w64_t64_k128_pp", id="sm120"),
])  # fmt: skip
def test_described_archs(arch: int, n: int, k: int, name: str) -> None:
    cfg = select_config(n, k, arch)
    assert cfg.name == name and cfg.arch == arch and not cfg.built


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"sm80.*sm89, sm90, sm100, sm120"):
        select_config(4096, 4096, 80)


@pytest.mark.parametrize(("n", "k"), [(0, 16), (16, 0), (-16, 16)])
def test_nonpositive_sizes_raise(n: int, k: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        select_config(n, k)


def test_config_names_unique_and_findable() -> None:
    names = [c.name for c in _configs.ALL_CONFIGS]
    assert len(names) == len(set(names))
    for cfg in _configs.ALL_CONFIGS:
        assert config_by_name(cfg.name) is cfg
    with pytest.raises(ValueError, match="valid names: sm90_"):
        config_by_name("sm90_nope")


@pytest.mark.parametrize("cfg", SM90_CONFIGS, ids=lambda c: c.name)
def test_sm90_configs_fit_wgmma_and_schedules(cfg: _configs.TileConfig) -> None:
    """Shapes the SM90 FP8 wgmma and CUTLASS's schedules accept."""
    assert cfg.built and cfg.arch == 90 and cfg.swap_ab
    assert cfg.tile_w % 64 == 0  # wgmma M is 64 per warpgroup
    assert cfg.tile_t % 8 == 0 and 8 <= cfg.tile_t <= 256  # wgmma N
    assert cfg.tile_k % 32 == 0  # FP8 wgmma K is 32 (and a k-tile is >= 128 bytes)
    assert cfg.tile_k * 1 >= 128
    if cfg.schedule == "cooperative":
        assert cfg.tile_w >= 128  # two warpgroups split the weight rows
    assert cfg.cluster_w * cfg.cluster_t <= 8  # portable cluster size
    kernel, epilogue, scheduler = cfg.cutlass_types()
    assert (
        kernel.startswith("cutlass::gemm::Kernel") and ("FP8FastAccum" in kernel) == cfg.fast_accum
    )
    assert epilogue.startswith("cutlass::epilogue::TmaWarpSpecialized")
    assert scheduler == ("void" if cfg.schedule == "ws" else "cutlass::gemm::PersistentScheduler")


@pytest.mark.parametrize("cfg", DESCRIBED_CONFIGS, ids=lambda c: c.name)
def test_described_configs_are_not_built(cfg: _configs.TileConfig) -> None:
    assert not cfg.built and cfg.arch != 90 and cfg.note
    with pytest.raises(ValueError, match="only sm90 is built"):
        cfg.cutlass_types()


def _meta_args(
    m: int, n: int, k: int, per_row: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.empty(m, k, dtype=FP8, device="meta")
    b = torch.empty(n, k, dtype=FP8, device="meta").t()
    sa = torch.empty(m, 1, device="meta") if per_row else torch.empty(1, device="meta")
    sb = torch.empty(1, n, device="meta") if per_row else torch.empty((), device="meta")
    return a, b, sa, sb


@pytest.mark.parametrize(("n", "k"), list(ALL_SHAPES.values()), ids=list(ALL_SHAPES))
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_plan_takes_the_tile_of_its_m(n: int, k: int, per_row: bool) -> None:
    plans = {m: plan_scaled_mm(*_meta_args(m, n, k, per_row), torch.bfloat16) for m in M_VALUES}
    for m, plan in plans.items():
        assert plan.shape.m == m and plan.config is select_config(n, k, 90, m=m)


def test_plan_calls_selection_with_n_k_arch_m(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    def spy(*args: object, **kwargs: object) -> _configs.TileConfig:
        calls.append(args + tuple(kwargs.values()))
        return select_config(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scaled_mm_module, "select_config", spy)
    for m in (1, 17, 4096):
        plan_scaled_mm(*_meta_args(m, 4096, 12288, True), torch.float16)
    assert calls == [(4096, 12288, 90, m) for m in (1, 17, 4096)]


def test_public_api_exports_selection() -> None:
    assert bi_cutlass_fp8.select_config is select_config
    assert bi_cutlass_fp8.SM90_CONFIGS == SM90_CONFIGS
