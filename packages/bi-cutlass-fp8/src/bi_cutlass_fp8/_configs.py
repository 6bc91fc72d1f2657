"""Tile configurations of the FP8 GEMM and the rule that picks one from ``(M, N, K, arch)``.

Why this is the batch-invariance argument: every built SM90 config reduces an output element
by the same chain - k-tiles in order into one fast accumulator through the same FP8 wgmma
(K = 32 per instruction), no split-K - and differs only in how many weight rows and tokens a
CTA covers and how its warps are scheduled. So every config gives a token's row the same bits,
and the tile may follow the batch size: small tiles for decode, 128 x 128 tiles for prefill.
That premise is measured, not assumed: ``tests/test_scaled_mm.py::
test_built_configs_give_the_same_bits`` runs every built config on the Qwen3-8B shapes and
fails unless all agree bitwise (they did on an H200, 2026-11-26:
``bench/results/fp8_same_bits_h200.junit.xml``). Without ``m``, :func:`select_config` returns
vLLM's M-independent choice. The C++ side is generated from :data:`SM90_CONFIGS`, so it cannot
pick a tile on its own.

All SM90 configs are "swap-AB": the kernel computes ``out^T = W @ a^T``, so the tile's first
dimension (``tile_w``) covers weight rows (output channels, N) and its second (``tile_t``)
covers tokens (M). The SM89/SM100/SM120 entries are described here (and in the README) but not
built: there is no kernel for them in this package yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["ws", "pingpong", "cooperative"]

# CUTLASS type names per (schedule, fast_accum): kernel schedule, epilogue schedule, scheduler.
_SM90_SCHEDULES: dict[tuple[str, bool], tuple[str, str, str]] = {
    ("ws", True): (
        "cutlass::gemm::KernelTmaWarpSpecializedFP8FastAccum",
        "cutlass::epilogue::TmaWarpSpecialized",
        "void",
    ),
    ("ws", False): (
        "cutlass::gemm::KernelTmaWarpSpecialized",
        "cutlass::epilogue::TmaWarpSpecialized",
        "void",
    ),
    ("pingpong", True): (
        "cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum",
        "cutlass::epilogue::TmaWarpSpecialized",
        "cutlass::gemm::PersistentScheduler",
    ),
    ("pingpong", False): (
        "cutlass::gemm::KernelTmaWarpSpecializedPingpong",
        "cutlass::epilogue::TmaWarpSpecialized",
        "cutlass::gemm::PersistentScheduler",
    ),
    ("cooperative", True): (
        "cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum",
        "cutlass::epilogue::TmaWarpSpecializedCooperative",
        "cutlass::gemm::PersistentScheduler",
    ),
    ("cooperative", False): (
        "cutlass::gemm::KernelTmaWarpSpecializedCooperative",
        "cutlass::epilogue::TmaWarpSpecializedCooperative",
        "cutlass::gemm::PersistentScheduler",
    ),
}


@dataclass(frozen=True)
class TileConfig:
    """One fixed GEMM configuration.

    Attributes:
        name: identifier; also names the generated C++ instantiation.
        arch: SM version the config targets (90 = Hopper, 89 = Ada, 100 = Blackwell DC,
            120 = Blackwell consumer).
        tile_w: tile extent over weight rows (output channels, N) - the wgmma M side.
        tile_t: tile extent over tokens (M) - the wgmma N side.
        tile_k: tile extent over K (one k-tile of the in-order reduction).
        cluster_w: CTAs per cluster along weight rows (they share the token tile by TMA
            multicast).
        cluster_t: CTAs per cluster along tokens (they share the weight tile).
        schedule: ``ws`` (one consumer warpgroup, not persistent), ``pingpong`` (two consumer
            warpgroups on alternate tiles, persistent) or ``cooperative`` (two warpgroups
            split one tile, persistent).
        fast_accum: accumulate in the tensor core's FP8 accumulator across all of K (CUTLASS
            ``FP8FastAccum``) instead of promoting to fp32 every 4 wgmma k-blocks. Either is
            deterministic; fast accumulation loses more precision at large K.
        swap_ab: weight rows on the wgmma M side (always true for the SM90 configs).
        built: whether this package compiles a kernel for it (only SM90 today).
        note: where the config comes from and what it is for.
    """

    name: str
    arch: int
    tile_w: int
    tile_t: int
    tile_k: int
    cluster_w: int = 1
    cluster_t: int = 1
    schedule: Schedule = "ws"
    fast_accum: bool = True
    swap_ab: bool = True
    built: bool = False
    note: str = ""

    @property
    def tile(self) -> tuple[int, int, int]:
        """``(tile_w, tile_t, tile_k)`` in CUTLASS's (M', N', K) order of the swapped problem."""
        return (self.tile_w, self.tile_t, self.tile_k)

    @property
    def cluster(self) -> tuple[int, int, int]:
        return (self.cluster_w, self.cluster_t, 1)

    def cutlass_types(self) -> tuple[str, str, str]:
        """CUTLASS kernel schedule, epilogue schedule and tile scheduler type names."""
        if self.arch != 90:
            raise ValueError(f"config {self.name!r} targets sm{self.arch}; only sm90 is built")
        return _SM90_SCHEDULES[(self.schedule, self.fast_accum)]


