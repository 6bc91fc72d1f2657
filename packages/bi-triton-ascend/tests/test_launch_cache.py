"""The launch table: same launcher arguments as Triton's path, and a miss whenever Triton's
specialization could differ. A fake kernel stands in for ``@triton.jit`` (the table serves
CUDA only; ``tests-integration/gpu`` runs the real kernels through it on the H100)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from bi_triton_ascend import _launch_cache


class _Param:
    def __init__(self, param: inspect.Parameter) -> None:
        self.name = param.name
        self.default = param.default


class _Compiled:
    """What ``JITFunction.run`` returns: a launcher and its handles."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.function = "fn-handle"
        self.packed_metadata = ("meta",)
        self._calls = calls

    def run(self, *launch_args: Any) -> None:
        self._calls.append(launch_args)


class _FakeKernel:
    """Counts Triton-path launches; its compiled kernel records direct launches."""

    def __init__(self) -> None:
        def signature(a_ptr, n, scale, FLAG: bool = False, BLOCK: int = 16):
            pass

        self.params = [_Param(p) for p in inspect.signature(signature).parameters.values()]
        self.pre_run_hooks: list[Any] = []
        self.triton_calls: list[tuple[Any, ...]] = []
        self.direct_calls: list[tuple[Any, ...]] = []
        self.compiled = _Compiled(self.direct_calls)

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def run(*args: Any, **kwargs: Any) -> _Compiled:
            self.triton_calls.append((grid, args, kwargs))
            return self.compiled

        return run


class _HookChain:
    """Triton 3.6's hook holder: always present, empty when no hook is set."""

    def __init__(self) -> None:
        self.calls: list[Any] = []


class _FakeKnobs:
    def __init__(self) -> None:
        self.launch_enter_hook: Any = _HookChain()
        self.launch_exit_hook: Any = _HookChain()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeKnobs]:
    knobs = _FakeKnobs()
    monkeypatch.setattr(_launch_cache, "_supported", lambda: True)
    monkeypatch.setattr(_launch_cache, "_runtime_knobs", lambda: knobs)
    monkeypatch.setattr(_launch_cache, "_driver_calls", lambda: (lambda: 0, lambda d: 77))
    _launch_cache.set_enabled(True)
    yield knobs
    _launch_cache.set_enabled(True)


def _aligned(n: int = 64) -> torch.Tensor:
    t = torch.empty(n, dtype=torch.float32)
    assert t.data_ptr() % 16 == 0
    return t


def test_hit_passes_triton_launcher_arguments(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    _launch_cache.launch_kernel(kernel, (3, 2), x, 32, 0.5, FLAG=True, num_warps=4)
    assert len(kernel.triton_calls) == 1 and not kernel.direct_calls
    _launch_cache.launch_kernel(kernel, (5,), x, 48, 2.0, FLAG=True, num_warps=4)
    assert len(kernel.triton_calls) == 1
    # grid padded to 3, current stream, the handles, no hooks, then every parameter in
    # signature order: positional ones, the constexpr given, the default of the one not given.
    assert kernel.direct_calls == [
        (5, 1, 1, 77, "fn-handle", ("meta",), None, None, None, x, 48, 2.0, True, 16)
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (32, 33),  # divisibility by 16
        (2, 1),  # equality to 1 (Triton makes 1 a constant)
        (32, 1 << 32),  # i32 -> i64
        (1 << 32, 1 << 63),  # i64 -> u64
    ],
)
def test_int_specialization_changes_miss(table: _FakeKnobs, first: int, second: int) -> None:
    kernel, x = _FakeKernel(), _aligned()
    _launch_cache.launch_kernel(kernel, (1,), x, first, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x, second, 1.0)
    assert len(kernel.triton_calls) == 2 and not kernel.direct_calls


def test_pointer_alignment_dtype_and_constexpr_changes_miss(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x[1:], 16, 1.0)  # 4-byte aligned pointer
    _launch_cache.launch_kernel(kernel, (1,), x.to(torch.float16), 16, 1.0)  # dtype
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0, BLOCK=32)  # constexpr
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0, num_warps=8)  # launch option
    assert len(kernel.triton_calls) == 5 and not kernel.direct_calls


def test_triton_path_when_hooks_set_or_disabled(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    table.launch_exit_hook.calls.append(print)  # a profiler's hook must see every launch
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    table.launch_exit_hook = print  # Triton < 3.6: a bare callable
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    table.launch_exit_hook = None  # Triton < 3.6: no hook
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    assert len(kernel.direct_calls) == 1
    _launch_cache.set_enabled(False)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    assert len(kernel.triton_calls) == 4 and len(kernel.direct_calls) == 1
    assert _launch_cache.cached_kernels() == 0  # turning it off empties the table


def test_unmodelled_arguments_are_never_cached(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    for _ in range(2):
        _launch_cache.launch_kernel(kernel, (1,), x, 16, "text")  # type not modelled
        _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0, FLAG=x)  # tensor given by name
        _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0, FLAG=[1])  # unhashable constexpr
    assert len(kernel.triton_calls) == 6 and not kernel.direct_calls


