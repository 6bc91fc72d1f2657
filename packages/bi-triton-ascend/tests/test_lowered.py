"""The GEMMs' ``torch.compile`` lowerings give the eager ops' bits.

Called directly (``bi_triton::batched_gemm`` runs its body eagerly, here and in Triton's
interpreter) and, on a GPU, compiled by Inductor, which then launches the kernel from its own
generated code instead of calling ATen.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bi_testutils import rand

import bi_triton_ascend as bta
import ir_dispatch as ird
from bi_triton_ascend.ops import lowered
from bi_triton_ascend.ops.gemm import batched_gemm

bf16 = torch.bfloat16
F = torch.nn.functional


def _cases(
    device: torch.device, m: int
) -> list[tuple[str, Callable[..., Any], Callable[..., Any], tuple[Any, ...]]]:
    """(name, eager op, its lowering, arguments) with ``m`` rows; odd K and N, views."""

    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=bf16, device=device)

    w, bias = r(48, 200), r(48)
    x = r(m, 200)
    return [
        ("linear", bta.linear, lowered.lowered_linear, (x, w, bias)),
        ("linear 3-D, no bias", bta.linear, lowered.lowered_linear, (r(2, m, 200), w, None)),
        ("linear 1-D", bta.linear, lowered.lowered_linear, (r(200), w, bias)),
        ("linear, strided x", bta.linear, lowered.lowered_linear, (r(m, 400)[:, ::2], w, None)),
        ("mm, transposed b", bta.mm, lowered.lowered_mm, (x, w.t())),
        ("mm, transposed a", bta.mm, lowered.lowered_mm, (r(200, m).t(), w.t())),
        ("addmm", bta.addmm, lowered.lowered_addmm, (bias, x, w.t(), 0.5, 2.0)),
        ("addmm, column bias", bta.addmm, lowered.lowered_addmm, (r(m, 1), x, w.t(), 1.0, 1.0)),
        ("bmm", bta.bmm, lowered.lowered_bmm, (r(3, m, 200), w.t().expand(3, 200, 48))),
        ("matmul 4-D", bta.matmul, lowered.lowered_matmul, (r(2, 4, m, 24), r(2, 4, 24, 40))),
        ("matmul broadcast", bta.matmul, lowered.lowered_matmul, (r(2, m, 24), r(24, 40))),
        ("matmul 1-D", bta.matmul, lowered.lowered_matmul, (r(24), r(3, 24, 40))),
        (
            "matmul, heads transposed (no folding view)",
            bta.matmul,
            lowered.lowered_matmul,
            (r(2, m, 4, 24).transpose(1, 2), r(2, 4, 24, 40)),
        ),
    ]


@pytest.mark.parametrize("m", [1, 17, 65])
def test_lowerings_called_eagerly_give_the_ops_bits(device: torch.device, m: int) -> None:
    for name, op, lowering, args in _cases(device, m):
        expected = op(*args)
        got = lowering(*args)
        assert got.shape == expected.shape, name
        assert torch.equal(got, expected), name


def test_the_lowered_launch_is_the_eager_launch(device: torch.device) -> None:
    """The traced body (``launch_gemm`` with wrap_triton) and batched_gemm run the same kernel."""
    a = rand(1, 5, 300, dtype=bf16, device=device)
    b = rand(1, 300, 72, dtype=bf16, device=device)
    expected = batched_gemm(a, b)
    assert torch.equal(lowered.launch_gemm(a, b, None, 1.0, 1.0, lambda k: k), expected)


def _reduction_cases(
    device: torch.device,
) -> list[tuple[str, Callable[..., Any], Callable[..., Any], tuple[Any, ...]]]:
    """(name, eager op, its lowering, arguments): one-pass and chunked rows, odd layouts."""

    def r(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return rand(*shape, dtype=dtype, device=device)

    return [
        ("mean, last dim kept", bta.mean, lowered.lowered_mean, (r(5, 300), [-1], True, None)),
        (
            "mean, fp32 out",
            bta.mean,
            lowered.lowered_mean,
            (r(3, 4, 7), [0, 2], False, torch.float32),
        ),
        ("mean, all", bta.mean, lowered.lowered_mean, (r(6, 50), None, False, None)),
        ("mean, transposed", bta.mean, lowered.lowered_mean, (r(40, 3).t(), [1], False, None)),
        ("mean, chunked row", bta.mean, lowered.lowered_mean, (r(2, 16385), [1], True, None)),
        (
            "mean of squares, 4100",
            bta.mean_of_squares,
            lowered.lowered_mean_of_squares,
            (r(3, 4100), [-1], True),
        ),
        (
            "mean of squares, chunked",
            bta.mean_of_squares,
            lowered.lowered_mean_of_squares,
            (r(2, 16385), [1], False),
        ),
        ("softmax", bta.softmax, lowered.lowered_softmax, (r(4, 530), -1, torch.float32)),
        ("softmax, middle dim", bta.softmax, lowered.lowered_softmax, (r(3, 9, 5), 1, None)),
        ("softmax, chunked", bta.softmax, lowered.lowered_softmax, (r(2, 8193), 1, None)),
        ("log_softmax", bta.log_softmax, lowered.lowered_log_softmax, (r(3, 77), 1, None)),
        (
            "log_softmax, chunked fp32",
            bta.log_softmax,
            lowered.lowered_log_softmax,
            (r(2, 9000, dtype=torch.float32), -1, None),
        ),
    ]


def test_reduction_lowerings_called_eagerly_give_the_ops_bits(device: torch.device) -> None:
    for name, op, lowering, args in _reduction_cases(device):
        expected = op(*args)
        got = lowering(*args)
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        assert torch.equal(got, expected), name


def test_functionalization_sees_only_what_the_row_kernels_write() -> None:
    """The reductions' kernels: their outputs and scratch, never their input."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    mean = importlib.import_module("bi_triton_ascend.ops.mean")
    softmax = importlib.import_module("bi_triton_ascend.ops.softmax")

    assert lowered.declare_kernel_writes()
    t = torch.zeros(4)
    tensors = dict.fromkeys(("x_ptr", "out_ptr", "part_ptr", "stats_ptr"), t)
    table = wrap.kernel_side_table
    for kernel, expected in (
        (mean._mean_rows_kernel, ["out_ptr"]),
        (mean._chunk_sum_kernel, ["part_ptr"]),
        (mean._chunk_mean_kernel, ["out_ptr"]),
        (softmax._softmax_row_kernel, ["out_ptr"]),
        (softmax._chunk_stats_kernel, ["stats_ptr"]),
        (softmax._chunk_write_kernel, ["out_ptr"]),
    ):
        names = inspect.signature(lowered._python_function(kernel)).parameters
        passed = {k: v for k, v in tensors.items() if k in names}
        index = table.add_kernel(kernel)
        if hasattr(wrap, "get_mutated_tensors"):  # torch >= 2.13
            constants = table.add_constant_args({})
            assert wrap.get_mutated_tensors(index, constants, passed, {}) == expected
        if hasattr(wrap, "identify_mutated_tensors"):  # earlier torch
            assert wrap.identify_mutated_tensors(kernel, passed, {}) == expected