# --------------------------------------------------------------------------- SM90 (built)
# vLLM's batch-invariant SM90 FP8 choice: swap-AB at every M; 64x16x256 with a 1x4 cluster for
# narrow outputs (N <= 1280), 64x64x256 otherwise, one consumer warpgroup, fast accumulation.
SM90_N1280 = TileConfig(
    name="sm90_w64_t16_k256_c1x4_ws",
    arch=90,
    tile_w=64,
    tile_t=16,
    tile_k=256,
    cluster_t=4,
    schedule="ws",
    built=True,
    note="N <= 1280 (vLLM's batch-invariant SM90 tile): narrow N gives few weight tiles, so "
    "four CTAs share each weight tile over token blocks",
)
SM90_DEFAULT = TileConfig(
    name="sm90_w64_t64_k256_c1x1_ws",
    arch=90,
    tile_w=64,
    tile_t=64,
    tile_k=256,
    schedule="ws",
    built=True,
    note="N > 1280 (vLLM's batch-invariant SM90 tile): 64 weight rows per CTA keeps N/64 CTAs "
    "streaming weights in decode",
)
# Tiles for larger batches, picked per M band (:func:`select_config`) from the H200 sweep of
# bench/bench_fp8.py --all-configs (bench/results/bench_fp8_all_configs_h200.json).
SM90_PINGPONG = TileConfig(
    name="sm90_w64_t64_k256_c1x1_pp",
    arch=90,
    tile_w=64,
    tile_t=64,
    tile_k=256,
    schedule="pingpong",
    built=True,
    note="65 <= M <= 256: the default tile, persistent with two consumer warpgroups so one tile's "
    "epilogue overlaps the next tile's mainloop",
)
SM90_WIDE = TileConfig(
    name="sm90_w64_t128_k128_c2x1_pp",
    arch=90,
    tile_w=64,
    tile_t=128,
    tile_k=128,
    cluster_w=2,
    schedule="pingpong",
    built=True,
    note="not selected (below the cooperative tile at M = 512 on 3 of 4 shapes): 128 tokens "
    "per tile and the token tile multicast over two weight tiles raise arithmetic intensity "
    "at large M, at the price of more wasted MMA work in decode",
)

SM90_COOP = TileConfig(
    name="sm90_w128_t128_k128_c2x1_coop",
    arch=90,
    tile_w=128,
    tile_t=128,
    tile_k=128,
    cluster_w=2,
    schedule="cooperative",
    built=True,
    note="M > 256: the classic 128x128 tile, two warpgroups splitting the weight rows; "
    "0.76-0.95x torch._scaled_mm there, where the 64x64 tiles reach about 0.5x",
)

SM90_CONFIGS: tuple[TileConfig, ...] = (
    SM90_N1280,
    SM90_DEFAULT,
    SM90_PINGPONG,
    SM90_WIDE,
    SM90_COOP,
)

