"""``check_module``: the op-level audit behind ``vllm-bi check``.

On CPU, torch's own GEMM is batch-variant at Qwen3-0.6B's hidden size (fp32, K = N = 1024: row 0
of ``a[:m] @ b`` differs for m = 1 and 3), so the default mode must name the GEMM as the first
differing op, and batch-invariant mode (ir-dispatch's ``cpu`` provider) must report none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import ir_dispatch
from vllm_bi_plugin.check import NO_BATCH_DIM, CheckReport, check_module

QWEN3_0_6B_HIDDEN = 1024
BATCH_SIZES = (1, 2, 3, 16, 17, 33)


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    mode = ir_dispatch.is_batch_invariant()
    yield
    ir_dispatch.set_batch_invariant(mode)
    ir_dispatch.uninstall_aten_overrides()


class LinearSoftmaxMean(torch.nn.Module):
    """Linear -> softmax -> mean over the features: a GEMM and two row reductions."""

    def __init__(self, hidden: int = QWEN3_0_6B_HIDDEN) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(x), dim=-1).mean(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(1, QWEN3_0_6B_HIDDEN, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def default_report(probe: torch.Tensor) -> CheckReport:
    return check_module(LinearSoftmaxMean(), probe, batch_sizes=BATCH_SIZES, mode="default")


def test_default_mode_names_the_gemm_as_first_differing_op(default_report: CheckReport) -> None:
    report = default_report
    assert not report.ok
    first = report.first_difference
    assert first is not None
    assert first.op == "aten.addmm.default"  # F.linear on 2-D input: t, then addmm
    assert first.index == 1
    assert first.alone_shape == (1, QWEN3_0_6B_HIDDEN)
    assert first.max_abs_diff > 0 and 0 < first.mismatched <= first.numel == QWEN3_0_6B_HIDDEN
    assert first.input_shapes[0] == (QWEN3_0_6B_HIDDEN,)  # the bias, then x, then w.T
    differing = {(r.batch_size, r.position) for r in report.differing_runs}
    assert (3, "front") in differing  # FACTS: M = 1 vs 3
    assert all(r.first_difference is None for r in report.runs if r.batch_size == 1)
    assert "aten.t.default" in report.whole  # the weight's transpose has no batch dimension


def test_default_report_table(default_report: CheckReport) -> None:
    text = str(default_report)
    assert "default mode" in text and "batch-VARIANT" in text
    assert "First differing op: #1 aten.addmm.default" in text
    assert "aten.t.default" in text
    rows = [line for line in text.splitlines() if "DIFFERS" in line]
    assert len(rows) == len(default_report.differing_runs)
    assert default_report.as_dict()["first_difference"]["op"] == "aten.addmm.default"


def test_batch_invariant_mode_reports_no_difference(probe: torch.Tensor) -> None:
    report = check_module(LinearSoftmaxMean(), probe, batch_sizes=BATCH_SIZES)
    assert report.ok, str(report)
    assert report.first_difference is None
    assert report.ops_per_forward == 3  # aten.linear, aten.softmax.int, aten.mean.dim (overridden)
    # positions that land on the same row run once: batch 1 once, batch 2 front/back
    assert len(report.runs) == 1 + 2 + 3 * (len(BATCH_SIZES) - 2)
    assert all(r.ops_compared == 3 and r.output_max_abs_diff == 0.0 for r in report.runs)
    assert "batch-invariant - the probe got the same bits" in str(report)
    assert ir_dispatch.installed_overrides() is None  # overrides restored
    assert not ir_dispatch.is_batch_invariant()


def test_folded_batch_dimension_is_sliced_by_block() -> None:
    """``[B, T, H] -> [B * T, H]`` keeps the probe's T rows together: sliced, not compared whole."""

    class Folded(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1]) * 2
            return flat.reshape(x.shape).sum(-1)

    report = check_module(Folded(), torch.randn(1, 5, 8), batch_sizes=(1, 3), mode="default")
    assert report.ok, str(report)
    assert report.whole == [] and report.skipped == {}


