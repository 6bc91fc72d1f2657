from __future__ import annotations

import sys

import pytest

from vllm_bi_plugin import _providers
from vllm_bi_plugin._providers import ProviderPackage


def test_every_platform_lists_its_packages() -> None:
    table = _providers.PACKAGES_BY_PLATFORM
    assert {p.module for p in table["cuda"]} == {"bi_triton_ascend", "bi_cutlass_fp8"}
    assert {p.module for p in table["npu"]} == {"bi_triton_ascend", "mm_encoder_ascend"}
    assert [p.module for p in table["cpu"]] == ["ir_dispatch.providers.cpu"]
    assert all(p.extra == "cuda" for p in table["cuda"])
    assert all(p.extra == "ascend" for p in table["npu"])


def test_missing_package_names_the_extra() -> None:
    pkg = ProviderPackage("no_such_module_xyz", "no-such", "cuda", "kernels")
    result = _providers.import_provider(pkg)
    assert not result.ok
    assert 'pip install "vllm-bi-plugin[cuda]"' in result.message
    assert "no_such_module_xyz" in result.message


def test_broken_package_is_reported_not_raised(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_provider_xyz.py").write_text("raise OSError('libcuda.so.1: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = ProviderPackage("broken_provider_xyz", "broken", "cuda", "kernels")
    result = _providers.import_provider(pkg)
    assert not result.ok
    assert "OSError: libcuda.so.1" in result.message and "vllm-bi-plugin[cuda]" in result.message
    sys.modules.pop("broken_provider_xyz", None)


def test_cpu_provider_imports() -> None:
    (result,) = _providers.import_providers("cpu")
    assert result.ok, result.message


def test_unknown_platform() -> None:
    with pytest.raises(ValueError, match="platform must be one of"):
        _providers.import_providers("tpu")


def test_coverage_reads_the_registry(fake_kernels) -> None:
    assert _providers.kernel_providers("mm", "xpu") == []
    assert not _providers.covered(("mm", "bmm"), "xpu")
    fake_kernels("xpu", ("mm",))
    assert _providers.kernel_providers("mm", "xpu") == ["test_fake"]
    assert _providers.covered(("mm",), "xpu") and not _providers.covered(("mm", "bmm"), "xpu")
    # matmul needs mm and bmm, linear needs mm and addmm: neither is covered by mm alone.
    assert _providers.covered_overloads(("mm", "mm.out", "matmul", "linear"), "xpu") == (
        "mm",
        "mm.out",
    )


def test_unknown_overload() -> None:
    with pytest.raises(ValueError, match="overload 'gelu' is unknown"):
        _providers.covered_overloads(("gelu",), "cpu")