# ------------------------------------------------------------------ described, not built
# What an implementation for other archs would use (from vLLM's batch-invariant dispatch and
# the arch's MMA shapes); listed so the selection rule and README cover them.
SM89_DEFAULT = TileConfig(
    name="sm89_w64_t64_k128_mma_sync",
    arch=89,
    tile_w=64,
    tile_t=64,
    tile_k=128,
    schedule="ws",
    fast_accum=False,
    swap_ab=False,
    note="Ada: CUTLASS 2.x GemmUniversal, mma.sync m16n8k32 FP8, 5 stages, warp 32x64x64, no "
    "swap; vLLM keeps one such config for all M (its M64 bucket)",
)
SM89_WIDE_N = TileConfig(
    name="sm89_w64_t128_k128_mma_sync",
    arch=89,
    tile_w=64,
    tile_t=128,
    tile_k=128,
    schedule="ws",
    fast_accum=True,
    swap_ab=False,
    note="Ada, 8192 < N <= 16384: 64x128x128, warp 64x64x64, 3 stages, fast accumulation",
)
SM100_SMALL_K = TileConfig(
    name="sm100_w64_t64_k128_noswap",
    arch=100,
    tile_w=64,
    tile_t=64,
    tile_k=128,
    schedule="ws",
    swap_ab=False,
    note="Blackwell DC, K < 4096: tcgen05 64x64x128, 1x1 cluster, no swap (vLLM)",
)
SM100_LARGE_K = TileConfig(
    name="sm100_w128_t64_k256_c4x1",
    arch=100,
    tile_w=128,
    tile_t=64,
    tile_k=256,
    cluster_w=4,
    schedule="ws",
    note="Blackwell DC, K >= 4096: tcgen05 128x64x256 swap-AB, 4x1 cluster (vLLM)",
)
SM120_DEFAULT = TileConfig(
    name="sm120_w64_t64_k128_pp",
    arch=120,
    tile_w=64,
    tile_t=64,
    tile_k=128,
    schedule="pingpong",
    fast_accum=False,
    swap_ab=False,
    note="Blackwell consumer: 64x64x128 pingpong, 1x1 cluster (no multicast on sm120), no swap",
)

DESCRIBED_CONFIGS: tuple[TileConfig, ...] = (
    SM89_DEFAULT,
    SM89_WIDE_N,
    SM100_SMALL_K,
    SM100_LARGE_K,
    SM120_DEFAULT,
)
ALL_CONFIGS: tuple[TileConfig, ...] = SM90_CONFIGS + DESCRIBED_CONFIGS
SUPPORTED_ARCHS = (89, 90, 100, 120)
BUILT_ARCHS = (90,)

# The N threshold of the narrow-output tile (vLLM's).
NARROW_N = 1280

# SM90 tiles per batch size: up to DECODE_MAX_M tokens the decode configs above (vLLM's choice),
# up to PINGPONG_MAX_M the pingpong tile, above it the cooperative tile. Ratios to
# torch._scaled_mm (rowwise) on the Qwen3-8B shapes, H200: 65-256 tokens pingpong 0.95-1.43x,
# above 256 cooperative 0.76-0.95x.
DECODE_MAX_M = 64
PINGPONG_MAX_M = 256


def config_by_name(name: str) -> TileConfig:
    """The config called ``name`` (built or described)."""
    for cfg in ALL_CONFIGS:
        if cfg.name == name:
            return cfg
    valid = ", ".join(c.name for c in ALL_CONFIGS)
    raise ValueError(f"unknown tile config {name!r}; valid names: {valid}")


def select_config(n: int, k: int, arch: int = 90, m: int | None = None) -> TileConfig:
    """The tile configuration for an ``[M, K] @ [K, N]`` FP8 GEMM on ``sm<arch>``.

    The reduction order of an output element never depends on M (see the module docstring):
    on SM90 ``m`` only picks among configs that give the same bits. The described archs have
    one tile per ``(N, K)`` and ignore ``m``.

    Args:
        n: output features (weight rows).
        k: reduction length.
        arch: SM version, ``major * 10 + minor`` (90 for H100/H200).
        m: tokens in the batch; ``None`` (or ``m <= 64``) gives the decode tile, vLLM's
            M-independent choice.

    Returns:
        The config; check ``.built`` before asking for a kernel (only SM90 is built).

    Raises:
        ValueError: ``n``/``k`` are not positive, ``m`` is negative, or ``arch`` has no configs.
    """
    if n <= 0 or k <= 0:
        raise ValueError(f"select_config: n and k must be positive, got n={n}, k={k}")
    if m is not None and m < 0:
        raise ValueError(f"select_config: m must be >= 0 or None, got m={m}")
    if arch == 90:
        if m is None or m <= DECODE_MAX_M:
            return SM90_N1280 if n <= NARROW_N else SM90_DEFAULT
        return SM90_PINGPONG if m <= PINGPONG_MAX_M else SM90_COOP
    if arch == 89:
        return SM89_WIDE_N if 8192 < n <= 16384 else SM89_DEFAULT
    if arch == 100:
        return SM100_SMALL_K if k < 4096 else SM100_LARGE_K
    if arch == 120:
        return SM120_DEFAULT
    valid = ", ".join(f"sm{a}" for a in SUPPORTED_ARCHS)
    raise ValueError(f"select_config: no tile configs for sm{arch}; configs exist for {valid}")
