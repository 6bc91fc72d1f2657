from __future__ import annotations

import types

import pytest

from vllm_bi_plugin import _patch


@pytest.fixture(autouse=True)
def _undo():
    yield
    _patch.undo_all()


def test_patch_is_recorded_and_idempotent() -> None:
    mod = types.ModuleType("m")
    mod.f = lambda: "vllm"

    def ours() -> str:
        return "ours"

    original = mod.f
    assert _patch.patch_attr(mod, "f", ours)
    assert mod.f is ours and _patch.original_of(ours) is original
    assert not _patch.patch_attr(mod, "f", ours)

    def ours_again() -> str:
        return "again"

    assert not _patch.patch_attr(mod, "f", ours_again)  # a plugin replacement is in place
    assert [p.where for p in _patch.applied()] == ["m.f"]
    _patch.undo_all()
    assert mod.f is original and _patch.applied() == ()


def test_inherited_classmethod_is_shadowed_then_removed() -> None:
    class Base:
        @classmethod
        def prio(cls) -> list[str]:
            return ["native"]

    class Child(Base):
        pass

    def prio(cls: type) -> list[str]:
        return ["ours", *Base.prio()]

    assert _patch.patch_attr(Child, "prio", classmethod(prio))
    assert Child.prio() == ["ours", "native"] and Base.prio() == ["native"]
    assert _patch.applied()[0].where.endswith("Child.prio")
    _patch.undo_all()
    assert "prio" not in Child.__dict__ and Child.prio() == ["native"]


def test_missing_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _patch.patch_attr(types.ModuleType("m"), "nope", lambda: None)
