"""How the GPU scripts start engines per mode, and what TP > 1 engines get on top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_bi_plugin import modes


def test_modes_set_and_clear_the_switches() -> None:
    base = {"VLLM_BATCH_INVARIANT": "1", "VLLM_PLUGINS": "x", "KEEP": "1"}
    assert "VLLM_BATCH_INVARIANT" not in modes.mode_env("default", base)
    assert modes.mode_env("vllm-bi", base)["VLLM_PLUGINS"] == "none"
    plugin = modes.mode_env("plugin", base)
    assert plugin["VLLM_BATCH_INVARIANT"] == "1" and "VLLM_PLUGINS" not in plugin
    assert plugin["KEEP"] == "1"
    with pytest.raises(ValueError, match="mode='fast'"):
        modes.mode_env("fast", base)


def test_entry_point_folder_is_found_by_a_fresh_interpreter(tmp_path: Path) -> None:
    root = modes.write_entry_point(tmp_path)
    code = (
        "import importlib.metadata as m; "
        "print(sorted(e.value for e in m.entry_points(group='vllm.general_plugins')))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert modes.PLUGIN_ENTRY in out
    # Written twice (several runs in one temp root) it stays one distribution.
    modes.write_entry_point(tmp_path)
    assert len(list(tmp_path.glob("*.dist-info"))) == 1


def test_tp_env_puts_the_entry_point_on_the_path_of_plugin_children_only(tmp_path: Path) -> None:
    base = {"PYTHONPATH": "/src"}
    plugin = modes.tp_mode_env("plugin", tmp_path, base)
    assert plugin["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/src"]
    for mode in ("default", "vllm-bi"):
        env = modes.tp_mode_env(mode, tmp_path, base)
        assert env["PYTHONPATH"] == "/src", mode
    for env in (plugin, modes.tp_mode_env("default", tmp_path, base)):
        assert {k: env[k] for k in modes.TP_ENV} == modes.TP_ENV
        assert env["NCCL_NVLS_ENABLE"] == "0"  # NVLink multicast stays off on lent machines


def test_tp_engine_defaults_turn_the_allreduce_rms_fusion_off() -> None:
    assert modes.TP_ENGINE_DEFAULTS["compilation_config"]["pass_config"] == {
        "fuse_allreduce_rms": False
    }
