"""JIT build plumbing on CPU: flags, generated sources, cache directory, clear errors.

The optional compile check (``BI_CUTLASS_FP8_COMPILE_CHECK=1``) runs nvcc on one generated
instantiation for sm_90a - no GPU needed - where nvcc and the CUTLASS headers exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from bi_cutlass_fp8 import _jit
from bi_cutlass_fp8._configs import SM90_CONFIGS, SM90_DEFAULT, TileConfig


def test_arch_flags_target_sm90a_only() -> None:
    assert _jit.arch_flags() == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(ValueError, match="only sm90"):
        _jit.arch_flags(100)


def test_nvcc_flags() -> None:
    flags = _jit.nvcc_flags()
    for needed in ("-std=c++17", "--expt-relaxed-constexpr", "-O3", "-U__CUDA_NO_HALF_OPERATORS__"):
        assert needed in flags
    assert not any("fast_math" in f or "fast-math" in f for f in flags)
    assert not any(f.startswith("-std") for f in _jit.host_flags())  # torch picks the host std


def test_kernel_table_covers_configs_and_dtypes() -> None:
    specs = _jit.kernel_specs()
    assert [s.key for s in specs] == [
        f"{c.name}:{d}" for c in SM90_CONFIGS for d in ("bfloat16", "float16")
    ]
    for i, s in enumerate(specs):
        assert _jit.kernel_index(s.config.name, s.out_dtype) == i
    with pytest.raises(ValueError, match="no built kernel"):
        _jit.kernel_index("sm89_w64_t64_k128_mma_sync", torch.bfloat16)


def test_instance_source_spells_the_config() -> None:
    spec = _jit.KernelSpec(SM90_DEFAULT, torch.float16)
    text = _jit.instance_source(spec)
    assert "Sm90ScaledGemm<\n    64, 64, 256, 1, 1," in text
    assert "cutlass::gemm::KernelTmaWarpSpecializedFP8FastAccum" in text
    assert "cutlass::half_t" in text
    assert f"int run_{spec.symbol}(" in text and f"size_t workspace_{spec.symbol}(" in text


def test_every_config_tile_reaches_cpp() -> None:
    sources = _jit.generated_sources()
    for cfg in SM90_CONFIGS:
        for suffix in ("bf16", "fp16"):
            text = sources[f"instance_{cfg.name}_{suffix}.cu"]
            tile = f"{cfg.tile_w}, {cfg.tile_t}, {cfg.tile_k}, {cfg.cluster_w}, {cfg.cluster_t},"
            assert tile in text


def test_table_header_matches_specs() -> None:
    specs = _jit.kernel_specs()
    table = _jit.table_source(specs)
    assert f"kNumKernels = {len(specs)};" in table
    rows = re.findall(r'\{"(\w+)", (\d), &run_(\w+), &workspace_(\w+)\}', table)
    assert [(r[0], int(r[1])) for r in rows] == [
        (s.config.name, 0 if s.out_dtype == torch.bfloat16 else 1) for s in specs
    ]
    assert all(r[2] == r[3] for r in rows)


def test_non_sm90_config_cannot_be_built() -> None:
    cfg = TileConfig(name="x", arch=100, tile_w=128, tile_t=64, tile_k=256, built=False)
    with pytest.raises(ValueError, match="not a built sm90 config"):
        _jit.kernel_specs((cfg,))


def test_build_hash_follows_the_table() -> None:
    base = _jit.build_hash()
    assert base == _jit.build_hash()
    assert len(base) == 16
    assert _jit.build_hash(_jit.kernel_specs(SM90_CONFIGS[:1])) != base


def test_write_sources_is_idempotent(tmp_path: Path) -> None:
    sources = _jit.write_sources(tmp_path)
    assert sources[0].endswith("bi_fp8_binding.cpp")
    assert len(sources) == 1 + len(_jit.kernel_specs())
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    _jit.write_sources(tmp_path)
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert (tmp_path / "bi_fp8_table.h").is_file()


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(_jit.ENV_CACHE, str(tmp_path / "c"))
    assert _jit.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(_jit.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _jit.cache_dir() == tmp_path / "bi_cutlass_fp8"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _jit.cache_dir() == Path.home() / ".cache" / "bi_cutlass_fp8"


def test_missing_cutlass_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(_jit.ENV_CUTLASS, str(tmp_path))
    with pytest.raises(_jit.BuildError, match="does not look like a CUTLASS checkout"):
        _jit.cutlass_root()
    monkeypatch.delenv(_jit.ENV_CUTLASS)
    monkeypatch.setattr(_jit.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(_jit.BuildError, match=r"nvidia-cutlass.*bi-cutlass-fp8\[cuda\]"):
        _jit.cutlass_root()


def test_cutlass_override_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "include" / "cutlass").mkdir(parents=True)
    (tmp_path / "include" / "cutlass" / "cutlass.h").write_text("")
    monkeypatch.setenv(_jit.ENV_CUTLASS, str(tmp_path))
    assert _jit.cutlass_include_dirs() == [
        str(tmp_path / "include"),
        str(tmp_path / "tools" / "util" / "include"),
    ]
    assert _jit.cutlass_version().startswith("checkout:")


def test_missing_nvcc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(_jit, "DEFAULT_CUDA_HOME", tmp_path)
    with pytest.raises(_jit.BuildError, match=r"nvcc not found.*CUDA_HOME"):
        _jit.find_nvcc()


def _fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho '#$ _HERE_=" + str(root / "bin") + "' >&2\n")
    nvcc.chmod(0o755)
    return nvcc


def test_cuda_home_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert _jit.find_cuda_home() == tmp_path / "cuda"
    assert _jit.find_nvcc() == tmp_path / "cuda" / "bin" / "nvcc"


def test_cuda_home_behind_a_wrapper_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH ``nvcc`` that only exec's the real one: the dry run names the real directory."""
    real = _fake_toolkit(tmp_path / "cuda-13.0")
    wrapper_dir = tmp_path / "local" / "bin"
    wrapper_dir.mkdir(parents=True)
    (wrapper_dir / "nvcc").write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    (wrapper_dir / "nvcc").chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert _jit.find_cuda_home() == tmp_path / "cuda-13.0"


