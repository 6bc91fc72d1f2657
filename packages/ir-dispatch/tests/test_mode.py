from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import ir_dispatch as ird
from ir_dispatch import mode


def test_context_manager_switches_and_restores() -> None:
    assert not ird.is_batch_invariant()
    with ird.batch_invariant():
        assert ird.is_batch_invariant()
        with ird.batch_invariant(False):
            assert not ird.is_batch_invariant()
        assert ird.is_batch_invariant()
    assert not ird.is_batch_invariant()


def test_context_restores_after_exception() -> None:
    with pytest.raises(RuntimeError), ird.batch_invariant():
        raise RuntimeError("boom")
    assert not ird.is_batch_invariant()


def test_process_default_and_thread_override() -> None:
    ird.set_batch_invariant(True)
    assert ird.is_batch_invariant()
    with ird.batch_invariant(False):
        assert not ird.is_batch_invariant()
    assert ird.is_batch_invariant()


def test_context_is_thread_local() -> None:
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, bool] = {}

    def worker() -> None:
        with ird.batch_invariant():
            inside.set()
            release.wait(5)
            seen["worker"] = ird.is_batch_invariant()

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main_while_worker_inside"] = ird.is_batch_invariant()
    release.set()
    t.join()
    assert seen == {"worker": True, "main_while_worker_inside": False}


def test_many_threads_each_see_their_own_mode() -> None:
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        want = n % 2 == 0
        with ird.batch_invariant(want):
            barrier.wait(5)
            for _ in range(200):
                if ird.is_batch_invariant() != want:
                    errors.append(f"thread {n}")
                    return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_new_threads_follow_the_process_default() -> None:
    ird.set_batch_invariant(True)
    seen: list[bool] = []
    t = threading.Thread(target=lambda: seen.append(ird.is_batch_invariant()))
    t.start()
    t.join()
    assert seen == [True]


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("0", False), ("", False), (" 2 ", True)]
)
def test_env_var_parsing(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", value)
    assert ird.reload_from_env() is expected


def test_env_var_garbage_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "yes")
    with pytest.raises(ValueError, match="VLLM_BATCH_INVARIANT='yes'"):
        mode.reload_from_env()


def test_env_var_read_at_import() -> None:
    code = "import ir_dispatch as i; print(i.is_batch_invariant())"
    env = dict(os.environ, VLLM_BATCH_INVARIANT="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"