def test_a_batch_statistic_is_found_and_compared_whole() -> None:
    """An op mixing rows (a mean over the batch) is batch-variant by design: reported, noted."""

    class BatchNormish(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.mean(dim=0)

    report = check_module(
        BatchNormish(), torch.randn(1, 4), batch_sizes=(1, 3), positions=("front",), mode="default"
    )
    first = report.first_difference
    assert first is not None and first.op == "aten.mean.dim" and first.note == NO_BATCH_DIM


def test_control_flow_on_the_batch_is_reported_as_divergence() -> None:
    def branchy(x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] == 1 else (x + 0) * 2

    report = check_module(branchy, torch.randn(1, 3), batch_sizes=(1, 2), mode="default")
    assert not report.ok
    assert report.runs[-1].diverged is not None and "aten.add.Tensor" in report.runs[-1].diverged
    assert "DIVERGED" in str(report)


def test_integer_probe_gets_valid_token_fillers() -> None:
    """transformers-style input_ids: fillers are the probe's own tokens, shuffled."""
    emb = torch.nn.Embedding(50, 8)
    seen: list[torch.Tensor] = []

    def model(ids: torch.Tensor) -> torch.Tensor:
        seen.append(ids)
        return emb(ids).sum(-1)

    ids = torch.tensor([[3, 7, 11, 42]])
    report = check_module(model, ids, batch_sizes=(1, 4), positions=("back",), mode="default")
    assert report.ok, str(report)
    assert set(torch.cat(seen).unique().tolist()) <= {3, 7, 11, 42}


def test_module_training_mode_is_restored(probe: torch.Tensor) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(QWEN3_0_6B_HIDDEN, 4), torch.nn.Dropout(0.5))
    net.train()
    report = check_module(net, probe, batch_sizes=(1, 2), mode="batch_invariant")
    assert report.ok, str(report)  # dropout was off during the check
    assert net.training


def test_tiny_transformers_model_batch_invariant_on_cpu() -> None:
    """Eager attention runs on matmul + softmax, which the overrides cover (SDPA is not)."""
    transformers = pytest.importorskip(
        "transformers", reason="needs transformers (the integration group has it)"
    )
    config = transformers.Qwen3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(2))
    report = check_module(model, ids, batch_sizes=(1, 2, 3, 5), mode="batch_invariant")
    assert report.ops_per_forward > 20
    assert report.runs and all(r.diverged is None for r in report.runs), str(report)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param(
            {"module": 3}, TypeError, "module must be an nn.Module or a callable", id="module"
        ),
        pytest.param(
            {"probe_input": [1.0]},
            TypeError,
            "probe_input must be a torch.Tensor, got list",
            id="probe-type",
        ),
        pytest.param(
            {"probe_input": torch.randn(2, 4)},
            ValueError,
            r"leading batch dimension of size 1.*\(2, 4\)",
            id="probe-batch",
        ),
        pytest.param(
            {"probe_input": torch.tensor(1.0)},
            ValueError,
            "leading batch dimension",
            id="probe-scalar",
        ),
        pytest.param(
            {"mode": "fast"},
            ValueError,
            "mode must be one of batch_invariant, default, got 'fast'",
            id="mode",
        ),
        pytest.param(
            {"batch_sizes": ()}, ValueError, "non-empty sequence of positive ints", id="sizes-empty"
        ),
        pytest.param(
            {"batch_sizes": (2, 0)}, ValueError, r"positive ints, got \(2, 0\)", id="sizes-zero"
        ),
        pytest.param(
            {"batch_sizes": 4}, TypeError, "batch_sizes must be a sequence", id="sizes-int"
        ),
        pytest.param({"positions": ("front", "top")}, ValueError, "drawn from", id="positions"),
        pytest.param(
            {"positions": "front"}, TypeError, "positions must be a sequence", id="positions-str"
        ),
        pytest.param(
            {"fillers": torch.randn(1, 4)},
            ValueError,
            r"fillers must be torch.float32 of shape \[>= 2",
            id="fillers-short",
        ),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    args: dict[str, Any] = {
        "module": torch.nn.Identity(),
        "probe_input": torch.randn(1, 4),
        "batch_sizes": (1, 3),
    }
    args.update(kwargs)
    module, probe_input = args.pop("module"), args.pop("probe_input")
    with pytest.raises(error, match=match):
        check_module(module, probe_input, **args)
