"""The kit's FLASH_ATTN backend (``VLLM_BI_ATTENTION=1``): opt-in, install, forward, refusals.

The forward runs the kit's real kernel under Triton's CPU interpreter (``TRITON_INTERPRET=1``)
inside a fake vLLM 0.26 tree whose FLASH_ATTN keeps only what the subclass relies on; a separate
test checks the subclass against vLLM 0.26's real classes where its sources are available.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import ir_dispatch as ird
import vllm_bi_plugin
from vllm_bi_plugin import _hooks_gpu, _vllm_compat, plugin

EXPECTED_LINE = (
    "attention: FLASH_ATTN(max_num_splits=1) -> vllm_bi paged_attention (256-key chunks, 512"
    " from key 4096)"
)
V26_SITE = Path("/tmp/v26/site")
REPO = Path(__file__).resolve().parents[3]

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs the kit's kernel: needs TRITON_INTERPRET=1",
)


@pytest.fixture(autouse=True)
def _registry_as_it_was() -> Iterator[None]:
    """Drop the kernel providers these tests register (importing bi-triton-ascend registers
    its kernels process-wide; other tests expect the registry they found)."""
    before = {(op.name, impl.provider) for op in ird.list_ops() for impl in op.impls}
    yield
    for op in ird.list_ops():
        for impl in list(op.impls):
            if impl.provider != "native" and (op.name, impl.provider) not in before:
                op.unregister_impl(impl.provider)


HEADS, KV_HEADS, HEAD, BLOCK = 4, 2, 16, 16


def _cuda_plugin(fake_vllm_tree: Any, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    fake_vllm_tree(layout)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", "cuda")
    # The GPU kernel hooks are covered by test_plugin; here only the attention step matters.
    monkeypatch.setattr(_hooks_gpu, "install", lambda layout, platform, report: None)


def _flash_attn_path() -> str:
    registry = _vllm_compat.import_module(_vllm_compat.ATTENTION_REGISTRY_MODULE)
    return str(registry.AttentionBackendEnum.FLASH_ATTN.get_path())


# --- the switch ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "want"), [("", False), ("0", False), ("1", True), (" 1 ", True)])
def test_opt_in_parses_zero_and_one(monkeypatch, value, want) -> None:
    monkeypatch.setenv("VLLM_BI_ATTENTION", value)
    assert _hooks_gpu.attention_opted_in() is want


@pytest.mark.parametrize("value", ["yes", "true", "2", "on"])
def test_opt_in_rejects_other_values_naming_the_variable(monkeypatch, value) -> None:
    monkeypatch.setenv("VLLM_BI_ATTENTION", value)
    with pytest.raises(ValueError, match="VLLM_BI_ATTENTION"):
        _hooks_gpu.attention_opted_in()


def test_bad_opt_in_fails_register_before_any_change(fake_vllm_tree, monkeypatch) -> None:
    _cuda_plugin(fake_vllm_tree, monkeypatch, "0.26")
    monkeypatch.setenv("VLLM_BI_ATTENTION", "true")
    with pytest.raises(ValueError, match="VLLM_BI_ATTENTION='true'"):
        vllm_bi_plugin.register()
    assert plugin.installed() is None and not ird.is_batch_invariant()


# --- install through the registry ------------------------------------------------------------


def test_without_opt_in_flash_attn_is_vllms(fake_vllm_tree, monkeypatch) -> None:
    _cuda_plugin(fake_vllm_tree, monkeypatch, "0.26")
    monkeypatch.delenv("VLLM_BI_ATTENTION", raising=False)
    vllm_bi_plugin.register()
    assert _flash_attn_path() == "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"
    report = plugin.installed()
    assert report is not None and "paged_attention" not in report.summary()


def test_opt_in_installs_the_backend_as_flash_attn(fake_vllm_tree, monkeypatch) -> None:
    _cuda_plugin(fake_vllm_tree, monkeypatch, "0.26")
    monkeypatch.setenv("VLLM_BI_ATTENTION", "1")
    vllm_bi_plugin.register()
    assert _flash_attn_path() == _hooks_gpu.GPU_ATTENTION_CLASS
    module, name = _hooks_gpu.GPU_ATTENTION_CLASS.rsplit(".", 1)
    sys.modules.pop(module, None)  # bound to an earlier test's fake vLLM
    backend = getattr(importlib.import_module(module), name)
    fa = _vllm_compat.import_module(_vllm_compat.FLASH_ATTN_MODULE)
    assert issubclass(backend, fa.FlashAttentionBackend)
    assert backend.get_name() == "FLASH_ATTN"
    builder = backend.get_builder_cls()
    assert issubclass(builder, fa.FlashAttentionMetadataBuilder)
    assert builder.get_cudagraph_support(None, None).name == "UNIFORM_SINGLE_TOKEN_DECODE"
    assert builder.use_cascade_attention(object()) is False
    assert issubclass(backend.get_impl_cls(), fa.FlashAttentionImpl)
    report = plugin.installed()
    assert report is not None and EXPECTED_LINE in report.summary()
    plugin.unregister()
    assert _flash_attn_path() == "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"


@pytest.mark.parametrize(("layout", "platform"), [("0.32", "cuda"), ("0.26", "cpu")])
def test_opt_in_elsewhere_is_an_error(fake_vllm_tree, monkeypatch, layout, platform) -> None:
    _cuda_plugin(fake_vllm_tree, monkeypatch, layout)
    monkeypatch.setenv("IR_DISPATCH_PLATFORM", platform)
    monkeypatch.setattr("vllm_bi_plugin._hooks_cpu.install", lambda layout, report: None)
    monkeypatch.setenv("VLLM_BI_ATTENTION", "1")
    with pytest.raises(RuntimeError, match=r"VLLM_BI_ATTENTION=1.*CUDA with vLLM 0\.26"):
        vllm_bi_plugin.register()
    assert _flash_attn_path() == "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"


def test_info_shows_the_switch_and_the_dry_run_names_the_backend(
    fake_vllm_tree, monkeypatch
) -> None:
    from vllm_bi_plugin import info

    _cuda_plugin(fake_vllm_tree, monkeypatch, "0.26")
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    monkeypatch.setenv("VLLM_BI_ATTENTION", "1")
    data = info.gather()
    assert data["switch"]["VLLM_BI_ATTENTION"] == "1"
    assert EXPECTED_LINE in data["would_install"]["summary"]
    assert "VLLM_BI_ATTENTION: 1" in info.format_info(data)
    assert "VLLM_BI_QK_FUSION: unset" in info.format_info(data)
    assert "BI_TRITON_LAUNCH_CACHE: unset" in info.format_info(data)
    assert "IR_DISPATCH_REMEMBER: unset" in info.format_info(data)
    assert "IR_DISPATCH_LOWER: unset" in info.format_info(data)
    assert "IR_DISPATCH_LOWER_REDUCTIONS: unset" in info.format_info(data)
    assert plugin.installed() is None  # the dry run undid it
    assert _flash_attn_path() == "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend"


# --- the forward: a mixed batch through the kit's kernel ------------------------------------


def _gpu_attention(fake_vllm_tree: Any) -> Any:
    fake_vllm_tree("0.26")
    sys.modules.pop("vllm_bi_plugin.gpu_attention", None)
    return importlib.import_module("vllm_bi_plugin.gpu_attention")


def _impl(ga: Any, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "num_heads": HEADS, "head_size": HEAD, "scale": HEAD**-0.5, "num_kv_heads": KV_HEADS,
        "alibi_slopes": None, "sliding_window": None, "kv_cache_dtype": "auto",
    }  # fmt: skip
    args.update(kw)
    return ga.BatchInvariantFlashAttentionImpl(**args)


class MixedBatch:
    """A prefill (9 tokens), a decode (40 keys) and a chunked prefill (5 of 37) in one step.

    The cache is laid out as vLLM 0.26's FLASH_ATTN keeps it: physically
    ``[num_blocks, block_size, kv_heads, 2 * head]`` (NHD), handed over as the logical
    ``[num_blocks, kv_heads, block_size, 2 * head]`` view; unused slots hold NaN.
    """

    def __init__(self, window: tuple[int, int] = (-1, -1)) -> None:
        gen = torch.Generator().manual_seed(0)
        self.seq_lens = torch.tensor([9, 40, 37], dtype=torch.int32)
        self.query_start_loc = torch.tensor([0, 9, 10, 15], dtype=torch.int32)
        blocks = [list(range(n)) for n in (1, 3, 3)]
        order = torch.randperm(7, generator=gen).tolist()  # shuffled physical blocks
        table = torch.zeros(3, 3, dtype=torch.int32)
        k = 0
        for i, row in enumerate(blocks):
            for j in row:
                table[i, j] = order[k]
                k += 1
        self.block_table = table
        self.physical = torch.full((8, BLOCK, KV_HEADS, 2 * HEAD), float("nan"))
        for i, n in enumerate(self.seq_lens.tolist()):
            for pos in range(n):
                block = int(table[i, pos // BLOCK])
                self.physical[block, pos % BLOCK] = torch.randn(KV_HEADS, 2 * HEAD, generator=gen)
        self.kv_cache = self.physical.permute(0, 2, 1, 3)
        self.query = torch.randn(18, HEADS, HEAD, generator=gen)  # 15 real rows + 3 padding
        self.metadata = SimpleNamespace(
            num_actual_tokens=15, max_query_len=9, query_start_loc=self.query_start_loc,
            max_seq_len=40, seq_lens=self.seq_lens, block_table=self.block_table,
            slot_mapping=None, use_cascade=False, causal=True, sliding_window=window,
            mm_prefix_range_tensor=None, rswa_prefix_lens=None,
        )  # fmt: skip

    def kit_args(self) -> tuple[torch.Tensor, ...]:
        key = self.physical[..., :HEAD].contiguous()
        value = self.physical[..., HEAD:].contiguous()
        return (
            self.query[:15], key, value, self.block_table, self.seq_lens, self.query_start_loc,
        )  # fmt: skip


def _run(impl: Any, batch: MixedBatch) -> torch.Tensor:
    output = torch.full((18, HEADS, HEAD), 7.0)
    assert not ird.is_batch_invariant()  # the backend switches the mode on itself
    with ird.recording() as rec:
        got = impl.forward(None, batch.query, None, None, batch.kv_cache, batch.metadata, output)
    assert got is output
    assert rec.counts[("paged_attention", "triton")] == 1, dict(rec.counts)
    assert torch.equal(output[15:], torch.full((3, HEADS, HEAD), 7.0)), "padding rows written"
    return output[:15]


@needs_interpreter
@pytest.mark.parametrize(("layer_window", "kit_window"), [(None, None), (8, 8)])
def test_forward_runs_the_kit_kernel_on_a_mixed_batch(
    fake_vllm_tree, layer_window, kit_window
) -> None:
    ga = _gpu_attention(fake_vllm_tree)
    impl = _impl(ga, sliding_window=layer_window)
    batch = MixedBatch(impl.sliding_window)
    got = _run(impl, batch)
    args = batch.kit_args()
    from bi_triton_ascend.attention import paged_attention, reference_attention

    scale = HEAD**-0.5
    # The same call made by hand on contiguous caches: bitwise (the translation adds nothing).
    direct = paged_attention(*args, scale=scale, sliding_window=kit_window)
    assert torch.equal(got, direct)
    # And the float64 reference: the right rows, keys, window and scale.
    want = reference_attention(
        *args, scale, kit_window, compute_dtype=torch.float64, out_dtype=torch.float64
    )
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


@needs_interpreter
def test_forward_rows_do_not_depend_on_the_batch(fake_vllm_tree) -> None:
    """The decode row of sequence 1 is the same alone as inside the mixed batch."""
    ga = _gpu_attention(fake_vllm_tree)
    impl = _impl(ga)
    batch = MixedBatch()
    mixed = _run(impl, batch)
    alone = MixedBatch()
    alone.seq_lens = batch.seq_lens[1:2].clone()
    alone.query_start_loc = torch.tensor([0, 1], dtype=torch.int32)
    alone.block_table = batch.block_table[1:2].clone()
    alone.query = batch.query[9:10].expand(18, -1, -1).clone()
    alone.metadata.__dict__.update(
        num_actual_tokens=1, query_start_loc=alone.query_start_loc, seq_lens=alone.seq_lens,
        block_table=alone.block_table, max_seq_len=40, max_query_len=1,
    )  # fmt: skip
    output = torch.zeros(18, HEADS, HEAD)
    with ird.batch_invariant():
        impl.forward(None, alone.query, None, None, batch.kv_cache, alone.metadata, output)
    assert torch.equal(output[0], mixed[9])


def test_forward_never_runs_a_batch_variant_kernel(fake_vllm_tree) -> None:
    """With the kit's kernel gone, the forward raises instead of using the native reference."""
    from ir_dispatch.testing import providers_removed

    ga = _gpu_attention(fake_vllm_tree)
    impl = _impl(ga)
    batch = MixedBatch()
    output = torch.zeros(18, HEADS, HEAD)
    op = ird.get_op("paged_attention")
    with (
        providers_removed(lambda i: i.provider != "native", [op]),
        pytest.raises(ird.NoBatchInvariantImplError),
    ):
        impl.forward(None, batch.query, None, None, batch.kv_cache, batch.metadata, output)