def test_functionalization_sees_only_what_the_gemm_kernels_write() -> None:
    """Not the inputs (torch's TTIR reading counts them through the K loop's pointers)."""
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    from bi_triton_ascend.ops.gemm import _gemm_persistent_kernel, _gemm_split_kernel

    assert lowered.declare_kernel_writes()
    assert lowered.declare_kernel_writes()  # once only
    t = torch.zeros(4)
    names = ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "part_ptr", "count_ptr")
    tensors = dict.fromkeys(names, t)
    table = wrap.kernel_side_table
    split = table.add_kernel(_gemm_split_kernel)
    persistent = table.add_kernel(_gemm_persistent_kernel)
    for kernel, constants, expected in (
        (split, {"SPLIT": True}, ["c_ptr", "part_ptr", "count_ptr"]),
        (split, {"SPLIT": False}, ["c_ptr"]),
        (persistent, {}, ["c_ptr"]),
    ):
        if hasattr(wrap, "get_mutated_tensors"):  # torch >= 2.13
            constant_args = table.add_constant_args(constants)
            assert wrap.get_mutated_tensors(kernel, constant_args, tensors, {}) == expected
        if hasattr(wrap, "identify_mutated_tensors"):  # earlier torch
            jit = table.get_kernel(kernel)
            assert wrap.identify_mutated_tensors(jit, {**tensors, **constants}, {}) == expected


