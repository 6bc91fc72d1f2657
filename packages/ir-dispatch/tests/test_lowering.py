"""The compile lowering pass: GEMM calls in a Dynamo graph become the selected implementation's
lowering, only in batch-invariant mode, only where that implementation has one, and never where
autograd needs the aten op."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import ops

F = torch.nn.functional


def _lowered_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, bias) + 1  # distinguishable from the aten call


def _lowered_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b) + 1


def _lowered_addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    return torch.addmm(bias, a, b, beta=beta, alpha=alpha) + 1


_LOWERINGS: dict[str, Callable[..., Any]] = {
    "linear": _lowered_linear,
    "matmul": _lowered_pair,
    "mm": _lowered_pair,
    "bmm": _lowered_pair,
    "addmm": _lowered_addmm,
}


@pytest.fixture
def lowering_provider() -> Iterator[None]:
    """Provider ``lowtest`` on the five GEMM ops: batch-invariant, first, with a lowering."""
    for name, lowering in _LOWERINGS.items():
        getattr(ops, name).register_impl(
            "lowtest", batch_invariant=True, priority=1000, lowering=lowering
        )(getattr(ops, name).impls[-1].fn)  # the native reference serves eager calls
    try:
        yield
    finally:
        for name in _LOWERINGS:
            getattr(ops, name).unregister_impl("lowtest")


def _compiled_graph(fn: Callable[..., Any], *args: Any) -> tuple[torch.fx.GraphModule, Any]:
    """Run ``fn`` through Dynamo with a backend that applies the pass; the graph and result."""
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        ird.lower_graph(gm.graph)
        gm.recompile()
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    result = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs[0], result


def _targets(gm: torch.fx.GraphModule) -> set[Any]:
    return {n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")}


def _cases() -> list[tuple[str, Callable[..., Any], tuple[torch.Tensor, ...]]]:
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    a3, b3 = torch.randn(2, 3, 8), torch.randn(2, 8, 4)
    return [
        ("linear", lambda x, w, b: F.linear(x, w, b), (x, w, b)),
        ("linear, bias keyword", lambda x, w, b: F.linear(x, w, bias=b), (x, w, b)),
        ("linear, no bias", lambda x, w: F.linear(x, w), (x, w)),
        ("matmul", lambda x, w: torch.matmul(x, w.t()), (x, w)),
        ("@", lambda x, w: x @ w.t(), (x, w)),
        ("Tensor.matmul", lambda x, w: x.matmul(w.t()), (x, w)),
        ("mm", lambda x, w: torch.mm(x, w.t()), (x, w)),
        ("Tensor.mm", lambda x, w: x.mm(w.t()), (x, w)),
        ("bmm", lambda a, b: torch.bmm(a, b), (a3, b3)),
        ("addmm", lambda b, x, w: torch.addmm(b, x, w.t(), beta=0.5, alpha=2.0), (b, x, w)),
    ]


@pytest.mark.parametrize("name, fn, args", _cases(), ids=[c[0] for c in _cases()])
def test_gemm_calls_become_the_lowering_in_batch_invariant_mode(
    lowering_provider: None, name: str, fn: Callable[..., Any], args: tuple[torch.Tensor, ...]
) -> None:
    expected = fn(*args) + 1
    with ird.batch_invariant():
        gm, result = _compiled_graph(fn, *args)
    assert set(_LOWERINGS.values()) & _targets(gm), gm.code
    torch.testing.assert_close(result, expected)


def test_default_mode_leaves_the_graph_alone(lowering_provider: None) -> None:
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    gm, result = _compiled_graph(lambda x, w: F.linear(x, w), x, w)
    assert not set(_LOWERINGS.values()) & _targets(gm)
    assert torch.equal(result, F.linear(x, w))


def test_inputs_that_require_grad_keep_the_aten_op(lowering_provider: None) -> None:
    x, w = torch.randn(3, 8), torch.randn(5, 8, requires_grad=True)
    with ird.batch_invariant():
        gm, _ = _compiled_graph(lambda x, w: F.linear(x, w), x, w)
    assert not set(_LOWERINGS.values()) & _targets(gm)


def test_weights_that_require_grad_are_lowered_under_no_grad(lowering_provider: None) -> None:
    """A model's parameters require grad; an inference step traced without grad still lowers."""
    x, w = torch.randn(3, 8), torch.nn.Parameter(torch.randn(5, 8))
    with ird.batch_invariant(), torch.no_grad():
        gm, _ = _compiled_graph(lambda x, w: F.linear(x, w), x, w)
    assert set(_LOWERINGS.values()) & _targets(gm)


