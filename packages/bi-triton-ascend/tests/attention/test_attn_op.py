"""The ir-dispatch op ``paged_attention``: registration, dispatch, native reference, errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from _attn_cases import DEVICE, INTERP, TINY_GQA, make_seq, needs_kernels, paged

import ir_dispatch as ird
from bi_triton_ascend.attention import (
    paged_attention,
    paged_attention_op,
    providers,
    reference_attention,
    varlen_attention,
)

SCALE = TINY_GQA.head_size**-0.5
kernel_warnings = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    providers.register()
    ird.set_batch_invariant(False)
    yield
    ird.set_batch_invariant(False)


Args6 = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _batch(dtype: torch.dtype = torch.float32, device: str = "cpu") -> Args6:
    gen = torch.Generator().manual_seed(0)
    seqs = [make_seq(n, TINY_GQA, dtype, gen, device) for n in (9, 40)]
    return paged([(seqs[0], 9, 9), (seqs[1], 40, 1)], 16, gen, device).args()


def test_op_is_declared_with_a_batch_variant_native() -> None:
    op = ird.get_op("paged_attention")
    assert op is paged_attention_op
    assert op.has_reduction
    native = op.impl("native")
    assert not native.is_batch_invariant_on(ird.PlatformKind.CUDA)
    assert not native.is_batch_invariant_on(ird.PlatformKind.CPU)


def test_triton_provider_registration_table() -> None:
    impl = paged_attention_op.impl("triton")
    assert impl.batch_invariant
    assert impl.fn is paged_attention
    assert ird.PlatformKind.CUDA in impl.platforms
    assert ird.PlatformKind.NPU in impl.platforms
    assert (ird.PlatformKind.CPU in impl.platforms) == INTERP
    assert "chunk" in impl.note
    providers.register()  # idempotent: replaces, never duplicates
    assert [i.provider for i in paged_attention_op.impls].count("triton") == 1


def test_supports_args_explains_rejections() -> None:
    args = _batch()
    check: Callable[..., Any] = providers.supports_args
    meta = [a.to("meta") for a in args]
    assert check(*meta, SCALE) == "device type 'meta' is not supported"
    f64 = [args[0].double(), args[1].double(), *args[2:]]
    assert "needs one of bf16, fp16, fp32" in str(check(*f64, SCALE))


def test_native_matches_float64_reference() -> None:
    args = _batch()
    got = paged_attention_op.native(*args, SCALE)
    want = reference_attention(*args, SCALE, compute_dtype=torch.float64, out_dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@needs_kernels
@kernel_warnings
def test_batch_invariant_mode_dispatches_to_triton() -> None:
    args = _batch(device=DEVICE or "cpu")
    direct = paged_attention(*args, SCALE)
    with ird.batch_invariant(), ird.recording() as rec:
        through_op = paged_attention_op(*args, SCALE)
        selected = paged_attention_op.call_selected(*args, SCALE)
    assert rec.providers() == {"paged_attention": ["triton"]}
    assert torch.equal(through_op, direct)
    assert torch.equal(selected, direct)
    assert "triton" in str(ird.explain("paged_attention", *args, SCALE, batch_invariant=True))


@pytest.mark.skipif(INTERP, reason="CPU tensors are served by the interpreter here")
def test_batch_invariant_mode_refuses_native_on_cpu() -> None:
    args = _batch()
    with ird.batch_invariant(), pytest.raises(ird.NoBatchInvariantImplError, match="triton"):
        paged_attention_op(*args, SCALE)


@kernel_warnings
def test_opcheck() -> None:
    """Schema, fake tensor and AOT-dispatch checks of ``ir_dispatch::paged_attention``."""
    args = _batch()
    torch.library.opcheck(paged_attention_op.torch_op, (*args, SCALE, None, True, 40))


@kernel_warnings
def test_op_traces_under_torch_compile() -> None:
    args = _batch()

    def fn(*a: torch.Tensor) -> torch.Tensor:
        return paged_attention_op(*a, SCALE) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    assert torch.equal(compiled(*args), fn(*args))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        pytest.param({0: "q"}, TypeError, "query must be a torch.Tensor", id="query-not-tensor"),
        pytest.param({0: "2d"}, ValueError, "query must be 3-D", id="query-2d"),
        pytest.param({1: "f16"}, TypeError, "key_cache must have the dtype of query", id="dtype"),
        pytest.param({3: "i16"}, TypeError, "block_table must be int32 or int64", id="table"),
        pytest.param({5: "short"}, ValueError, "query_start_loc must have 3 entries", id="starts"),
        pytest.param({"heads": 3}, ValueError, "multiple of the cache's 3 KV heads", id="gqa"),
        pytest.param({"window": 0}, ValueError, "sliding_window must be >= 1", id="window"),
        pytest.param({"window_nc": 4}, ValueError, "sliding_window needs causal", id="win-nc"),
        pytest.param({"mode": "fast"}, ValueError, "mode must be one of", id="mode"),
        pytest.param({"scale": "x"}, TypeError, "scale must be a float", id="scale"),
        pytest.param({"out": torch.int8}, TypeError, "out_dtype must be None", id="out-dtype"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, error: type, match: str) -> None:
    args: list[Any] = list(_batch())
    kwargs: dict[str, Any] = {}
    scale: Any = SCALE
    window: Any = None
    causal = True
    for key, val in change.items():
        if key == 0:
            args[0] = "q" if val == "q" else args[0][0]
        elif key == 1:
            args[1] = args[1].half()
        elif key == 3:
            args[3] = args[3].to(torch.int16)
        elif key == 5:
            args[5] = args[5][:2]
        elif key == "heads":
            args[1] = args[1].repeat(1, 1, 3, 1)[:, :, :3]
            args[2] = args[1].clone()
        elif key == "window":
            window = val
        elif key == "window_nc":
            window, causal = val, False
        elif key == "mode":
            kwargs["mode"] = val
        elif key == "scale":
            scale = val
        elif key == "out":
            kwargs["out_dtype"] = val
    call: Callable[..., Any] = paged_attention
    with pytest.raises(error, match=match):
        call(*args, scale, window, causal, **kwargs)


def test_varlen_rejects_mismatched_offsets() -> None:
    q = torch.zeros(5, 4, 16)
    kv = torch.zeros(5, 2, 16)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_k must have 2 entries"):
        varlen_attention(q, kv, kv, cu, torch.tensor([0, 2, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="v must have k's shape"):
        varlen_attention(q, kv, kv[:4], cu)