@pytest.mark.skipif(
    importlib.util.find_spec("triton.backends.nvidia") is None,
    reason="the GEMM lowerings are registered for NVIDIA's Triton; this Triton (triton-ascend) "
    "has no CUDA backend, and its Autotuner needs a device driver to be built",
)
def test_functionalization_copies_no_gemm_input() -> None:
    """Traced as ``torch.compile`` traces it (a separate process, real ``triton.jit`` kernels,
    fake tensors): the launch's copied tensors are its outputs only, for the split kernel
    (5 rows) and the persistent one (4096 rows). Without the declaration torch would copy
    the inputs too, the weight included, around every compiled GEMM."""
    probe = Path(__file__).with_name("functionalize_probe.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(probe), "--declare"], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["5 c_ptr part_ptr count_ptr", "4096 c_ptr"], done.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("triton.backends.nvidia") is None,
    reason="the reduction lowerings are registered for NVIDIA's Triton; this Triton "
    "(triton-ascend) has no CUDA backend, and its Autotuner needs a device driver to be built",
)
def test_functionalization_copies_no_reduction_input() -> None:
    """The same for the row reductions: one pass and chunked rows (two launches each), each
    launch copying only what it writes (without the declaration, torch copies the input too
    wherever it cannot read the kernel's TTIR)."""
    probe = Path(__file__).with_name("functionalize_probe.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(probe), "--declare", "--rows"], env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "mean out_ptr",
        "mean-chunked part_ptr;out_ptr",
        "softmax out_ptr",
        "softmax-chunked stats_ptr;out_ptr",
    ], done.stdout


# ------------------------------------------------------------------------- compiled (CUDA)


def _compiled(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """``fn`` compiled by Inductor in batch-invariant mode: its result and generated code."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(fn, dynamic=False, fullgraph=True)
    with _lowering_on(), ird.aten_overrides(), ird.batch_invariant():
        result, codes = run_and_get_code(compiled, *args)
    return result, "\n".join(codes)


def _copied(code: str) -> bool:
    """Whether Inductor's code copies a buffer: a clone or ``copy_`` (a kernel named after
    ``aten._to_copy``, a dtype conversion, is not a copy of the kernel's input)."""
    return re.search(r"clone|\bcopy_\(|\.copy_\(|aten\.copy_\b|fused_copy_", code) is not None


@contextlib.contextmanager
def _env_set(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name)
        else:
            os.environ[name] = saved


def _lowering_on() -> contextlib.AbstractContextManager[None]:
    """``IR_DISPATCH_LOWER=1`` while the overrides are installed (a caller's ``0`` skips it)."""
    return _env_set("IR_DISPATCH_LOWER", "1")


def _eager(fn: Callable[..., Any], *args: Any) -> Any:
    with ird.aten_overrides(), ird.batch_invariant():
        return fn(*args)


def _compiled_cases(device: torch.device, m: int) -> list[tuple[str, Callable[..., Any], tuple]]:
    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=bf16, device=device)

    w, bias = r(48, 200), r(48)
    return [
        ("linear", lambda x, w, b: F.linear(x * 2, w, b), (r(m, 200), w, bias)),
        ("linear 3-D", lambda x, w: F.linear(x * 2, w), (r(2, m, 200), w)),
        ("matmul", lambda a, b: torch.matmul(a * 2, b), (r(2, 4, m, 24), r(2, 4, 24, 40))),
        (  # attention's q @ k^T after the heads' transpose: no view folds q's batches
            "matmul, heads transposed",
            lambda q, k: torch.matmul((q * 2).transpose(1, 2), k),
            (r(2, m, 4, 24), r(2, 4, 24, 40)),
        ),
        ("mm", lambda x, w: torch.mm(x * 2, w.t()), (r(m, 200), w)),
        ("bmm", lambda a, b: torch.bmm(a * 2, b), (r(3, m, 200), r(3, 200, 48))),
        ("addmm", lambda b, x, w: torch.addmm(b, x * 2, w.t(), beta=0.5), (bias, r(m, 200), w)),
    ]


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 3, 17, 64, 129, 257])
def test_compiled_gemms_launch_the_kernel_and_keep_the_bits(device: torch.device, m: int) -> None:
    """No extern ATen GEMM in Inductor's code; the eager bits (``x * 2`` is exact, and makes
    the GEMM's input a buffer of Inductor's own, whose strides it must keep)."""
    for name, fn, args in _compiled_cases(device, m):
        result, code = _compiled(fn, *args)
        assert "_gemm_" in code, f"{name}: no kernel of ours in\n{code}"
        assert "extern_kernels.mm" not in code and "extern_kernels.bmm" not in code, name
        assert "extern_kernels.addmm" not in code, name
        if "transposed" not in name:  # no input copied (that case folds q's heads by a copy)
            assert not _copied(code), f"{name}: a copy in\n{code}"
        assert torch.equal(result, _eager(fn, *args)), name