def test_pre_run_hooks_keep_triton_path(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    kernel.pre_run_hooks.append(lambda *a, **k: None)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    assert len(kernel.triton_calls) == 2


def test_table_serves_cuda_only() -> None:
    """Off in Triton's interpreter (CPU CI) and on ROCm; on with a CUDA build of torch."""
    from bi_triton_ascend import _platform

    cuda = torch.version.cuda is not None and not torch.version.hip
    assert _launch_cache.enabled() == (cuda and not _platform.interpreting())


def test_set_enabled_rejects_non_bool() -> None:
    with pytest.raises(TypeError, match="on must be a bool"):
        _launch_cache.set_enabled(1)  # type: ignore[arg-type]


def test_table_off_restores_the_switch(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    with _launch_cache.table_off():
        _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
        _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    assert len(kernel.triton_calls) == 3 and len(kernel.direct_calls) == 1


def test_env_name_matches_the_plugin_info() -> None:
    """``vllm-bi info`` names this switch without importing the package: keep them equal."""
    assert _launch_cache.ENV == "BI_TRITON_LAUNCH_CACHE"


class _CudaLauncher:
    """Triton 3.6's ``CudaLauncher``: a C ``launch`` behind a Python ``__call__``."""

    def __init__(self, calls: list[tuple[Any, ...]], scratch: int = 0) -> None:
        self.calls = calls
        self.global_scratch_size = scratch
        self.profile_scratch_size = 0
        self.launch_cooperative_grid = False
        self.launch_pdl = True
        self.python_calls = 0

    def launch(self, *args: Any) -> None:
        self.calls.append(args)

    def __call__(self, gx: int, gy: int, gz: int, stream: Any, function: Any, *args: Any) -> None:
        self.python_calls += 1
        self.launch(gx, gy, gz, stream, function, False, True, "scratch", None, *args)


def _with_cuda_launcher(kernel: _FakeKernel, scratch: int = 0) -> _CudaLauncher:
    launcher = _CudaLauncher(kernel.direct_calls, scratch)
    kernel.compiled.run = launcher  # type: ignore[method-assign]
    return launcher


def test_hit_calls_the_c_launch_as_the_launcher_would(table: _FakeKnobs) -> None:
    """No scratch memory: the C function gets what ``CudaLauncher.__call__`` would pass it."""
    kernel, x = _FakeKernel(), _aligned()
    launcher = _with_cuda_launcher(kernel)
    _launch_cache.launch_kernel(kernel, (3, 2), x, 32, 0.5, FLAG=True)
    _launch_cache.launch_kernel(kernel, (5,), x, 48, 2.0, FLAG=True)
    assert launcher.python_calls == 0
    assert kernel.direct_calls == [
        (5, 1, 1, 77, "fn-handle", False, True, None, None, ("meta",), None, None, None,
         x, 48, 2.0, True, 16)
    ]  # fmt: skip


def test_scratch_memory_keeps_the_launchers_own_call(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    launcher = _with_cuda_launcher(kernel, scratch=128)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    _launch_cache.launch_kernel(kernel, (1,), x, 16, 1.0)
    assert launcher.python_calls == 1 and kernel.direct_calls[0][7] == "scratch"


def test_prepared_launch_matches_launch_kernel(table: _FakeKnobs) -> None:
    """:func:`launch_kernel`'s launcher arguments, each tensor as its address (an int, which
    the launcher takes without a driver check); the first call goes through Triton."""
    kernel, x, y = _FakeKernel(), _aligned(), _aligned()
    prepared = _launch_cache.PreparedLaunch(kernel, (4,), (32, 0.5), {"FLAG": True})
    prepared(x)
    assert len(kernel.triton_calls) == 1 and not kernel.direct_calls
    assert kernel.triton_calls[0][1][0] is x  # Triton's own path still sees the tensor
    prepared(y)
    _launch_cache.launch_kernel(kernel, (4,), y, 32, 0.5, FLAG=True)
    assert len(kernel.triton_calls) == 1
    prepared_call, kernel_call = kernel.direct_calls
    assert kernel_call[9] is y
    assert type(prepared_call[9]) is int and prepared_call[9] == y.data_ptr()
    assert prepared_call[:9] + prepared_call[10:] == kernel_call[:9] + kernel_call[10:]


def test_prepared_launch_misses_on_alignment_and_dtype(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    prepared = _launch_cache.PreparedLaunch(kernel, (1,), (16, 1.0), {})
    prepared(x)
    prepared(x[1:])  # 4-byte aligned: another specialization
    prepared(x.to(torch.float16))
    assert len(kernel.triton_calls) == 3 and not kernel.direct_calls
    prepared(x[1:])
    assert len(kernel.triton_calls) == 3 and len(kernel.direct_calls) == 1


def test_prepared_launch_takes_tritons_path_with_hooks_or_table_off(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    prepared = _launch_cache.PreparedLaunch(kernel, (1,), (16, 1.0), {})
    prepared(x)
    table.launch_enter_hook.calls.append(print)
    prepared(x)
    table.launch_enter_hook.calls.clear()
    with _launch_cache.table_off():
        prepared(x)
    assert len(kernel.triton_calls) == 3 and not kernel.direct_calls
    prepared(x)
    assert len(kernel.direct_calls) == 1


def test_prepared_launch_keeps_tritons_path_for_unmodelled_arguments(table: _FakeKnobs) -> None:
    kernel, x = _FakeKernel(), _aligned()
    prepared = _launch_cache.PreparedLaunch(kernel, (1,), (16, "text"), {})
    prepared(x)
    prepared(x)
    assert len(kernel.triton_calls) == 2 and not kernel.direct_calls
