"""The GPU attention smoke's sizing: the needle length decides every engine's positions.

``gpu/attn_backend_smoke.py`` runs on an H100 only; what it derives from ``--needle-len``
(the model's positions, each engine's ``max_model_len``) and its argument checks run here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from script_module import load_script

SCRIPT = Path(__file__).resolve().parent / "gpu" / "attn_backend_smoke.py"


smoke = load_script(SCRIPT)


@pytest.mark.parametrize(
    ("needle_len", "positions"),
    [(6000, 8192), (8000, 8192), (8064, 12288), (16000, 16384), (32000, 32768), (32640, 36864)],
)
def test_positions_hold_the_needle_and_the_timed_decode(needle_len: int, positions: int) -> None:
    assert smoke.max_model_len_for(needle_len) == positions
    assert needle_len + 1 + smoke.DECODE_TOKENS <= positions
    assert smoke.engine_for(needle_len)["max_model_len"] == positions


def test_every_engine_keeps_the_fixed_kv_cache() -> None:
    engine = smoke.engine_for(32000)
    assert engine["kv_cache_memory_bytes"] == smoke.ENGINE["kv_cache_memory_bytes"]
    assert "max_model_len" not in smoke.ENGINE  # the needle length decides it, per run


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["--needle-len", "0"], "--needle-len"), (["--cases", "cold,warm"], "--cases")],
)
def test_bad_arguments_name_the_argument(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit):
        smoke.main(argv)
    assert named in capsys.readouterr().err


def test_a_non_positive_needle_is_refused() -> None:
    with pytest.raises(ValueError, match="needle_len"):
        smoke.max_model_len_for(0)
