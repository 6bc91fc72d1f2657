from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ir_dispatch as ird
from ir_dispatch import ops
from ir_dispatch.testing import providers_removed


@pytest.fixture
def rowwise_cpu_providers():
    """A deliberately simple batch-invariant CPU 'provider': one row at a time."""

    def mm_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[0] == 0:
            return torch.mm(a, b)
        return torch.cat([torch.mm(a[i : i + 1], b) for i in range(a.shape[0])])

    def addmm_rows(bias, a, b, beta=1.0, alpha=1.0):
        return beta * bias + alpha * mm_rows(a, b)

    def bmm_rows(a, b):
        return torch.stack([mm_rows(a[i], b[i]) for i in range(a.shape[0])])

    registered = [
        (
            ops.mm,
            ops.mm.register_impl("test_rows", batch_invariant=True, platforms=["cpu"], priority=99)(
                mm_rows
            ),
        ),
        (
            ops.addmm,
            ops.addmm.register_impl(
                "test_rows", batch_invariant=True, platforms=["cpu"], priority=99
            )(addmm_rows),
        ),
        (
            ops.bmm,
            ops.bmm.register_impl(
                "test_rows", batch_invariant=True, platforms=["cpu"], priority=99
            )(bmm_rows),
        ),
    ]
    yield
    for op, _ in registered:
        op.unregister_impl("test_rows")


def _aten_kernels_fingerprint() -> dict[str, str]:
    return {
        name: torch._C._dispatch_dump(f"aten::{name}")
        for name in ("mm", "addmm", "bmm", "_log_softmax", "mean.dim")
    }


def test_install_routes_aten_ops_to_the_registry(rowwise_cpu_providers) -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    ird.install_aten_overrides(dispatch_key="CPU")
    with ird.batch_invariant(), ird.recording() as rec:
        y = torch.mm(a, b)
        z = a @ b
        w = F.linear(a, b.t(), torch.ones(3))
    assert rec.providers() == {
        "mm": ["test_rows"],
        "matmul": ["composite"],
        "linear": ["composite"],
        "addmm": ["test_rows"],
    }
    torch.testing.assert_close(y, a @ b)
    torch.testing.assert_close(z, y)
    torch.testing.assert_close(w, y + 1)


def test_out_overloads(rowwise_cpu_providers) -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    out = torch.empty(4, 3)
    ird.install_aten_overrides(dispatch_key="CPU")
    with ird.batch_invariant(), ird.recording() as rec:
        torch.mm(a, b, out=out)
    assert rec.providers() == {"mm": ["test_rows"]}
    torch.testing.assert_close(out, torch.mm(a, b))


def test_install_twice_is_harmless_and_uninstall_restores_exactly() -> None:
    before = _aten_kernels_fingerprint()
    ird.install_aten_overrides(dispatch_key="CPU")
    during = _aten_kernels_fingerprint()
    ird.install_aten_overrides(dispatch_key="CPU")
    assert _aten_kernels_fingerprint() == during
    assert during != before
    ird.uninstall_aten_overrides()
    assert _aten_kernels_fingerprint() == before
    ird.uninstall_aten_overrides()  # also harmless
    assert ird.installed_overrides() is None


def test_after_uninstall_nothing_reaches_the_registry(rowwise_cpu_providers) -> None:
    ird.install_aten_overrides(dispatch_key="CPU")
    ird.uninstall_aten_overrides()
    with ird.batch_invariant(), ird.recording() as rec:
        torch.mm(torch.randn(2, 2), torch.randn(2, 2))
    assert rec.counts == {}


def test_default_mode_through_overrides_uses_native_without_recursion() -> None:
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    expected = torch.mm(a, b)
    with ird.aten_overrides(dispatch_key="CPU"), ird.recording() as rec:
        got = torch.mm(a, b)
        ls = torch.log_softmax(a, -1)
        mean = a.mean(dim=1)
    assert rec.providers() == {"mm": ["native"], "log_softmax": ["native"], "mean": ["native"]}
    assert torch.equal(got, expected)
    assert ird.installed_overrides() is None
    torch.testing.assert_close(ls, torch.log_softmax(a, -1))
    torch.testing.assert_close(mean, a.mean(dim=1))


def test_batch_invariant_mode_without_provider_raises_instead_of_falling_back() -> None:
    with (
        providers_removed(lambda impl: True, [ops.mm]),
        ird.aten_overrides(dispatch_key="CPU"),
        ird.batch_invariant(),
        pytest.raises(ird.NoBatchInvariantImplError, match="'mm'"),
    ):
        torch.mm(torch.randn(2, 2), torch.randn(2, 2))


def test_context_manager_keeps_an_existing_install() -> None:
    ird.install_aten_overrides(dispatch_key="CPU")
    with ird.aten_overrides(dispatch_key="CPU"):
        pass
    assert ird.installed_overrides() is not None


def test_unknown_overload_and_key_clash() -> None:
    with pytest.raises(ValueError, match="cannot be overridden"):
        ird.install_aten_overrides(["conv2d"])
    ird.install_aten_overrides(["mm"], dispatch_key="CPU")
    with pytest.raises(ValueError, match="already installed"):
        ird.install_aten_overrides(["mm"], dispatch_key="Meta")


def test_softmax_family_and_mean_semantics(rowwise_cpu_providers) -> None:
    x = torch.randn(3, 11, dtype=torch.bfloat16)
    refs = {
        "log_softmax_f32": torch.log_softmax(x, -1, dtype=torch.float32),
        "softmax": torch.softmax(x, -1),
        "mean": x.mean(dim=(0, 1), keepdim=True),
    }
    with ird.aten_overrides(dispatch_key="CPU"), ird.recording() as rec:
        got = {
            "log_softmax_f32": torch.log_softmax(x, -1, dtype=torch.float32),
            "softmax": torch.softmax(x, -1),
            "mean": x.mean(dim=(0, 1), keepdim=True),
        }
    assert set(rec.providers()) == {"log_softmax", "softmax", "mean"}
    for k in refs:
        assert got[k].dtype == refs[k].dtype and got[k].shape == refs[k].shape, k
        torch.testing.assert_close(got[k], refs[k])