# --- CUDA graphs: FULL graphs for single-token decode ----------------------------------------


def test_builder_attaches_the_static_bound(fake_vllm_tree, monkeypatch) -> None:
    """Every metadata the builder builds carries the model's max length for capture."""
    ga = _gpu_attention(fake_vllm_tree)
    fa = _vllm_compat.import_module(_vllm_compat.FLASH_ATTN_MODULE)
    seen: list[tuple[Any, ...]] = []

    def parent_build(self: Any, prefix: int, common: Any, fast_build: bool = False) -> Any:
        seen.append((prefix, common, fast_build))
        return SimpleNamespace(max_seq_len=7)

    monkeypatch.setattr(fa.FlashAttentionMetadataBuilder, "build", parent_build, raising=False)
    builder = ga.BatchInvariantFlashAttentionMetadataBuilder()
    builder.model_config = SimpleNamespace(max_model_len=40960)
    common = object()
    metadata = builder.build(0, common, fast_build=True)
    assert seen == [(0, common, True)]
    assert metadata.max_seq_len == 7 and metadata.kit_max_seq_len == 40960


def test_split_bound_is_static_for_decode_and_capture_only(fake_vllm_tree) -> None:
    """Single-token batches (FULL graphs and the warm-ups before their capture) and captures
    size the split grid for the model's max length; prefill and mixed batches keep their own."""
    ga = _gpu_attention(fake_vllm_tree)
    mixed = SimpleNamespace(max_seq_len=300, max_query_len=9, kit_max_seq_len=40960)
    decode = SimpleNamespace(max_seq_len=1, max_query_len=1, kit_max_seq_len=40960)
    assert ga.split_bound(mixed, capturing=False) == 300
    assert ga.split_bound(mixed, capturing=True) == 40960
    assert ga.split_bound(decode, capturing=False) == 40960  # V1's warm-up: same as capture
    assert ga.split_bound(decode, capturing=True) == 40960
    assert ga.split_bound(SimpleNamespace(max_seq_len=300, max_query_len=1), capturing=True) == 300
    assert ga.graph_capturing(torch.zeros(1)) is False  # CPU tensors: never a CUDA capture