def test_the_pass_pickles_for_inductors_cache_key() -> None:
    import pickle

    from ir_dispatch._inductor_pass import LoweringPass

    restored = pickle.loads(pickle.dumps(LoweringPass(None)))
    assert restored.uuid() == LoweringPass(None).uuid()


def test_implementations_without_a_lowering_keep_the_aten_op() -> None:
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    with ird.batch_invariant():  # the cpu provider serves linear on CPU, with no lowering
        gm, _ = _compiled_graph(lambda x, w: F.linear(x, w), x, w)
    assert torch._C._nn.linear in _targets(gm)
    assert not set(_LOWERINGS.values()) & _targets(gm)


def test_out_keyword_is_left_alone(lowering_provider: None) -> None:
    x, w = torch.randn(3, 8), torch.randn(8, 5)

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = torch.empty(3, 5)
        torch.mm(x, w, out=out)
        return out

    with ird.batch_invariant():
        gm, _ = _compiled_graph(fn, x, w)
    assert not set(_LOWERINGS.values()) & _targets(gm)


def test_install_chains_the_previous_pass_and_uninstall_restores_it(
    monkeypatch: pytest.MonkeyPatch, lowering_provider: None
) -> None:
    from torch._inductor import config
    from torch._inductor.custom_graph_pass import CustomGraphPass

    seen: list[int] = []

    class Previous(CustomGraphPass):  # type: ignore[misc]
        def __call__(self, graph: torch.fx.Graph) -> None:
            seen.append(len(graph.nodes))

        def uuid(self) -> Any:
            return "previous"

    previous = Previous()
    config.pre_grad_custom_pass = previous
    monkeypatch.setenv("IR_DISPATCH_LOWER", "1")
    try:
        assert ird.install_lowering()
        installed = config.pre_grad_custom_pass
        assert installed is not previous and ird.lowering_installed()
        installed(torch.fx.Graph())
        assert seen == [0]
        default_key = installed.uuid()
        with ird.batch_invariant():
            assert installed.uuid() != default_key  # the mode changes what the pass does
        ird.uninstall_lowering()
        assert config.pre_grad_custom_pass is previous and not ird.lowering_installed()
    finally:
        ird.uninstall_lowering()
        config.pre_grad_custom_pass = None


def test_the_overrides_install_the_pass_by_default_when_a_lowering_exists(
    monkeypatch: pytest.MonkeyPatch, lowering_provider: None
) -> None:
    from torch._inductor import config

    monkeypatch.delenv("IR_DISPATCH_LOWER", raising=False)
    with ird.aten_overrides():  # on by default
        assert ird.lowering_installed() and config.pre_grad_custom_pass is not None
    assert not ird.lowering_installed() and config.pre_grad_custom_pass is None
    monkeypatch.setenv("IR_DISPATCH_LOWER", "0")
    with ird.aten_overrides():
        assert not ird.lowering_installed() and config.pre_grad_custom_pass is None


def test_a_caller_may_make_the_pass_opt_in(
    monkeypatch: pytest.MonkeyPatch, lowering_provider: None
) -> None:
    """``lowering_default=False`` (the vLLM plugin): only ``IR_DISPATCH_LOWER=1`` installs it."""
    monkeypatch.delenv("IR_DISPATCH_LOWER", raising=False)
    ird.install_aten_overrides(lowering_default=False)
    try:
        assert not ird.lowering_installed()
    finally:
        ird.uninstall_aten_overrides()
    monkeypatch.setenv("IR_DISPATCH_LOWER", "1")
    ird.install_aten_overrides(lowering_default=False)
    try:
        assert ird.lowering_installed()
    finally:
        ird.uninstall_aten_overrides()
    assert not ird.lowering_installed()


