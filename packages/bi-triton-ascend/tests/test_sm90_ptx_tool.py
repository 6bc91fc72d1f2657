"""bench/sm90_ptx.py compiles the paged attention for sm90 without a GPU and reads its loop.

Runs the tool in a child process (it turns the interpreter off for itself) and pins what it
found with Triton 3.6: only 3 stages with the block-table prefetch keep key loads in flight
(``cp.async.wait_group 2``); 2 stages wait for each tile's loads right after issuing them. A
Triton upgrade that changes either shows up here, before a GPU session is spent on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "sm90_ptx.py"
GLUON_PROBE = SCRIPT.with_name("probe_gluon_overlap.py")
GLUON_SPLIT = SCRIPT.with_name("gluon_split_decode.py")
GLUON_PREFILL = SCRIPT.with_name("gluon_prefill.py")


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


def _tool_rows(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Run the tool with ``args`` in a child process; its rows by launch name."""
    out = tmp_path / "rows.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return {row["launch"]: row for row in json.loads(out.read_text())}


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is not installed")
def test_only_three_stages_with_prefetch_pipeline_the_decode_loop(tmp_path: Path) -> None:
    rows = _tool_rows(tmp_path, "--queries", "1", "--stages", "2", "3", "--seqs", "4",
                      "--keys", "256")  # fmt: skip
    assert set(rows) == {"q1-s2", "q1-s2p", "q1-s3", "q1-s3p"}
    assert rows["q1-s3p"]["wait_groups"] == [0, 2]
    for name in ("q1-s2", "q1-s2p", "q1-s3"):
        assert rows[name]["wait_groups"] == [0], name
    for row in rows.values():
        assert "m64n64k16" in row["wgmma"]  # Hopper matrix instructions, 64-row warpgroups
        assert row["shared_bytes"] > 0


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is not installed")
def test_the_split_decode_kernel_keeps_its_partials_out_of_spills(tmp_path: Path) -> None:
    """Chunk-major partials: the split kernel's stores take no per-row addresses across its
    chunk loop (255 registers and 136 bytes of spills per thread before, 244 and none after)."""
    rows = _tool_rows(tmp_path, "--queries", "1", "--stages", "1", "--split", "--seqs", "1",
                      "--keys", "4096")  # fmt: skip
    split = rows["q1-s1-split"]
    if split["registers"] is None:
        pytest.skip("this Triton wheel ships no cuobjdump to read the cubin's resource usage")
    assert split["stack_bytes"] == 0
    assert split["registers"] < 255


def _script_report(tmp_path: Path, script: Path, *args: str) -> Any:
    """Run a Gluon bench script with ``args`` in a child process; the JSON it writes."""
    out = tmp_path / f"{script.stem}.json"
    subprocess.run(
        [sys.executable, str(script), *args, "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.read_text())


def _has_gluon_hopper() -> bool:
    try:
        from triton.experimental.gluon.language.nvidia import hopper
    except ImportError:
        return False
    return hasattr(hopper, "warpgroup_mma_wait")


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.skipif(not _has_gluon_hopper(), reason="this Triton has no Gluon Hopper MMA")
def test_gluon_overlaps_the_softmax_with_the_next_score_mma(tmp_path: Path) -> None:
    """What plain Triton 3.6 does not emit (a ``wgmma.wait_group 0`` follows every MMA), a Gluon
    key loop states: the next tile's score MMA is issued, the softmax's ``ex2`` runs while it
    is in flight, and only then does the loop wait (for all but the newest MMA group)."""
    report = _script_report(tmp_path, GLUON_PROBE)
    loop = report["loop"]
    first_mma = loop.index("wgmma.mma_async")
    assert loop[first_mma + 1] == "ex2.approx", loop  # softmax under the score MMA
    assert "wgmma.wait_group.sync.aligned 1" in loop[first_mma:], loop
    if report["registers"] is not None:
        assert report["stack_bytes"] == 0


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.skipif(not _has_gluon_hopper(), reason="this Triton has no Gluon Hopper MMA")
def test_the_gluon_split_decode_keeps_tiles_in_flight_in_two_programs_per_sm(
    tmp_path: Path,
) -> None:
    """``bench/gluon_split_decode.py`` compiled for sm90: its key loop waits for all but the
    newest tile group (``cp.async.wait_group 1``: one tile in flight while one is computed),
    where the Triton split kernel waits for every tile (``wait_group 0``, or no ``cp.async`` at
    one stage); it fits two programs per SM (shared memory, registers) and runs the Triton
    decode tiles' two matrix instructions."""
    report = _script_report(tmp_path, GLUON_SPLIT, "--compile-only")
    assert 1 in report["wait_groups"], report
    assert report["shared_bytes"] <= 227 * 1024 // 2 - 1024, report  # two programs per SM
    assert report["wgmma"] == ["m64n128k16", "m64n64k16"], report
    if report["registers"] is not None:
        assert report["stack_bytes"] == 0
        assert report["registers"] <= 255


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton's NVIDIA backend is not installed")
@pytest.mark.skipif(not _has_gluon_hopper(), reason="this Triton has no Gluon Hopper MMA")
def test_the_gluon_prefill_runs_the_softmax_under_the_next_score_mma(tmp_path: Path) -> None:
    """``bench/gluon_prefill.py`` compiled for sm90: in its key loop the next tile's score MMA
    is issued, the softmax's ``ex2`` runs while it is in flight, then the P·V MMA, then the
    wait; key tiles stay in flight (``cp.async.wait_group 1``); no spill."""
    report = _script_report(tmp_path, GLUON_PREFILL, "--compile-only")
    loop = ["wgmma.wait_group.sync.aligned 0", "wgmma.mma_async", "ex2.approx", "wgmma.mma_async",
            "wgmma.wait_group.sync.aligned 0"]  # fmt: skip
    order = report["order"]
    assert any(order[i : i + len(loop)] == loop for i in range(len(order))), order
    assert 1 in report["wait_groups"], report
    assert report["wgmma"] == ["m64n128k16", "m64n64k16"], report
    if report["registers"] is not None:
        assert report["stack_bytes"] == 0
