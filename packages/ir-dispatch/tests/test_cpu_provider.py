"""The ``cpu`` provider: registration, bitwise batch invariance, accuracy, argument errors.

Invariance: a probe row's output alone must equal (``torch.equal``) its output inside batches of
1..257 rows at the front, middle and back, under 1, 2 and 4 threads, for contiguous, transposed
and strided inputs. The same harness run on torch's own kernels finds differences, so the
harness can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F

import ir_dispatch as ird
from ir_dispatch import ops
from ir_dispatch.providers import cpu, cpu_gemm, cpu_rows
from ir_dispatch.testing import providers_removed

BATCH_SIZES = (1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257)
POSITIONS = ("front", "middle", "back")
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),  # torch CPU runs every op here in fp16
]
THREADS = [pytest.param(n, id=f"{n}thr") for n in (1, 2, 4)]
# Odd sizes on purpose: no multiple of a vector width or of GEMM_ROWS.
K_ODD, N_ODD, WIDTH_ODD = 97, 67, 300
# Qwen3-0.6B: hidden 1024 (FACTS: torch.mm varies for M = 1, 3 at this size), vocab 151936.
QWEN3_HIDDEN, QWEN3_VOCAB = 1024, 151936

# (atol, rtol) against a float64 reference computed from the same (rounded) inputs.
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),  # fp32 accumulation of O(1) terms: a few ulps times sqrt(K)
    torch.bfloat16: (3e-2, 2e-2),  # 8-bit mantissa: output rounding 2^-9, two roundings in norms
    torch.float16: (4e-3, 4e-3),  # 11-bit mantissa: output rounding 2^-12, likewise
    torch.float64: (1e-12, 1e-12),
}

RowFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]
SetThreads = Callable[[int], None]


@pytest.fixture
def threads() -> Iterator[SetThreads]:
    """Set the intra-op thread count for the test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _index(batch: int, position: str) -> int:
    return {"front": 0, "middle": batch // 2, "back": batch - 1}[position]


def _outputs(result: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def variant_cases(
    fn: RowFn,
    probe: Sequence[torch.Tensor],
    fillers: Sequence[torch.Tensor],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    positions: Sequence[str] = POSITIONS,
) -> list[str]:
    """The (batch, position) cases where the probe's outputs differ from its outputs alone.

    ``fn`` maps batched inputs (leading batch dimension) to outputs with a leading batch
    dimension; ``probe`` holds each input for one row (leading dimension 1) and ``fillers`` the
    other rows (at least ``max(batch_sizes) - 1``).
    """
    alone = _outputs(fn(*probe))
    bad = []
    for batch in batch_sizes:
        for index in sorted({_index(batch, p) for p in positions}):
            args = [
                torch.cat([f[:index], p, f[index : batch - 1]])
                for p, f in zip(probe, fillers, strict=True)
            ]
            got = _outputs(fn(*args))
            if not all(
                torch.equal(g[index : index + 1], a) for g, a in zip(got, alone, strict=True)
            ):
                bad.append(f"batch {batch} at row {index}")
    return bad


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "contiguous":
        return x
    if kind == "transposed":  # column-major
        return (
            x.t().contiguous().t()
            if x.dim() == 2
            else x.transpose(-1, -2).contiguous().transpose(-1, -2)
        )
    if kind == "strided":  # every other column of a buffer twice as wide
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    raise ValueError(kind)


def _randn(*shape: int, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# --------------------------------------------------------------------------------- row functions
def _gemm_case(
    op: str, dtype: torch.dtype, layout: str, k: int = K_ODD, n: int = N_ODD
) -> tuple[RowFn, int]:
    """(fn, input width) for one GEMM op; the weight is fixed, rows are activations."""
    w = _randn(n, k, dtype=dtype, seed=1, scale=k**-0.5)
    bias = _randn(n, dtype=dtype, seed=2)
    b = _layout(w.t().contiguous(), layout)  # [K, N]
    if op == "mm":
        return (lambda x: cpu_gemm.mm(_layout(x, layout), b)), k
    if op == "addmm":
        return (lambda x: cpu_gemm.addmm(bias, _layout(x, layout), b, 0.5, 2.0)), k
    if op == "linear":  # the composite: linear -> addmm through the registry
        return (lambda x: ops.linear(_layout(x, layout), w, bias)), k
    if op == "bmm":  # each row is one [3, K] matrix of the batch, times its own slice of b
        return (
            lambda x: cpu_gemm.bmm(_layout(x.reshape(-1, 3, k), layout), b.expand(x.shape[0], k, n))
        ), 3 * k
    raise ValueError(op)


def _row_case(op: str, dtype: torch.dtype, layout: str, width: int = WIDTH_ODD) -> RowFn:
    weight = _randn(width, dtype=dtype, seed=3)
    if op == "rms_norm":
        return lambda x: cpu_rows.rms_norm(_layout(x, layout), weight, 1e-6)
    if op == "fused_add_rms_norm":  # residual = the row reversed, so both inputs vary by row
        return lambda x: cpu_rows.fused_add_rms_norm(_layout(x, layout), x.flip(-1), weight, 1e-6)
    if op == "softmax":
        return lambda x: cpu_rows.softmax(_layout(x, layout), -1)
    if op == "log_softmax":
        return lambda x: cpu_rows.log_softmax(_layout(x, layout), -1, torch.float32)
    if op == "mean":
        return lambda x: cpu_rows.mean(_layout(x, layout), [-1], True)
    if op == "softmax_dim0":  # rows are columns: the batch is dimension 1 of the op's input
        return lambda x: cpu_rows.softmax(_layout(x.t().contiguous(), layout), 0).t()
    if op == "mean_3d":  # reduce two dims of [B, 4, width / 4]
        return lambda x: cpu_rows.mean(_layout(x.reshape(x.shape[0], 4, -1), layout), [1, 2])
    raise ValueError(op)


GEMM_OPS = ["mm", "addmm", "linear", "bmm"]
ROW_OPS = [
    "rms_norm",
    "fused_add_rms_norm",
    "softmax",
    "log_softmax",
    "mean",
    "softmax_dim0",
    "mean_3d",
]


def _check(
    fn: RowFn, width: int, dtype: torch.dtype, batch_sizes: Sequence[int] = BATCH_SIZES
) -> None:
    probe = _randn(1, width, dtype=dtype, seed=10)
    fillers = _randn(max(batch_sizes), width, dtype=dtype, seed=11)
    bad = variant_cases(fn, [probe], [fillers], batch_sizes=batch_sizes)
    assert not bad, f"probe row differs: {bad[:8]}{' ...' if len(bad) > 8 else ''}"


# --------------------------------------------------------------------------------- registration
def test_registration_table() -> None:
    assert cpu.registered_ops() == [
        "mm",
        "addmm",
        "bmm",
        "scaled_mm",
        "rms_norm",
        "fused_add_rms_norm",
        "softmax",
        "log_softmax",
        "mean",
        "mean_of_squares",
    ]
    for name in cpu.registered_ops():
        impl = ird.get_op(name).impl("cpu")
        assert impl.platforms == frozenset({ird.PlatformKind.CPU})
        assert impl.is_batch_invariant_on(ird.PlatformKind.CPU)
        assert impl.priority == cpu.PRIORITY and impl.note
    before = {op.name: len(op.impls) for op in ird.list_ops()}
    cpu.register()  # idempotent: replaces, never duplicates
    assert {op.name: len(op.impls) for op in ird.list_ops()} == before


def test_dispatch_picks_cpu_only_in_batch_invariant_mode() -> None:
    a, b = torch.randn(3, 8), torch.randn(8, 5)
    with ird.batch_invariant():
        assert ird.explain("mm", a, b).chosen == "cpu"
        assert ird.explain("rms_norm", a, None, 1e-6).chosen == "cpu"
        assert ird.explain("mean", torch.arange(4), [0], False, torch.float32).chosen == "cpu"
        reason = ird.explain("softmax", torch.arange(4), 0).candidates[0].rejection
        assert reason is not None and "int64" in reason
        with ird.recording() as rec:
            ops.linear(a, b.t(), torch.zeros(5))
            ops.matmul(a, b)
        assert rec.providers() == {
            "linear": ["composite"],
            "addmm": ["cpu"],
            "matmul": ["composite"],
            "mm": ["cpu"],
        }
    assert ird.explain("mm", a, b).chosen == "native"
    rejection = ird.explain("mm", a, b).candidates[0].rejection
    assert rejection == "only used in batch-invariant mode"


def test_aten_overrides_reach_the_cpu_provider_without_recursion() -> None:
    x, w, bias = torch.randn(5, 64), torch.randn(32, 64), torch.randn(32)
    ird.install_aten_overrides()
    with ird.batch_invariant(), ird.recording() as rec:
        y = F.linear(x, w, bias)
        p = torch.softmax(y, -1)
        lp = torch.log_softmax(y, -1)
        m = y.mean(-1, keepdim=True)
        z = torch.bmm(x.reshape(5, 1, 64), w.t().expand(5, 64, 32))
    assert dict(rec.counts) == {
        ("linear", "composite"): 1,
        ("addmm", "cpu"): 1,
        ("softmax", "cpu"): 1,
        ("log_softmax", "cpu"): 1,
        ("mean", "cpu"): 1,
        ("bmm", "cpu"): 1,
    }  # one dispatch each: the kernels' own aten calls do not re-enter the registry
    assert torch.equal(y, cpu_gemm.addmm(bias, x, w.t()))
    assert torch.equal(p, cpu_rows.softmax(y, -1))
    assert torch.equal(lp, cpu_rows.log_softmax(y, -1))
    assert torch.equal(m, cpu_rows.mean(y, [-1], True))
    assert torch.equal(z, cpu_gemm.bmm(x.reshape(5, 1, 64), w.t().expand(5, 64, 32)))


def test_mean_of_squares_is_the_patterns_bits_and_batch_invariant() -> None:
    x = _randn(7, 300, dtype=torch.bfloat16, seed=3)
    with ird.batch_invariant():
        assert ird.explain("mean_of_squares", x, [-1], True).chosen == "cpu"
        got = ops.mean_of_squares(x, [-1], True)
    assert got.dtype == torch.float32
    assert torch.equal(got, cpu_rows.mean(x.float().pow(2), [-1], True))
    torch.testing.assert_close(got.double(), x.double().pow(2).mean(-1, keepdim=True))
    _check(lambda rows: cpu_rows.mean_of_squares(rows, [-1]), 300, torch.bfloat16)
    with pytest.raises(TypeError, match="x"):
        cpu_rows.mean_of_squares(torch.arange(4), [0])


def test_custom_ops_pass_opcheck_and_compile_in_batch_invariant_mode() -> None:
    a, b = torch.randn(5, 16), torch.randn(16, 7)
    x, w = torch.randn(3, 16), torch.randn(16)
    with ird.batch_invariant():
        torch.library.opcheck(ops.mm.torch_op, (a, b))
        torch.library.opcheck(ops.rms_norm.torch_op, (x, w, 1e-6))
        compiled = torch.compile(
            lambda t: ops.log_softmax(ops.mm(t, b), -1), fullgraph=True, backend="aot_eager"
        )
        assert torch.equal(compiled(a), cpu_rows.log_softmax(cpu_gemm.mm(a, b), -1))


# --------------------------------------------------------------------------------- token logprobs
def _logprob_inputs(rows: int, vocab: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _randn(rows, vocab, dtype=dtype, seed=20, scale=4.0)
    ids = torch.randint(0, vocab, (rows, 5), generator=torch.Generator().manual_seed(21))
    ids[:, 0] = torch.tensor([0, vocab - 1, vocab // 2])[torch.arange(rows) % 3]
    return logits, ids


@pytest.mark.parametrize("vocab", [1000, QWEN3_VOCAB])
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_logprobs_composite_is_the_cpu_log_softmax_gathered(
    dtype: torch.dtype, vocab: int
) -> None:
    logits, ids = _logprob_inputs(3, vocab, dtype)
    want = cpu_rows.log_softmax(logits, -1, torch.float32).gather(-1, ids)
    with ird.batch_invariant():
        assert ird.explain("token_logprobs", logits, ids).chosen == "composite"
        with ird.recording() as rec:
            got = ops.token_logprobs(logits, ids)
            got32 = ops.token_logprobs(logits, ids.to(torch.int32))
    assert rec.providers() == {"token_logprobs": ["composite"], "log_softmax": ["cpu"]}
    assert got.dtype == torch.float32 and got.shape == ids.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(got32.view(torch.int32), want.view(torch.int32))


def test_token_logprobs_composite_is_batch_invariant() -> None:
    logits, ids = _logprob_inputs(65, 1000, torch.bfloat16)
    with ird.batch_invariant():
        bad = variant_cases(
            ops.token_logprobs, [logits[:1], ids[:1]], [logits[1:], ids[1:]], (1, 2, 3, 17, 64)
        )
    assert not bad, bad


def test_token_logprobs_outside_the_mode_is_torchs() -> None:
    logits, ids = _logprob_inputs(3, 1000, torch.float32)
    assert ird.explain("token_logprobs", logits, ids).chosen == "native"
    with ird.recording() as rec:
        got = ops.token_logprobs(logits, ids.to(torch.int32))
    assert rec.providers() == {"token_logprobs": ["native"]}
    assert torch.equal(got, torch.log_softmax(logits, -1, dtype=torch.float32).gather(-1, ids))


def test_token_logprobs_custom_op_with_integer_ids() -> None:
    logits, ids = _logprob_inputs(3, 50, torch.float32)
    for index in (ids, ids.to(torch.int32)):
        torch.library.opcheck(ops.token_logprobs.torch_op, (logits, index))
    with ird.batch_invariant():
        compiled = torch.compile(ops.token_logprobs, fullgraph=True, backend="aot_eager")
        want = cpu_rows.log_softmax(logits, -1, torch.float32).gather(-1, ids)
        assert torch.equal(compiled(logits, ids), want)


def test_token_logprobs_without_a_log_softmax_kernel_raises() -> None:
    logits, ids = _logprob_inputs(2, 100, torch.float32)
    with (
        providers_removed(lambda impl: impl.provider == "cpu", [ops.log_softmax]),
        ird.batch_invariant(),
        pytest.raises(ird.NoBatchInvariantImplError, match="op 'log_softmax'"),
    ):
        ops.token_logprobs(logits, ids)


# --------------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", GEMM_OPS)
def test_gemm_is_batch_invariant(
    op: str, dtype: torch.dtype, nthreads: int, threads: SetThreads
) -> None:
    threads(nthreads)
    fn, width = _gemm_case(op, dtype, "contiguous")
    with ird.batch_invariant():
        _check(fn, width, dtype, batch_sizes=BATCH_SIZES if op != "bmm" else BATCH_SIZES[:9])


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ROW_OPS)
def test_row_ops_are_batch_invariant(
    op: str, dtype: torch.dtype, nthreads: int, threads: SetThreads
) -> None:
    threads(nthreads)
    _check(_row_case(op, dtype, "contiguous"), WIDTH_ODD, dtype)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
@pytest.mark.parametrize("dtype", DTYPES[:2])
@pytest.mark.parametrize("op", GEMM_OPS + ROW_OPS)
def test_non_contiguous_inputs(op: str, dtype: torch.dtype, layout: str) -> None:
    sizes = (1, 2, 3, 17, 33, 65)
    if op in GEMM_OPS:
        fn, width = _gemm_case(op, dtype, layout)
        with ird.batch_invariant():
            _check(fn, width, dtype, batch_sizes=sizes)
    else:
        _check(_row_case(op, dtype, layout), WIDTH_ODD, dtype, batch_sizes=sizes)


@pytest.mark.parametrize("nthreads", THREADS)
def test_scaled_mm_is_batch_invariant(nthreads: int, threads: SetThreads) -> None:
    threads(nthreads)
    fp8 = torch.float8_e4m3fn
    w = _randn(K_ODD, N_ODD, dtype=torch.float32, seed=4).to(fp8)
    scale_b = torch.rand(1, N_ODD) + 0.5
    bias = _randn(N_ODD, dtype=torch.bfloat16, seed=5)

    def fn(x: torch.Tensor, scale_a: torch.Tensor) -> torch.Tensor:
        return cpu_gemm.scaled_mm(x, w, scale_a, scale_b, torch.bfloat16, bias)

    probe = [_randn(1, K_ODD, dtype=torch.float32, seed=6).to(fp8), torch.rand(1, 1) + 0.5]
    fillers = [_randn(256, K_ODD, dtype=torch.float32, seed=7).to(fp8), torch.rand(256, 1) + 0.5]
    assert not variant_cases(fn, probe, fillers)


@pytest.mark.parametrize("weight_layout", ["w.T", "row-major"])
@pytest.mark.parametrize(("k", "n"), [(1, 5), (5, 5), (97, 67), (255, 5), (515, 3), (64, 129)])
def test_every_position_in_a_chunk(k: int, n: int, weight_layout: str, threads: SetThreads) -> None:
    """Small odd shapes on 4 threads, where MKL's kernels for ``chunk @ w.T`` varied by row."""
    threads(4)
    w = _randn(n, k, dtype=torch.float32, seed=1)
    b = w.t() if weight_layout == "w.T" else w.t().contiguous()
    probe, fillers = (
        _randn(1, k, dtype=torch.float32, seed=10),
        _randn(2 * cpu_gemm.GEMM_ROWS, k, dtype=torch.float32, seed=11),
    )
    alone = cpu_gemm.mm(probe, b)
    bad = [
        i
        for i in range(2 * cpu_gemm.GEMM_ROWS + 1)
        if not torch.equal(
            cpu_gemm.mm(torch.cat([fillers[:i], probe, fillers[i:]]), b)[i : i + 1], alone
        )
    ]
    assert not bad, f"rows {bad} differ"


@pytest.mark.parametrize("dtype", DTYPES[:2])
def test_mm_where_torch_mm_varies(dtype: torch.dtype) -> None:
    """Qwen3-0.6B's hidden size, M straddling GEMM_ROWS (torch.mm itself varies here)."""
    fn, width = _gemm_case("linear", dtype, "contiguous", k=QWEN3_HIDDEN, n=QWEN3_HIDDEN)
    with ird.batch_invariant():
        _check(fn, width, dtype, batch_sizes=(1, 2, 3, 16, 31, 32, 33, 65))


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("op", ["log_softmax", "softmax", "mean"])
def test_vocab_rows_are_batch_invariant(op: str, nthreads: int, threads: SetThreads) -> None:
    """One 151936-wide row alone is where ATen splits the row across threads."""
    threads(nthreads)
    _check(
        _row_case(op, torch.float32, "contiguous", width=QWEN3_VOCAB),
        QWEN3_VOCAB,
        torch.float32,
        batch_sizes=(1, 2, 3, 5),
    )


def test_same_bits_across_thread_counts(threads: SetThreads) -> None:
    """Alone on 1 thread equals batched on 4 threads (provable for row ops; observed for MKL)."""
    cases = [(_gemm_case(op, torch.float32, "contiguous")) for op in GEMM_OPS]
    cases += [(_row_case(op, torch.float32, "contiguous"), WIDTH_ODD) for op in ROW_OPS]
    cases.append((_row_case("log_softmax", torch.float32, "contiguous", QWEN3_VOCAB), QWEN3_VOCAB))
    with ird.batch_invariant():
        for fn, width in cases:
            probe, fillers = (
                _randn(1, width, dtype=torch.float32, seed=10),
                _randn(64, width, dtype=torch.float32, seed=11),
            )
            threads(1)
            alone = _outputs(fn(probe))
            threads(4)
            for batch in (3, 65):
                got = _outputs(fn(torch.cat([fillers[: batch - 1], probe])))
                assert all(torch.equal(g[-1:], a) for g, a in zip(got, alone, strict=True)), (
                    fn,
                    batch,
                )


# ------------------------------------------------------------------------ the harness can fail
def _native_and_cpu_cases(
    native: RowFn, ours: RowFn, width: int, batch_sizes: Sequence[int]
) -> tuple[list[str], list[str]]:
    """Differing cases of both functions over several random probes at the front."""
    fillers = _randn(max(batch_sizes), width, dtype=torch.float32, seed=11)
    found: tuple[list[str], list[str]] = ([], [])
    for seed in range(20, 26):  # whether a reordered sum rounds differently depends on the data
        probe = _randn(1, width, dtype=torch.float32, seed=seed)
        for fn, cases in zip((native, ours), found, strict=True):
            cases += variant_cases(
                fn, [probe], [fillers], batch_sizes=batch_sizes, positions=("front",)
            )
    return found


def test_torch_mm_is_batch_variant_here() -> None:
    """FACTS: torch.mm on CPU (K = N = 1024, fp32) gives row 0 other bits for M = 1, 3."""
    w = _randn(QWEN3_HIDDEN, QWEN3_HIDDEN, dtype=torch.float32, seed=1)
    native, ours = _native_and_cpu_cases(
        lambda x: torch.mm(x, w), lambda x: cpu_gemm.mm(x, w), QWEN3_HIDDEN, (1, 3, 16, 64)
    )
    assert native, "torch.mm was batch-invariant here: the harness could not tell the difference"
    assert not ours


def test_torch_mean_is_batch_variant_on_long_rows(threads: SetThreads) -> None:
    """ATen splits one long row across threads (two-pass) but sums many rows serially."""
    threads(2)
    native, ours = _native_and_cpu_cases(
        lambda x: x.mean(-1, keepdim=True),
        lambda x: cpu_rows.mean(x, [-1], True),
        QWEN3_VOCAB,
        (1, 3),
    )
    assert native, "torch.mean was batch-invariant here: the harness could not tell the difference"
    assert not ours


def test_tree_sum_order_is_fixed_by_length() -> None:
    """Segments of 4 for L = 3..4 (next power of two), pairwise: ((x0 + x2) + (x1 + x3))."""
    x = torch.tensor([[1e8, 1.0, -1e8, 1.0]], dtype=torch.float32)
    assert torch.equal(cpu_rows.tree_row_sum(x), (x[:, 0] + x[:, 2]) + (x[:, 1] + x[:, 3]))
    assert not torch.equal(cpu_rows.tree_row_sum(x), ((x[:, 0] + x[:, 1]) + x[:, 2]) + x[:, 3])
    y = torch.randn(3, 5000, dtype=torch.float64)
    kept = y.clone()
    torch.testing.assert_close(cpu_rows.tree_row_sum(y), y.sum(-1))
    assert torch.equal(y, kept)  # overwrite=False leaves the input alone


# --------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_against_float64(dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    x = _randn(37, 515, dtype=dtype, seed=20)
    r = _randn(37, 515, dtype=dtype, seed=21)
    w = _randn(515, 129, dtype=dtype, seed=22, scale=515**-0.5)
    bias = _randn(129, dtype=dtype, seed=23)
    g = _randn(515, dtype=dtype, seed=24)
    xd, rd, wd, bd, gd = (t.double() for t in (x, r, w, bias, g))

    def rms(t: torch.Tensor) -> torch.Tensor:
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)

    checks = {
        "mm": (cpu_gemm.mm(x, w), xd @ wd),
        "addmm": (cpu_gemm.addmm(bias, x, w, 0.5, 2.0), 0.5 * bd + 2.0 * (xd @ wd)),
        "bmm": (
            cpu_gemm.bmm(x.reshape(37, 5, 103), x.reshape(37, 103, 5) / 10),
            xd.reshape(37, 5, 103) @ (xd.reshape(37, 103, 5) / 10),
        ),
        "rms_norm": (cpu_rows.rms_norm(x, g, 1e-6), rms(xd) * gd),
        "fused_add_rms_norm": (cpu_rows.fused_add_rms_norm(x, r, g, 1e-6)[0], rms(xd + rd) * gd),
        "softmax": (cpu_rows.softmax(x, -1), torch.softmax(xd, -1)),
        "log_softmax": (cpu_rows.log_softmax(x, 0), torch.log_softmax(xd, 0)),
        "mean": (cpu_rows.mean(x, [0, 1]), xd.mean()),
    }
    for name, (got, want) in checks.items():
        assert got.dtype == dtype, name
        scale = 10.0 if name == "log_softmax" else 1.0  # |log p| ~ log(37)
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol, msg=name)


def test_scaled_mm_matches_the_native_reference_closely() -> None:
    a = torch.randn(9, 64).to(torch.float8_e4m3fn)
    b = torch.randn(64, 24).to(torch.float8_e4m3fn)
    scale_a, scale_b = torch.rand(9, 1) + 0.5, torch.rand(1, 24) + 0.5
    got = cpu_gemm.scaled_mm(a, b, scale_a, scale_b, torch.float32)
    want = (a.double() @ b.double()) * scale_a.double() * scale_b.double()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        cpu_gemm.scaled_mm(a, b, torch.tensor(2.0), torch.tensor([0.5]), torch.float32),
        (a.double() @ b.double()).float(),
        atol=1e-4,
        rtol=1e-5,
    )


def test_semantics_match_torch() -> None:
    x = torch.randn(4, 6, 5)
    torch.testing.assert_close(cpu_rows.mean(x, None), x.mean())
    torch.testing.assert_close(cpu_rows.mean(x, [0, -1], True), x.mean((0, -1), keepdim=True))
    torch.testing.assert_close(
        cpu_rows.mean(torch.arange(6).reshape(2, 3), [1], False, torch.float32),
        torch.arange(6).reshape(2, 3).mean(1, dtype=torch.float32),
    )
    torch.testing.assert_close(cpu_rows.softmax(x, 1), torch.softmax(x, 1))
    torch.testing.assert_close(
        cpu_rows.log_softmax(x.bfloat16(), 2, torch.float32),
        torch.log_softmax(x.bfloat16(), 2, dtype=torch.float32),
    )
    assert cpu_rows.softmax(x.half(), -1).dtype == torch.float16
    masked = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf")] * 3])
    torch.testing.assert_close(
        cpu_rows.softmax(masked, -1), torch.softmax(masked, -1), equal_nan=True
    )
    nan_bias, a, b = torch.full((3, 1), float("nan")), torch.randn(3, 4), torch.randn(4, 5)
    torch.testing.assert_close(
        cpu_gemm.addmm(nan_bias, a, b, beta=0.0), torch.addmm(nan_bias, a, b, beta=0.0)
    )
    row_bias = torch.randn(3, 1)
    torch.testing.assert_close(cpu_gemm.addmm(row_bias, a, b), torch.addmm(row_bias, a, b))
    assert cpu_gemm.mm(torch.randn(0, 4), torch.randn(4, 3)).shape == (0, 3)
    assert torch.equal(cpu_gemm.mm(torch.randn(3, 0), torch.randn(0, 2)), torch.zeros(3, 2))


# --------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(
            lambda: cpu_gemm.mm(torch.randn(2, 3), torch.randn(4, 5)),
            ValueError,
            "3 columns, b has 4 rows",
            id="mm-inner",
        ),
        pytest.param(
            lambda: cpu_gemm.mm(torch.randn(2, 3), torch.randn(3, 5).double()),
            TypeError,
            "share a dtype",
            id="mm-dtype",
        ),
        pytest.param(
            lambda: cpu_gemm.mm(torch.randn(2, 3, 1), torch.randn(3, 5)),
            ValueError,
            "a must be 2-D",
            id="mm-rank",
        ),
        pytest.param(
            lambda: cpu_gemm.mm(torch.arange(6).reshape(2, 3), torch.arange(6).reshape(3, 2)),
            TypeError,
            "got int64",
            id="mm-int",
        ),
        pytest.param(
            lambda: cpu_gemm.mm([[1.0]], torch.randn(1, 1)),  # type: ignore[arg-type]
            TypeError,
            "a must be a torch.Tensor",
            id="mm-list",
        ),
        pytest.param(
            lambda: cpu_gemm.addmm(torch.randn(4), torch.randn(2, 3), torch.randn(3, 5)),
            ValueError,
            "does not broadcast",
            id="addmm-bias",
        ),
        pytest.param(
            lambda: cpu_gemm.bmm(torch.randn(2, 2, 3), torch.randn(3, 3, 4)),
            ValueError,
            "same batch size",
            id="bmm-batch",
        ),
        pytest.param(
            lambda: cpu_gemm.scaled_mm(
                torch.randn(4, 3), torch.randn(3, 5), torch.rand(3, 1), torch.rand(1), torch.float32
            ),
            ValueError,
            "scale_a must have 1 or 4",
            id="scaled-scale",
        ),
        pytest.param(
            lambda: cpu_rows.softmax(torch.randn(2, 3), 2),
            ValueError,
            r"dim must be in \[-2, 1\]",
            id="softmax-dim",
        ),
        pytest.param(
            lambda: cpu_rows.softmax(torch.arange(3), 0), TypeError, "floating", id="softmax-int"
        ),
        pytest.param(
            lambda: cpu_rows.mean(torch.randn(2, 3), [1, -1]),
            ValueError,
            "repeat",
            id="mean-repeat",
        ),
        pytest.param(
            lambda: cpu_rows.mean(torch.randn(2, 3), [0], dtype=torch.int32),
            TypeError,
            "floating dtype",
            id="mean-dtype",
        ),
        pytest.param(
            lambda: cpu_rows.rms_norm(torch.randn(2, 3), torch.randn(4), 1e-6),
            ValueError,
            r"weight must be None or of shape \(3,\)",
            id="rms-weight",
        ),
        pytest.param(
            lambda: cpu_rows.fused_add_rms_norm(torch.randn(2, 3), torch.randn(3, 3), None, 1e-6),
            ValueError,
            "residual must have x's shape",
            id="fused-residual",
        ),
    ],
)
def test_bad_arguments_are_clear_errors(
    call: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gemm_bits_do_not_depend_on_the_strides_of_b(dtype: torch.dtype) -> None:
    """Same values of ``b`` in another layout give the same bits (found by the TP model test)."""
    torch.manual_seed(5)
    a = torch.randn(9, 32, dtype=dtype)
    k = torch.randn(9, 32, dtype=dtype)
    with ird.batch_invariant():
        strided = ird.ops.mm.call_selected(a, k.t())
        packed = ird.ops.mm.call_selected(a, k.t().contiguous())
    assert torch.equal(strided, packed)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("length", [7, 300, 2500])
def test_row_softmax_under_autograd_same_bits_and_right_gradient(fn: str, length: int) -> None:
    """Reached from an overridden composite op the kernel runs under autograd: no in-place step
    may break the backward, and the values must not change."""
    from ir_dispatch.providers import cpu_rows

    kernel = getattr(cpu_rows, fn)
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(5, length, generator=gen, dtype=torch.float64) * 3
    plain = kernel(x, -1)
    leaf = x.clone().requires_grad_(True)
    tracked = kernel(leaf, -1)
    assert torch.equal(tracked.detach(), plain)
    weights = torch.randn(5, length, generator=gen, dtype=torch.float64)
    (tracked * weights).sum().backward()
    ref_leaf = x.clone().requires_grad_(True)
    (getattr(torch, fn)(ref_leaf, -1) * weights).sum().backward()
    assert leaf.grad is not None and ref_leaf.grad is not None
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-9, atol=1e-12)