def test_no_lowering_registered_means_no_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a lowering (CPU, interpreter) the pass would do nothing: it is not installed."""
    from ir_dispatch.lowering import lowerings_registered

    monkeypatch.setenv("IR_DISPATCH_LOWER", "1")
    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "0")  # routing (the default) installs it
    if lowerings_registered():
        pytest.skip("a provider registered a lowering here (CUDA)")
    with ird.aten_overrides():
        assert not ird.lowering_installed()


@pytest.mark.parametrize("value, expected", [("", True), ("1", True), ("true", True),
                                             ("0", False), ("FALSE", False)])  # fmt: skip
def test_the_switch_reads_one_and_zero(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    from ir_dispatch.lowering import lowering_enabled

    monkeypatch.setenv("IR_DISPATCH_LOWER", value)
    assert lowering_enabled() is expected
    assert lowering_enabled(default=False) is (expected and value != "")


def test_the_switch_rejects_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from ir_dispatch.lowering import lowering_enabled

    monkeypatch.setenv("IR_DISPATCH_LOWER", "yes please")
    with pytest.raises(ValueError, match=r"IR_DISPATCH_LOWER='yes please'.*expected 1 or 0"):
        lowering_enabled()


def _reduction_cases() -> list[tuple[str, str, Callable[..., Any]]]:
    """(id, registry op, function) for each form Dynamo records a reduction call in."""
    return [
        ("RMSNorm's mean", "mean", lambda x: x.pow(2).mean(-1, keepdim=True)),
        ("torch.mean, dims", "mean", lambda x: torch.mean(x, (0, 1))),
        ("Tensor.mean, all", "mean", lambda x: x.mean()),
        ("Tensor.mean, dtype", "mean", lambda x: x.mean(dim=1, dtype=torch.float64)),
        ("F.softmax, dtype", "softmax", lambda x: F.softmax(x, dim=-1, dtype=torch.float32)),
        ("torch.softmax", "softmax", lambda x: torch.softmax(x, 1)),
        ("Tensor.softmax", "softmax", lambda x: x.softmax(-1)),
        ("torch.log_softmax", "log_softmax", lambda x: torch.log_softmax(x, -1)),
        ("F.log_softmax", "log_softmax", lambda x: F.log_softmax(x, dim=1)),
        ("Tensor.log_softmax", "log_softmax", lambda x: x.log_softmax(0)),
    ]


@pytest.fixture
def route_reductions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "1")


# These compare a routed graph with the eager aten overrides on CPU tensors. The overrides are
# installed under the process platform's dispatch key only, so on a CUDA host CPU tensors reach
# plain ATen in eager mode while the routed graph runs the registry's CPU provider (found on the
# H100 host; reproduced here with IR_DISPATCH_PLATFORM=cuda).
_overrides_cover_cpu = pytest.mark.skipif(
    ird.current_platform().dispatch_key != "CPU",
    reason="the aten overrides cover this platform's tensors only, not CPU tensors",
)


@_overrides_cover_cpu
@pytest.mark.parametrize(
    "name, op_name, fn", _reduction_cases(), ids=[c[0] for c in _reduction_cases()]
)
def test_reductions_go_to_the_registry_op_when_routed(
    route_reductions: None, name: str, op_name: str, fn: Callable[..., Any]
) -> None:
    """Inductor would compile these itself; routed, they run what eager dispatch selects."""
    x = torch.randn(4, 6, 5)
    op = getattr(ops, op_name)
    with ird.batch_invariant():
        gm, result = _compiled_graph(fn, x)
        with ird.aten_overrides():
            expected = fn(x)  # eager: the aten overrides call the registry
    assert op.torch_op in _targets(gm), gm.code
    assert result.dtype == expected.dtype and torch.equal(result, expected)


def test_reductions_are_left_to_inductor_when_routing_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``IR_DISPATCH_LOWER_REDUCTIONS=0``: even registered lowerings are not used for them."""
    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "0")

    def lowered(x: torch.Tensor, *args: Any) -> torch.Tensor:
        return x

    for name in ("mean", "softmax", "log_softmax"):
        op = getattr(ops, name)
        op.register_impl("lowtest", batch_invariant=True, priority=1000, lowering=lowered)(
            op.impls[-1].fn
        )
    try:
        for _, op_name, fn in _reduction_cases():
            with ird.batch_invariant():
                gm, _ = _compiled_graph(fn, torch.randn(4, 6, 5))
            assert not {getattr(ops, op_name).torch_op, lowered} & _targets(gm), gm.code
    finally:
        for name in ("mean", "softmax", "log_softmax"):
            getattr(ops, name).unregister_impl("lowtest")


