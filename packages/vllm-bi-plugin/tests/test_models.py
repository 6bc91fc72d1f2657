from __future__ import annotations

import json

import pytest

from vllm_bi_plugin import models


def test_default_shape_is_qwen3_0_6b_width() -> None:
    s = models.QWEN3_0_6B
    assert (s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim) == (1024, 16, 8, 128)
    assert s.num_layers >= 4 and s.intermediate_size == 3072
    assert models.Qwen3Shape(num_layers=2).name != s.name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be positive"),
        ({"num_layers": 2.0}, TypeError, "num_layers must be an int"),
        ({"num_heads": 12, "num_kv_heads": 8}, ValueError, "multiple of num_kv_heads"),
    ],
)
def test_bad_shape(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        models.Qwen3Shape(**kwargs)


def test_cache_dir_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VLLM_BI_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path


def test_writes_once_and_reuses(tmp_path) -> None:
    pytest.importorskip("transformers", reason="checkpoints are written with transformers")
    shape = models.Qwen3Shape(
        hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
        intermediate_size=96, vocab_size=128,
    )  # fmt: skip
    path = models.write_random_qwen3(tmp_path / "m", shape)
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 1
    assert config["model_type"] == "qwen3"
    weights = next(path.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert models.write_random_qwen3(tmp_path / "m", shape) == path
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(TypeError, match="shape must be a Qwen3Shape"):
        models.write_random_qwen3(tmp_path / "x", {"hidden_size": 64})  # type: ignore[arg-type]
