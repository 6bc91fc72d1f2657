"""The ``all_reduce`` op across real processes: CPU ranks over gloo, 2 and 4 of them.

Each world size is one spawn: every rank runs all the checks and saves what it computed, and
the test compares in the parent, where the TP=1 references are computed. Inputs come from seeds
so the parent can rebuild each rank's tensors.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

import ir_dispatch as ird
from ir_dispatch import tp

if not torch.distributed.is_available():  # pragma: no cover - torch builds without c10d
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)

JOIN_TIMEOUT_S = 90
# A row-parallel layer: Qwen3-0.6B-like proportions, shrunk for 2 CPU cores.
M, K, N = 7, 256, 96
PROBE_BATCHES = (1, 2, 3, 15, 16, 17, 63, 64, 65)
# Native control: a 64-wide row all-reduced alone and inside batches of growing message size.
CONTROL_WIDTH = 64
CONTROL_BATCHES = (1, 3, 17, 65, 257)


def _gathered_input(rank: int) -> torch.Tensor:
    """Rank ``rank``'s input of the plain all-reduce check: odd shape, magnitudes 1e-3..1e3."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(5, 33, generator=g) * 10.0 ** torch.randint(-3, 4, (5, 33), generator=g)


def _layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
    w = (torch.randn(N, K, generator=g) / 16).to(torch.bfloat16)
    bias = torch.randn(N, generator=g).to(torch.bfloat16)
    return x, w, bias


def _probe_batch(batch: int, position: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    probe = torch.randn(1, K, generator=g)
    others = torch.randn(batch, K, generator=g)
    return torch.cat([others[:position], probe, others[position + 1 :]]).to(torch.bfloat16)


def _row_parallel(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, group_name: str) -> Any:
    """This rank's share of ``x @ w.T + bias``, all-reduced by the op; bias added once, after."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    shard = K // world
    cols = slice(rank * shard, (rank + 1) * shard)
    partial = tp.local_row_parallel_partial(x[:, cols], w[:, cols], world)
    return (ird.ops.all_reduce(partial, group_name) + bias.float()).to(x.dtype)


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    name = torch.distributed.group.WORLD.group_name  # type: ignore[union-attr]
    result: dict[str, Any] = {}
    x_ar = _gathered_input(rank)
    x, w, bias = _layer()
    with ird.batch_invariant(), ird.recording() as rec:
        result["all_reduce"] = ird.ops.all_reduce(x_ar, name)
        result["all_reduce_transposed"] = ird.ops.all_reduce(x_ar.t(), name)
        result["tp_helper"] = tp.fixed_order_all_reduce(x_ar)
        result["row_parallel"] = _row_parallel(x, w, bias, name)
        result["probe_rows"] = {
            (batch, pos): _row_parallel(_probe_batch(batch, pos), w, bias, name)[pos]
            for batch in PROBE_BATCHES
            for pos in sorted({0, batch // 2, batch - 1})
        }
        compiled = torch.compile(
            ird.ops.collectives.fixed_order_all_reduce, backend="aot_eager", fullgraph=True
        )
        result["compiled"] = compiled(x_ar, name)
    result["providers"] = rec.providers()
    # Control: the native all-reduce (default mode) on batches of growing message size.
    g = torch.Generator().manual_seed(200 + rank)
    rows = torch.randn(max(CONTROL_BATCHES), CONTROL_WIDTH, generator=g)
    rows = rows * 10.0 ** torch.randint(-3, 4, rows.shape, generator=g)
    result["native_probe"] = [ird.ops.all_reduce(rows[:b], name)[0] for b in CONTROL_BATCHES]
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _spawn(world: int, tmp_path: Path) -> list[dict[str, Any]]:
    """Run :func:`_worker` on ``world`` gloo ranks; fail (not hang) after ``JOIN_TIMEOUT_S``."""
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, world, str(tmp_path / "rendezvous"), str(tmp_path)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    if hung:
        pytest.fail(f"ranks {hung} of {world} did not finish within {JOIN_TIMEOUT_S} s")
    codes = [p.exitcode for p in procs]
    if any(codes):
        pytest.fail(f"rank exit codes {codes} (world {world}); see the captured stderr")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world: int = request.param
    return world, _spawn(world, tmp_path_factory.mktemp(f"gloo{world}"))


def test_fixed_order_all_reduce_same_bits_on_every_rank(ranks: Any) -> None:
    world, results = ranks
    inputs = [_gathered_input(r) for r in range(world)]
    expected = tp.tree_sum(inputs)
    for rank, res in enumerate(results):
        assert res["providers"]["all_reduce"] == ["fixed_order"], rank
        for key in ("all_reduce", "tp_helper", "compiled"):
            assert torch.equal(res[key], expected), (rank, key)
        assert torch.equal(res["all_reduce_transposed"], tp.tree_sum([i.t() for i in inputs]))
    exact = torch.stack(inputs).double().sum(0)
    torch.testing.assert_close(expected.double(), exact, rtol=1e-6, atol=1e-6)


def test_row_parallel_over_ranks_equals_tp1(ranks: Any) -> None:
    world, results = ranks
    x, w, bias = _layer()
    with ird.batch_invariant():
        reference = tp.row_parallel_linear(x, w, bias)
    for rank, res in enumerate(results):
        assert torch.equal(res["row_parallel"], reference), (world, rank)


def test_probe_row_is_batch_invariant_across_ranks(ranks: Any) -> None:
    world, results = ranks
    _, w, bias = _layer()
    with ird.batch_invariant():
        alone = tp.row_parallel_linear(_probe_batch(1, 0), w, bias)[0]
    for rank, res in enumerate(results):
        for (batch, pos), row in res["probe_rows"].items():
            assert torch.equal(row, alone), (world, rank, batch, pos)


def test_native_gloo_all_reduce_is_batch_variant_on_four_ranks(ranks: Any) -> None:
    """The control: gloo's own order moves with the message size (with 3+ ranks)."""
    world, results = ranks
    rows = results[0]["native_probe"]
    if world == 2:
        # Two terms commute exactly, so any order gives the same bits.
        assert all(torch.equal(r, rows[0]) for r in rows)
        return
    assert not all(torch.equal(r, rows[0]) for r in rows), "gloo gave one order for every size"