def test_routed_reductions_only_in_batch_invariant_mode(route_reductions: None) -> None:
    gm, _ = _compiled_graph(lambda x: x.softmax(-1), torch.randn(3, 5))
    assert ops.softmax.torch_op not in _targets(gm)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: F.softmax(x),  # no dim: torch guesses one (deprecated)
        lambda x: torch.mean(x, 1, keepdim=True, out=torch.empty(3, 1)),
    ],
    ids=["softmax without dim", "mean with out"],
)
def test_reduction_forms_the_op_does_not_take_are_left_alone(
    route_reductions: None, fn: Callable[..., Any]
) -> None:
    with ird.batch_invariant(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # softmax's deprecated implicit dim
        gm, _ = _compiled_graph(fn, torch.randn(3, 5))
    assert not {ops.softmax.torch_op, ops.mean.torch_op} & _targets(gm)


def test_a_reduction_lowering_wins_over_the_custom_op(route_reductions: None) -> None:
    def lowered_mean(x: torch.Tensor, dim: Any, keepdim: bool, dtype: Any) -> torch.Tensor:
        return torch.mean(x, dim, keepdim, dtype=dtype) + 1

    ops.mean.register_impl("lowtest", batch_invariant=True, priority=1000, lowering=lowered_mean)(
        ops.mean.impls[-1].fn
    )
    try:
        x = torch.randn(3, 5)
        with ird.batch_invariant():
            gm, result = _compiled_graph(lambda x: x.mean(-1, keepdim=True), x)
        assert lowered_mean in _targets(gm)
        torch.testing.assert_close(result, x.mean(-1, keepdim=True) + 1)
    finally:
        ops.mean.unregister_impl("lowtest")


def test_routing_reductions_changes_the_cache_key_and_installs_the_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ir_dispatch.lowering import lowerings_fingerprint, lowerings_registered

    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "0")
    off = lowerings_fingerprint()
    monkeypatch.delenv("IR_DISPATCH_LOWER_REDUCTIONS")  # the default: routed
    assert lowerings_fingerprint() != off
    if lowerings_registered():
        pytest.skip("a provider registered a lowering here (CUDA): the pass is installed anyway")
    with ird.aten_overrides():  # no lowering registered, but the reductions are routed
        assert ird.lowering_installed()
    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "maybe")
    with pytest.raises(ValueError, match="IR_DISPATCH_LOWER_REDUCTIONS='maybe'"):
        lowerings_fingerprint()


def test_reductions_are_routed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IR_DISPATCH_LOWER_REDUCTIONS", raising=False)
    with ird.batch_invariant():
        gm, _ = _compiled_graph(lambda x: x.softmax(-1), torch.randn(3, 5))
    assert ops.softmax.torch_op in _targets(gm), gm.code


