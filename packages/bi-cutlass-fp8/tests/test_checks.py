"""Argument checks: each bad input raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch
from fp8_testing import FP8, random_fp8

from bi_cutlass_fp8 import plan_scaled_mm
from bi_cutlass_fp8._checks import check_args

M, N, K = 5, 32, 48


def _good() -> dict[str, object]:
    return {
        "a": random_fp8(M, K),
        "b": random_fp8(N, K).t(),
        "scale_a": torch.ones(M, 1),
        "scale_b": torch.ones(1, N),
        "out_dtype": torch.bfloat16,
        "bias": torch.zeros(N, dtype=torch.bfloat16),
    }


def _call(**changes: object) -> None:
    args = _good()
    args.update(changes)
    plan_scaled_mm(**args)  # type: ignore[arg-type]


def test_good_arguments_pass() -> None:
    plan = plan_scaled_mm(**_good())  # type: ignore[arg-type]
    assert (plan.shape.m, plan.shape.n, plan.shape.k) == (M, N, K)
    assert plan.shape.scale_a_per_token and plan.shape.scale_b_per_channel


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [
        pytest.param(
            {"a": random_fp8(M, K).to(torch.bfloat16)},
            TypeError,
            "a must be float8_e4m3fn, got bfloat16",
            id="a-dtype",
        ),
        pytest.param(
            {"b": random_fp8(N, K).t().to(torch.float8_e5m2)},
            TypeError,
            "b must be float8_e4m3fn, got float8_e5m2",
            id="b-e5m2",
        ),
        pytest.param(
            {"out_dtype": torch.float32},
            TypeError,
            "out_dtype must be torch.bfloat16 or torch.float16",
            id="out-fp32",
        ),
        pytest.param(
            {"a": [1, 2]}, TypeError, "a must be a torch.Tensor, got list", id="a-not-tensor"
        ),
        pytest.param(
            {"a": random_fp8(2, M, K)},
            ValueError,
            r"a must be 2-D \[M, K\], got shape \[2, 5, 48\]",
            id="a-3d",
        ),
        pytest.param(
            {"b": random_fp8(N, K + 16).t()},
            ValueError,
            r"b must be \[K, N\] with K = a.shape\[1\] = 48",
            id="k-mismatch",
        ),
        pytest.param(
            {"scale_a": torch.ones(1, M)},
            ValueError,
            r"scale_a must be .* per-token \[M, 1\] = \[5, 1\], got shape \[1, 5\]",
            id="scale-a-row",
        ),
        pytest.param(
            {"scale_a": torch.ones(M + 1, 1)},
            ValueError,
            r"scale_a .* got shape \[6, 1\]",
            id="scale-a-wrong-m",
        ),
        pytest.param(
            {"scale_b": torch.ones(N, 2)},
            ValueError,
            r"scale_b must be .* per-channel \[1, N\] = \[1, 32\], got shape \[32, 2\]",
            id="scale-b-matrix",
        ),
        pytest.param(
            {"scale_b": torch.ones(1, N, dtype=torch.float16)},
            TypeError,
            "scale_b must be float32, got float16",
            id="scale-b-fp16",
        ),
        pytest.param(
            {"bias": torch.zeros(N)},
            TypeError,
            "bias must have out_dtype bfloat16, got float32",
            id="bias-dtype",
        ),
        pytest.param(
            {"bias": torch.zeros(1, N, dtype=torch.bfloat16)},
            ValueError,
            r"bias must be \[N\] = \[32\], got shape \[1, 32\]",
            id="bias-2d",
        ),
        pytest.param(
            {"scale_a": torch.ones(M, 1, device="meta")},
            ValueError,
            "scale_a is on meta, a is on cpu",
            id="device-mismatch",
        ),
        pytest.param(
            {"a": random_fp8(M, 40), "b": random_fp8(N, 40).t()},
            ValueError,
            "K must be a multiple of 16, got K=40",
            id="k-unaligned",
        ),
        pytest.param(
            {"b": random_fp8(24, K).t(), "scale_b": torch.ones(1, 24), "bias": None},
            ValueError,
            "N must be a multiple of 16, got N=24",
            id="n-unaligned",
        ),
        pytest.param(
            {"b": random_fp8(K, N)},
            ValueError,
            r"b must be column-major.*weight.t\(\).*got strides \(32, 1\)",
            id="b-row-major",
        ),
        pytest.param(
            {"a": random_fp8(K, M).t()},
            ValueError,
            r"a must be row-major.*got strides \(1, 5\)",
            id="a-column-major",
        ),
        pytest.param(
            {"a": random_fp8(M * K + 1)[1:].view(M, K)},
            ValueError,
            "a's data pointer must be 16-byte aligned",
            id="a-misaligned",
        ),
        pytest.param(
            {"scale_b": torch.ones(N, 2)[:, :1].t()},
            ValueError,
            "scale_b must be contiguous",
            id="scale-b-strided",
        ),
    ],
)
def test_bad_arguments(changes: dict[str, object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        _call(**changes)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0d", "1d", "2d"])
def test_per_tensor_scale_shapes(shape: tuple[int, ...]) -> None:
    s = check_args(
        random_fp8(M, K), random_fp8(N, K).t(), torch.ones(shape), torch.ones(shape), torch.float16
    )
    assert not s.scale_a_per_token and not s.scale_b_per_channel


@pytest.mark.parametrize(
    ("sa_shape", "sb_shape"),
    [((M, 1), (1, N)), ((M,), (N,)), ((M, 1), (N, 1))],
    ids=["ir-dispatch-form", "1d", "vllm-channel-scale"],
)
def test_per_row_scale_shapes(sa_shape: tuple[int, ...], sb_shape: tuple[int, ...]) -> None:
    s = check_args(
        random_fp8(M, K),
        random_fp8(N, K).t(),
        torch.ones(sa_shape),
        torch.ones(sb_shape),
        torch.float16,
    )
    assert s.scale_a_per_token and s.scale_b_per_channel


def test_m_zero_is_valid() -> None:
    a = torch.empty(0, K, dtype=FP8)
    plan = plan_scaled_mm(a, random_fp8(N, K).t(), torch.ones(1), torch.ones(1), torch.bfloat16)
    assert plan.shape.m == 0


def test_strided_lda_multiple_of_16_is_accepted() -> None:
    a = random_fp8(M, 2 * K)[:, :K]  # row stride 96
    plan_scaled_mm(a, random_fp8(N, K).t(), torch.ones(1), torch.ones(1), torch.bfloat16)


def test_checks_never_fail_on_m_alone() -> None:
    """Any M passes when the other arguments are fixed: the verdict cannot switch kernels."""
    b = random_fp8(N, K).t()
    for m in (0, 1, 2, 3, 15, 16, 17, 31, 33, 257):
        plan_scaled_mm(random_fp8(m, K), b, torch.ones(m, 1), torch.ones(1, N), torch.bfloat16)
