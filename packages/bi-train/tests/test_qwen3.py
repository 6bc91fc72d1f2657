"""A tiny random ``transformers`` Qwen3 under :func:`bi_train.patch_qwen3`.

Each sequence's logprobs must be bitwise the same scored alone, in right- and left-padded
batches and packed into one row; one AdamW step must give finite gradients close to a float64
reference model without hooks, bitwise equal over two runs; recording must show only
batch-invariant providers. Shapes are tiny because the attention and GEMM kernels run in
Triton's CPU interpreter.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import bi_train
import ir_dispatch as ird

transformers = pytest.importorskip("transformers", reason="needs bi-train[transformers]")

# 2 layers, hidden 64, 4 query / 2 KV heads of 16, vocab 128: a Qwen3 shape the interpreter
# runs in about a second per forward.
TINY: dict[str, Any] = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
    tie_word_embeddings=False, rope_theta=1e6,
)  # fmt: skip
LENGTHS = (7, 1 + 16, 38)  # one sequence crosses the interpreter's 32-key chunk
LAYOUTS = ("alone", "right_padded", "left_padded", "packed")


def _model(dtype: torch.dtype, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(**TINY)
    model = transformers.Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # peaked logits, like a trained model's
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.to(dtype)


@pytest.fixture(scope="module")
def model_bf16() -> Any:
    return _model(torch.bfloat16).eval()


@pytest.fixture(scope="module")
def sequences() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, TINY["vocab_size"], (n,), generator=gen) for n in LENGTHS]


def _seq_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return bi_train.token_logprobs(logits[:-1], ids[1:])


def score(model: Any, seqs: list[torch.Tensor], layout: str) -> list[torch.Tensor]:
    """Per-sequence logprobs of each next token, computed in ``layout``."""
    longest = max(len(s) for s in seqs)
    if layout == "alone":
        return [_seq_logprobs(model(s[None]).logits[0], s) for s in seqs]
    if layout == "packed":
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
        logits = model(ids, position_ids=pos).logits[0]
        bounds = torch.tensor([0, *LENGTHS]).cumsum(0).tolist()
        return [
            _seq_logprobs(logits[a:b], s) for a, b, s in zip(bounds, bounds[1:], seqs, strict=False)
        ]
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    spans = []
    for i, s in enumerate(seqs):
        beg = 0 if layout == "right_padded" else longest - len(s)
        ids[i, beg : beg + len(s)], mask[i, beg : beg + len(s)] = s, 1
        spans.append((beg, beg + len(s)))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes for left padding
    logits = model(ids, attention_mask=mask, position_ids=pos).logits
    return [
        _seq_logprobs(logits[i, a:b], s)
        for i, ((a, b), s) in enumerate(zip(spans, seqs, strict=True))
    ]


def _mismatches(got: list[torch.Tensor], want: list[torch.Tensor]) -> int:
    return sum(int((g != w).sum()) for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def bi_scores(model_bf16: Any, sequences: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    out = {}
    ctx = (torch.no_grad(), bi_train.patch_qwen3(model_bf16), bi_train.batch_invariant())
    with ctx[0], ctx[1], ctx[2], ird.recording() as rec:
        for layout in LAYOUTS:
            out[layout] = score(model_bf16, sequences, layout)
    return out, rec


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_logprobs_bitwise_equal_in_every_layout(bi_scores, layout: str) -> None:  # type: ignore[no-untyped-def]
    scores, _ = bi_scores
    assert _mismatches(scores[layout], scores["alone"]) == 0


def test_recording_shows_only_batch_invariant_providers(bi_scores) -> None:  # type: ignore[no-untyped-def]
    _, rec = bi_scores
    served = rec.providers()
    expected = {"linear", "rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul",
                "varlen_attention", "log_softmax"}  # fmt: skip
    assert expected <= set(served), served
    for op_name, providers in served.items():
        for provider in providers:
            impl = ird.get_op(op_name).impl(provider)
            assert impl.is_batch_invariant_on(ird.PlatformKind.CPU), (op_name, provider)
    assert served["varlen_attention"] == ["triton"]
    assert served["rms_norm"] != ["native"] and served["fused_add_rms_norm"] != ["native"]


def test_hooks_are_removed_on_exit(model_bf16: Any) -> None:
    before = model_bf16.config._attn_implementation
    with bi_train.patch_qwen3(model_bf16):
        assert model_bf16.config._attn_implementation == bi_train.ATTN_IMPLEMENTATION
    assert model_bf16.config._attn_implementation == before
    assert not any("forward" in m.__dict__ for m in model_bf16.modules())


def test_default_mode_layouts(model_bf16: Any, sequences: list[torch.Tensor]) -> None:
    """Without ``batch_invariant()``: record how many logprobs move with the layout.

    Torch's CPU GEMMs pick their blocking from M, so a batch-variant result is possible but not
    guaranteed at these tiny shapes; the counts are reported (``-rP``), and the unpatched
    ``transformers`` model (sdpa) is checked against itself the same way. Only the mode switch
    is asserted: default mode must use the native (batch-variant on CPU) GEMM.
    """
    with torch.no_grad(), bi_train.patch_qwen3(model_bf16), ird.recording() as rec:
        patched = {layout: score(model_bf16, sequences, layout) for layout in LAYOUTS}
    with torch.no_grad():
        plain = {layout: score(model_bf16, sequences, layout) for layout in LAYOUTS[:3]}
    counts = {f"patched/{k}": _mismatches(v, patched["alone"]) for k, v in patched.items()}
    counts |= {f"transformers/{k}": _mismatches(v, plain["alone"]) for k, v in plain.items()}
    print("default-mode mismatching logprobs (of", sum(LENGTHS) - len(LENGTHS), "):", counts)
    assert rec.providers()["linear"] == ["native"]


# ------------------------------------------------------------------------------ training
def _train_step(seed: int, seqs: list[torch.Tensor]) -> tuple[torch.Tensor, dict, dict]:
    model = _model(torch.float32, seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with bi_train.patch_qwen3(model), bi_train.batch_invariant():
        lps = score(model, seqs, "packed")
    loss = -torch.cat(lps).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _reference_grads(seed: int, seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(_model(torch.float32, seed)).double()
    model.set_attn_implementation("eager")
    loss = torch.zeros((), dtype=torch.float64)
    for s in seqs:
        logits = model(s[None]).logits[0]
        loss = loss - torch.log_softmax(logits[:-1], -1).gather(-1, s[1:, None]).sum()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_adamw_step_gradients_finite_close_to_float64_and_deterministic(
    sequences: list[torch.Tensor],
) -> None:
    loss, grads, params = _train_step(0, sequences)
    loss2, grads2, params2 = _train_step(0, sequences)
    ref = _reference_grads(0, sequences)
    assert torch.isfinite(loss)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        cos = torch.nn.functional.cosine_similarity(
            g.double().flatten(), ref[name].flatten(), dim=0
        )
        assert cos >= 0.999, (name, float(cos))
        assert torch.equal(g, grads2[name]), name
        assert torch.equal(params[name], params2[name]), name
    assert torch.equal(loss, loss2)