def test_the_pass_keeps_eager_casts_in_batch_invariant_graphs_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inductor's ``emulate_precision_casts`` is on while a BI graph compiles (the routing on),
    and back to the user's value for other graphs and once the pass is removed."""
    from torch._inductor import config

    from ir_dispatch._inductor_pass import LoweringPass

    seen: list[bool] = []
    lowering = LoweringPass(lambda graph: seen.append(config.emulate_precision_casts))
    graph = torch.fx.Graph()
    monkeypatch.delenv("IR_DISPATCH_LOWER_REDUCTIONS", raising=False)
    with config.patch(emulate_precision_casts=False):
        with ird.batch_invariant():
            lowering(graph)
        lowering(graph)
        with ird.batch_invariant():
            monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "0")
            lowering(graph)
        assert seen == [True, False, False]
        monkeypatch.delenv("IR_DISPATCH_LOWER_REDUCTIONS")
        with ird.aten_overrides(), ird.batch_invariant():
            installed = config.pre_grad_custom_pass
            assert ird.lowering_installed()
            installed(graph)
            assert config.emulate_precision_casts is True
        assert config.emulate_precision_casts is False  # uninstalling restored the user's value


def test_the_cache_key_follows_the_routing_and_its_casts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph cached without the eager casts must not be reused with them."""
    from ir_dispatch.lowering import lowerings_fingerprint

    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "0")
    off = lowerings_fingerprint()
    monkeypatch.setenv("IR_DISPATCH_LOWER_REDUCTIONS", "1")
    assert "reductions+casts" not in off and lowerings_fingerprint() != off


@_overrides_cover_cpu
@pytest.mark.parametrize("op_name", ["softmax", "log_softmax"])
def test_a_softmax_cast_back_to_its_input_dtype_is_written_in_that_dtype(
    route_reductions: None, op_name: str
) -> None:
    """``softmax(x, dtype=fp32).to(x.dtype)``: one kernel writing bf16, the same bits."""
    fn_torch = getattr(F, op_name)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return fn_torch(x, dim=-1, dtype=torch.float32).to(x.dtype)

    x = torch.randn(4, 6, 33).to(torch.bfloat16)
    with ird.batch_invariant():
        gm, result = _compiled_graph(fn, x)
        with ird.aten_overrides():
            expected = fn(x)
    assert "to" not in _targets(gm), gm.code
    routed = [n for n in gm.graph.nodes if n.target == getattr(ops, op_name).torch_op]
    assert len(routed) == 1 and routed[0].args[2] is None, gm.code
    assert result.dtype == torch.bfloat16 and torch.equal(result, expected)


def _cast_and_keep(s: torch.Tensor) -> torch.Tensor:
    """The softmax cast to bf16 and used as it is too (so its fp32 result is needed)."""
    return s.to(torch.bfloat16) * s


@pytest.mark.parametrize(
    "fn, dtype",
    [
        (lambda x: F.softmax(x, dim=-1).to(torch.bfloat16), torch.float32),  # not x's dtype
        (lambda x: _cast_and_keep(F.softmax(x, dim=-1, dtype=torch.float32)), torch.bfloat16),
        (lambda x: F.softmax(x, dim=-1, dtype=torch.float32).to(torch.float16), torch.bfloat16),
    ],
    ids=["cast to another dtype", "softmax used twice", "cast to a third dtype"],
)
@_overrides_cover_cpu
def test_other_casts_after_a_softmax_stay(
    route_reductions: None, fn: Callable[..., Any], dtype: torch.dtype
) -> None:
    x = torch.randn(3, 17).to(dtype)
    with ird.batch_invariant():
        gm, result = _compiled_graph(fn, x)
        with ird.aten_overrides():
            expected = fn(x)
    assert "to" in _targets(gm), gm.code
    assert torch.equal(result, expected)


def _lowered_mean_of_squares(x: torch.Tensor, dim: Any, keepdim: bool) -> torch.Tensor:
    return x.float().pow(2).mean(dim, keepdim) + 1  # distinguishable from the pattern


@pytest.fixture
def squares_lowering() -> Iterator[None]:
    """Provider ``lowtest`` on ``mean_of_squares``, with a lowering."""
    ops.mean_of_squares.register_impl(
        "lowtest", batch_invariant=True, priority=1000, lowering=_lowered_mean_of_squares
    )(ops.mean_of_squares.impls[-1].fn)
    try:
        yield
    finally:
        ops.mean_of_squares.unregister_impl("lowtest")


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    """``transformers``' RMSNorm: the fp32 ``x`` is used again after its statistic."""
    xf = x.to(torch.float32)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def _squares_cases() -> list[tuple[str, Callable[..., Any], torch.dtype]]:
    """(id, function, x's dtype) for each form of RMSNorm's statistic the pass rewrites."""
    return [
        ("x.float().pow(2)", lambda x: x.float().pow(2).mean(-1, keepdim=True), torch.bfloat16),
        ("torch.pow, fp16", lambda x: torch.pow(x.to(torch.float32), 2).mean(-1), torch.float16),
        ("** 2, fp32 x", lambda x: (x**2).mean((0, 2)), torch.float32),
        ("RMSNorm", _rms_norm, torch.bfloat16),
    ]