def test_no_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jit._platform, "cuda_available", lambda: False)
    with pytest.raises(_jit.BuildError, match="needs an NVIDIA GPU"):
        _jit.build()
    with pytest.raises(_jit.BuildError, match="needs an NVIDIA GPU"):
        _jit.get_module()  # exceptions are not cached: a later call tries again


def test_wrong_arch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jit._platform, "cuda_available", lambda: True)
    monkeypatch.setattr(_jit._platform, "sm_version", lambda device=None: 89)
    with pytest.raises(_jit.BuildError, match=r"sm90 .* only; this GPU is sm89.*dequant_bf16"):
        _jit.check_build_prerequisites()


def _compile_check_skip_reason() -> str | None:
    if os.environ.get("BI_CUTLASS_FP8_COMPILE_CHECK", "") in ("", "0"):
        return "set BI_CUTLASS_FP8_COMPILE_CHECK=1 to compile one instance with nvcc (~1-2 min)"
    try:
        _jit.find_nvcc()
        _jit.cutlass_root()
    except _jit.BuildError as err:
        return str(err)
    return None


@pytest.mark.slow
@pytest.mark.skipif(
    _compile_check_skip_reason() is not None, reason=str(_compile_check_skip_reason())
)
@pytest.mark.parametrize("config", [SM90_CONFIGS[0].name, SM90_DEFAULT.name])
def test_instance_compiles_for_sm90a(config: str) -> None:
    """nvcc compiles a generated instantiation for sm_90a and emits FP8 wgmma (no GPU needed)."""
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp)
        _jit.write_sources(build)
        src = build / f"instance_{config}_bf16.cu"
        cmd = [
            str(_jit.find_nvcc()), "-ptx", str(src), "-o", str(build / "out.ptx"),
            *[f for f in _jit.nvcc_flags() if not f.startswith("-Xptxas")],
            f"-I{_jit.CSRC}", f"-I{build}", *[f"-I{d}" for d in _jit.cutlass_include_dirs()],
        ]  # fmt: skip
        cmd = [c.replace("code=sm_90a", "code=compute_90a") for c in cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        ptx = (build / "out.ptx").read_text()
        assert "wgmma.mma_async" in ptx and ".e4m3.e4m3" in ptx
        assert "cp.async.bulk.tensor" in ptx  # TMA loads
