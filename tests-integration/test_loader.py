"""The plugin as vLLM loads it: from installed metadata, through vLLM's own loader."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

from e2e_config import child_env

# Runs in a fresh interpreter: records vLLM's hook points, lets vLLM load its plugins, and
# reports what changed. Nothing here calls the plugin directly.
PROBE = textwrap.dedent(
    """
    import json, sys
    import ir_dispatch
    from vllm import ir
    from vllm.model_executor.determinism import batch_invariant as bi
    from vllm.model_executor.layers import linear, layernorm, utils, vocab_parallel_embedding
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    watched = {
        "bi.enable_batch_invariant_mode": lambda: bi.enable_batch_invariant_mode,
        "utils.dispatch_cpu_unquantized_gemm": lambda: utils.dispatch_cpu_unquantized_gemm,
        "linear.linear_batch_invariant": lambda: linear.linear_batch_invariant,
        "vocab.linear_batch_invariant": lambda: vocab_parallel_embedding.linear_batch_invariant,
        "layernorm.rms_norm_batch_invariant": lambda: layernorm.rms_norm_batch_invariant,
        "platform.get_default_ir_op_priority": lambda: type(current_platform).__dict__.get(
            "get_default_ir_op_priority"),
    }
    before = {k: get() for k, get in watched.items()}
    attn_before = AttentionBackendEnum.CPU_ATTN.get_path()
    mode_before = ir_dispatch.is_batch_invariant()

    from vllm.plugins import load_general_plugins
    load_general_plugins()

    import vllm_bi_plugin
    from vllm_bi_plugin import _patch
    report = vllm_bi_plugin.installed()
    if report is not None:  # the worker hook vLLM calls from init_batch_invariance
        bi.init_batch_invariance()
    print(json.dumps({
        "loaded": "vllm_bi_plugin.plugin" in sys.modules,
        "installed": None if report is None else report.summary(),
        "changed": sorted(k for k, get in watched.items() if get() is not before[k]),
        "patches": [p.where for p in _patch.applied()],
        "attention": [attn_before, AttentionBackendEnum.CPU_ATTN.get_path()],
        "ir_providers": sorted(ir.ops.rms_norm.impls),
        "mode": [mode_before, ir_dispatch.is_batch_invariant()],
        "overrides": ir_dispatch.installed_overrides(),
    }))
    """
)


def _probe(batch_invariant: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=child_env(batch_invariant),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_is_in_installed_metadata() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("batch_invariant") == "vllm_bi_plugin.plugin:register"


def test_vllm_loader_installs_the_plugin() -> None:
    r = _probe(True)
    assert r["loaded"] and r["installed"] is not None
    assert "batch-invariant mode on cpu" in r["installed"]
    assert set(r["changed"]) >= {
        "bi.enable_batch_invariant_mode",
        "utils.dispatch_cpu_unquantized_gemm",
        "platform.get_default_ir_op_priority",
    }
    assert r["attention"][1] == "vllm_bi_plugin.cpu_attention.BatchInvariantCPUAttentionBackend"
    assert "vllm_bi" in r["ir_providers"]
    assert r["mode"][1] is True
    key, overloads = r["overrides"]
    assert key == "CPU" and {"mean.dim", "_log_softmax", "bmm"} <= set(overloads)


def test_switch_unset_patches_nothing() -> None:
    r = _probe(False)
    assert r["loaded"], "vLLM should still load the plugin (it then does nothing)"
    assert r["installed"] is None
    assert r["changed"] == [] and r["patches"] == []
    assert r["attention"][0] == r["attention"][1] and "vllm_bi_plugin" not in r["attention"][1]
    assert "vllm_bi" not in r["ir_providers"]
    assert r["mode"] == [False, False]
    assert r["overrides"] is None