@pytest.mark.parametrize("name, fn, dtype", _squares_cases(), ids=[c[0] for c in _squares_cases()])
def test_rmsnorms_statistic_becomes_mean_of_squares_where_it_has_a_lowering(
    route_reductions: None,
    squares_lowering: None,
    name: str,
    fn: Callable[..., Any],
    dtype: torch.dtype,
) -> None:
    """The lowering reads ``x`` itself (not its fp32 copy), and the ``pow`` is gone."""
    x = torch.randn(3, 4, 16).to(dtype)
    with ird.batch_invariant():
        gm, _ = _compiled_graph(fn, x)
    calls = [n for n in gm.graph.nodes if n.target is _lowered_mean_of_squares]
    assert len(calls) == 1, gm.code
    (source,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert calls[0].args[0] is source, gm.code
    assert not {"pow", torch.pow} & _targets(gm) and ops.mean.torch_op not in _targets(gm)


@pytest.mark.parametrize(
    "fn, dtype",
    [
        (lambda x: x.pow(2).mean(-1), torch.bfloat16),  # a bf16 square: rounded to bf16
        (lambda x: x.float().pow(3).mean(-1), torch.bfloat16),
        (lambda x: x.float().pow(2).mean(-1, dtype=torch.float64), torch.bfloat16),
        (lambda x: (x.float() * x.float()).mean(-1), torch.bfloat16),
    ],
    ids=["bf16 square", "cube", "mean dtype", "product"],
)
def test_other_means_stay_means(
    route_reductions: None, squares_lowering: None, fn: Callable[..., Any], dtype: torch.dtype
) -> None:
    with ird.batch_invariant():
        gm, _ = _compiled_graph(fn, torch.randn(3, 16).to(dtype))
    assert _lowered_mean_of_squares not in _targets(gm) and ops.mean.torch_op in _targets(gm)


def test_without_a_lowering_the_statistic_stays_a_routed_mean(route_reductions: None) -> None:
    """Where no implementation has a lowering (CPU), ``mean`` is routed as before."""
    with ird.batch_invariant():
        gm, _ = _compiled_graph(_rms_norm, torch.randn(3, 16).to(torch.bfloat16))
    assert ops.mean.torch_op in _targets(gm) and "pow" in _targets(gm), gm.code


def test_the_cache_key_covers_the_mean_of_squares_lowering(squares_lowering: None) -> None:
    from ir_dispatch.lowering import lowerings_fingerprint

    with_it = lowerings_fingerprint()
    ops.mean_of_squares.unregister_impl("lowtest")
    try:
        assert lowerings_fingerprint() != with_it
    finally:
        ops.mean_of_squares.register_impl(
            "lowtest", batch_invariant=True, priority=1000, lowering=_lowered_mean_of_squares
        )(ops.mean_of_squares.impls[-1].fn)