def _launch_bounds(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Record the ``max_seq_len`` each kit launch gets (and run it)."""
    from bi_triton_ascend.attention import api

    bounds: list[int | None] = []
    real = api.launch

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        bounds.append(kwargs["max_seq_len"])
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "launch", spy)
    return bounds


@needs_interpreter
def test_forward_under_capture_uses_the_static_bound_same_bits(fake_vllm_tree, monkeypatch) -> None:
    """Captured, the kernel's split grid is sized for the model's max length; same bits."""
    ga = _gpu_attention(fake_vllm_tree)
    impl = _impl(ga)
    eager = _run(impl, MixedBatch()).clone()
    bounds = _launch_bounds(monkeypatch)
    batch = MixedBatch()
    batch.metadata.kit_max_seq_len = 40 * 32  # 40 interpreter chunks
    monkeypatch.setattr(ga, "graph_capturing", lambda t: True)
    captured = _run(impl, batch)
    assert bounds == [40 * 32]
    assert torch.equal(captured, eager)


@needs_interpreter
def test_forward_on_a_full_graph_padded_decode_batch(fake_vllm_tree) -> None:
    """vLLM's FULL-graph decode padding: requests with no query and no keys after the real
    ones, their block-table rows stale, padded tokens past the last request. The real rows are
    those of the unpadded batch, bitwise; the padding reads nothing (its table row points past
    the cache)."""
    ga = _gpu_attention(fake_vllm_tree)
    impl = _impl(ga)
    batch = MixedBatch()
    alone = MixedBatch()
    decode_rows = _run(impl, batch)[9:10]  # sequence 1 decodes inside the mixed batch
    lens = torch.tensor([40, 0, 0, 0], dtype=torch.int32)
    starts = torch.tensor([0, 1, 1, 1, 1], dtype=torch.int32)
    table = torch.full((4, 3), 10**6, dtype=torch.int32)
    table[0] = batch.block_table[1]
    query = torch.full((18, HEADS, HEAD), float("nan"))
    query[0] = batch.query[9]
    alone.metadata.__dict__.update(
        num_actual_tokens=4, query_start_loc=starts, seq_lens=lens, block_table=table,
        max_seq_len=40, max_query_len=1, kit_max_seq_len=40 * 32,
    )  # fmt: skip
    output = torch.zeros(18, HEADS, HEAD)
    with ird.recording() as rec:
        impl.forward(None, query, None, None, batch.kv_cache, alone.metadata, output)
    assert rec.counts[("paged_attention", "triton")] == 1
    assert torch.equal(output[0:1], decode_rows)
    assert torch.equal(output[4:], torch.zeros(14, HEADS, HEAD)), "wrote past the padded tokens"


# --- refusals and vLLM's own paths -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"alibi_slopes": [0.5] * HEADS}, "ALiBi"),
        ({"logits_soft_cap": 30.0}, "soft cap"),
        ({"kv_cache_dtype": "fp8"}, "KV cache dtype 'fp8'"),
        ({"sinks": torch.zeros(HEADS)}, "sinks"),
        ({"head_size": 512}, "head size 512"),
        ({"attn_type": "encoder_decoder"}, "cross-attention"),
    ],
)
def test_unsupported_layers_are_refused(fake_vllm_tree, kw, what) -> None:
    ga = _gpu_attention(fake_vllm_tree)
    with pytest.raises(ga.UnsupportedAttentionError, match=f"(?s){what}.*VLLM_BI_ATTENTION"):
        _impl(ga, **kw)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("use_cascade", True, "cascade"),
        ("causal", torch.ones(3, dtype=torch.int32), "per-sequence causal"),
        ("sliding_window", (7, 7), "sliding window"),
        ("mm_prefix_range_tensor", torch.zeros(3, 1, 2), "prefix-LM"),
    ],
)
def test_unsupported_batches_are_refused(fake_vllm_tree, field, value, what) -> None:
    ga = _gpu_attention(fake_vllm_tree)
    batch = MixedBatch()
    setattr(batch.metadata, field, value)
    output = torch.zeros(18, HEADS, HEAD)
    with pytest.raises(ga.UnsupportedAttentionError, match=what):
        _impl(ga).forward(None, batch.query, None, None, batch.kv_cache, batch.metadata, output)


def test_fused_output_quant_is_refused(fake_vllm_tree) -> None:
    ga = _gpu_attention(fake_vllm_tree)
    batch = MixedBatch()
    output = torch.zeros(18, HEADS, HEAD)
    with pytest.raises(ga.UnsupportedAttentionError, match="output quantization"):
        _impl(ga).forward(
            None, batch.query, None, None, batch.kv_cache, batch.metadata, output,
            output_scale=torch.ones(1),
        )  # fmt: skip


@pytest.mark.parametrize("attn_type", ["encoder", "encoder_only", "decoder"])
def test_encoder_and_profiling_runs_keep_flash_attn(fake_vllm_tree, attn_type) -> None:
    ga = _gpu_attention(fake_vllm_tree)
    fa = _vllm_compat.import_module(_vllm_compat.FLASH_ATTN_MODULE)
    impl = _impl(ga, attn_type=attn_type)
    batch = MixedBatch()
    output = torch.ones(18, HEADS, HEAD)
    metadata = batch.metadata if attn_type != "decoder" else None  # None: profiling run
    impl.forward(None, batch.query, None, None, batch.kv_cache, metadata, output)
    assert fa.CALLS == ["vllm-flash-attn"]
    assert not output.any()


# --- the subclass against vLLM 0.26's real FLASH_ATTN ----------------------------------------

_V26_CHECK = textwrap.dedent(
    """
    import inspect, os
    os.environ["IR_DISPATCH_PLATFORM"] = "cuda"
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends import flash_attn as fa
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm_bi_plugin import _hooks_gpu, _vllm_compat
    from vllm_bi_plugin._report import Report

    report = Report("cuda")
    _hooks_gpu.install_attention(_vllm_compat.V0_26, "cuda", report)
    backend = AttentionBackendEnum.FLASH_ATTN.get_class()
    assert backend.__module__ == "vllm_bi_plugin.gpu_attention", backend
    assert issubclass(backend, fa.FlashAttentionBackend) and backend.get_name() == "FLASH_ATTN"
    builder, impl = backend.get_builder_cls(), backend.get_impl_cls()
    assert issubclass(builder, fa.FlashAttentionMetadataBuilder)
    support = builder.get_cudagraph_support(None, None)
    assert support is AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE, support
    ours = list(inspect.signature(builder.build).parameters)
    theirs = list(inspect.signature(fa.FlashAttentionMetadataBuilder.build).parameters)
    assert ours == theirs, ("build", ours, theirs)
    # vLLM's own resolution keeps its default FULL_AND_PIECEWISE for this support level
    # (NEVER, the backend's former declaration, drops it to PIECEWISE).
    from vllm.config.compilation import CompilationConfig, CompilationMode, CUDAGraphMode
    for level, want in ((support, "FULL_AND_PIECEWISE"), (AttentionCGSupport.NEVER, "PIECEWISE")):
        cfg = CompilationConfig(
            mode=CompilationMode.VLLM_COMPILE, cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE,
            splitting_ops=list(CompilationConfig._attention_ops),
        )
        got = cfg.resolve_cudagraph_mode_and_sizes(level, "FLASH_ATTN")
        assert got.name == want, (level, got)
    assert issubclass(impl, fa.FlashAttentionImpl)
    for name in ("__init__", "forward"):
        ours = list(inspect.signature(getattr(impl, name)).parameters)
        theirs = list(inspect.signature(getattr(fa.FlashAttentionImpl, name)).parameters)
        assert ours == theirs, (name, ours, theirs)
    assert list(inspect.signature(fa.FlashAttentionMetadata).parameters)[:7] == [
        "num_actual_tokens", "max_query_len", "query_start_loc", "max_seq_len", "seq_lens",
        "block_table", "slot_mapping",
    ]
    assert backend.get_kv_cache_shape(4, 16, 2, 8) == (4, 2, 16, 16)
    print("OK", report.summary())
    """
)


def _v26_env() -> dict[str, str]:
    srcs = [str(p) for p in sorted((REPO / "packages").glob("*/src"))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(V26_SITE), *srcs, env.get("PYTHONPATH", "")])
    return env


@pytest.mark.skipif(not V26_SITE.is_dir(), reason=f"needs vLLM 0.26's sources at {V26_SITE}")
def test_subclass_matches_vllm_0_26_flash_attn() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import vllm.v1.attention.backends.flash_attn, triton"],
        env=_v26_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if probe.returncode:
        pytest.skip(f"this interpreter cannot import vLLM 0.26 from {V26_SITE} (its deps)")
    run = subprocess.run(
        [sys.executable, "-c", _V26_CHECK], env=_v26_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert EXPECTED_LINE in run.stdout