@pytest.mark.cuda
def test_compiled_linear_is_batch_invariant(device: torch.device) -> None:
    """A probe row's bits alone equal its bits at every position of every batch size."""
    w = rand(4096, 1024, dtype=bf16, device=device)
    probe = rand(1, 1024, dtype=bf16, device=device)

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    alone, _ = _compiled(fn, probe, w)
    for m in (2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257):
        batch = rand(m, 1024, dtype=bf16, device=device)
        for at in {0, m // 2, m - 1}:
            batch[at] = probe[0]
            out, _ = _compiled(fn, batch, w)
            assert torch.equal(out[at], alone[0]), (m, at)


@pytest.mark.cuda
def test_parameters_of_a_model_traced_without_grad_are_lowered(device: torch.device) -> None:
    """A model's weights require grad; an inference step compiled under ``inference_mode``
    still launches the kernel, with the eager bits."""
    layer = torch.nn.Linear(200, 48, dtype=bf16, device=device)
    x = rand(5, 200, dtype=bf16, device=device)
    with torch.inference_mode():
        result, code = _compiled(layer, x)
        expected = _eager(layer, x)
    assert "_gemm_" in code and "extern_kernels.addmm" not in code, code
    assert not _copied(code), f"the weight or x copied:\n{code}"
    assert torch.equal(result, expected)


def _rms_then_softmax(x: torch.Tensor) -> torch.Tensor:
    """An RMSNorm as ``transformers`` writes it (``pow``/``mean``/``rsqrt`` in fp32), then a
    softmax: reductions Inductor would compile into kernels of its own."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    return F.softmax(normed, dim=-1, dtype=torch.float32)


@pytest.mark.cuda
def test_routed_reductions_run_the_kits_kernels_batch_invariantly(device: torch.device) -> None:
    """Reductions routed (the default, set here explicitly): Inductor launches the kit's
    ``mean`` and ``softmax`` kernels itself (the eager bits, no input copied), and the probe
    row's bits do not depend on the batch."""
    probe = rand(1, 1024, dtype=bf16, device=device)
    with _env_set("IR_DISPATCH_LOWER_REDUCTIONS", "1"):
        for fn in (lambda x: x.float().pow(2).mean(-1, keepdim=True),
                   lambda x: F.softmax(x.float(), dim=-1)):  # fmt: skip
            args = rand(5, 1024, dtype=bf16, device=device)
            result, code = _compiled(fn, args)
            assert "_mean_rows_kernel" in code or "_softmax_row_kernel" in code, code
            assert not _copied(code), f"an input copied:\n{code}"
            assert torch.equal(result, _eager(fn, args))
        for width in (128, 4096):  # one lane block; four (where an FMA would change the bits)
            args = rand(5, width, dtype=bf16, device=device)
            with ird.recording() as rec:
                result, code = _compiled(_rms_then_softmax, args)
            assert rec.providers().get("mean_of_squares") == ["triton"], rec.providers()
            assert torch.equal(result, _eager(_rms_then_softmax, args)), width
        alone, code = _compiled(_rms_then_softmax, probe)
        assert "_mean_rows_kernel" in code and "_softmax_row_kernel" in code, code
        for m in (2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257):
            batch = rand(m, 1024, dtype=bf16, device=device)
            at = sorted({0, m // 2, m - 1})
            batch[at] = probe[0]
            out, _ = _compiled(_rms_then_softmax, batch)
            for row in at:
                assert torch.equal(out[row], alone[0]), (m, row)
