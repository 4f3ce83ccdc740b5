"""Claims on the SQLite ledger, the claim counting of one run, and dead-process detection."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.engine.claims import Claims
from pipeline.engine.liveness import ProcessIdentity, current, is_dead, start_ticks
from pipeline.files.ledger import SqliteCheckpointStore
from pipeline.interfaces.checkpoint import Holder


def _store(tmp_path: Path, wait: float = 600.0) -> SqliteCheckpointStore:
    store = SqliteCheckpointStore(tmp_path / "state.sqlite", claim_wait_s=wait)
    store.claim_poll_s = 0.01
    return store


def test_sqlite_claims_are_exclusive_and_a_dead_owner_frees_them_at_once(tmp_path: Path) -> None:
    a, b = _store(tmp_path), _store(tmp_path)
    try:
        a.register("owner-a", "backfill", "all")
        a.start_run("run-a", "k", "backfill", {})
        assert a.claim(["e1", "e2"]) == {}
        b.register("owner-b", "ingest", "episode=e1")
        assert b.claim(["e1", "e3"]) == {"e1": Holder("owner-a", "run-a", "backfill")}
        live = {r.owner: r for r in b.live_runs()}
        assert live["owner-a"].claims == ["e1", "e2"] and live["owner-b"].claims == ["e3"]
        assert b.find_resumable("k") is None  # run-a's owner lives: never resumed under it

        a.release_claims(["e2"])
        assert b.claim(["e2"]) == {}
        # a dies without unregistering (its process ends: the kernel drops its flock).
        assert a._owner_file is not None
        a._owner_file.close()
        a._owner = None
        assert b.claim(["e1"]) == {}
        assert [r.owner for r in b.live_runs()] == ["owner-b"]
        assert b.find_resumable("k") == "run-a"  # taken over by b
        b.unregister()
        assert b.live_runs() == [] and b.db.query("SELECT COUNT(*) FROM claims")[0][0] == 0
        assert list(b.owners_dir.iterdir()) == []
    finally:
        a.close()
        b.close()


def test_a_run_killed_with_kill_9_is_dead_for_the_next_claimer(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib; from pipeline.files.ledger import SqliteCheckpointStore as S; "
        f"s = S(pathlib.Path({str(tmp_path / 'state.sqlite')!r})); s.register('victim', 'backfill', 'all'); "
        "s.claim(['e1']); print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        b = _store(tmp_path)
        b.register("owner-b", "ingest", "episode=e1")
        assert set(b.claim(["e1"])) == {"e1"}  # alive: held
        proc.kill()
        proc.wait()
        assert b.claim(["e1"]) == {}
        b.close()
    finally:
        proc.kill()
        proc.wait()


def test_claims_wait_for_a_holder_then_count_holds_per_shard(tmp_path: Path) -> None:
    a, b = _store(tmp_path), _store(tmp_path, wait=60.0)
    try:
        a.register("owner-a", "backfill", "all")
        b.register("owner-b", "ingest", "episode=e1")
        mine = Claims(a, wait=False)
        assert mine.take(["e1"]) == {} and mine.take(["e1", "e2"]) == {}  # e1 in two shards in flight
        mine.release(["e1", "e2"])  # the first shard with e1 is written; e1 is still held by the second
        assert set(Claims(b, wait=False).take(["e1", "e2"])) == {"e1"}
        waiter = Claims(b, wait=True)
        released = threading.Event()
        b_heartbeats = 0

        def beat() -> None:
            nonlocal b_heartbeats
            b_heartbeats += 1
            if b_heartbeats == 3:  # while b waits: the last shard with e1 is written
                mine.release(["e1"])
                released.set()

        b.heartbeat = beat  # type: ignore[method-assign]
        assert waiter.take(["e1"]) == {}
        assert released.is_set() and waiter.waited_s > 0

        # A bounded wait that runs out leaves the episode to its holder.
        c = _store(tmp_path, wait=0.05)
        c.register("owner-c", "ingest", "episode=e1")
        left = Claims(c, wait=True).take(["e1"])
        assert left == {"e1": Holder("owner-b", "", "ingest")}
        c.close()
    finally:
        a.close()
        b.close()


def test_is_dead_only_when_certain() -> None:
    me = current()
    assert me.pid == os.getpid() and me.start_ticks > 0
    assert not is_dead(me)
    proc = subprocess.Popen(["true"])
    proc.wait()
    gone = ProcessIdentity(me.host, proc.pid, me.boot_id, me.pid_ns, 12345)
    assert is_dead(gone)
    # A live process is alive; its PID with another start time (reused PID) is a dead one.
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ticks = start_ticks(live.pid)
        assert ticks
        assert not is_dead(ProcessIdentity(me.host, live.pid, me.boot_id, me.pid_ns, ticks))
        assert is_dead(ProcessIdentity(me.host, live.pid, me.boot_id, me.pid_ns, ticks + 1))
    finally:
        live.kill()
        live.wait()
    assert is_dead(ProcessIdentity(me.host, me.pid, me.boot_id, me.pid_ns, me.start_ticks + 1))
    # Another machine, another boot or another PID namespace: not ours to judge.
    assert not is_dead(ProcessIdentity("elsewhere", proc.pid, me.boot_id, me.pid_ns, 1))
    assert not is_dead(ProcessIdentity(me.host, proc.pid, "other-boot", me.pid_ns, 1))
    assert not is_dead(ProcessIdentity(me.host, proc.pid, me.boot_id, "pid:[1]", 1))
    assert ProcessIdentity.from_dict(me.to_dict()) == me and ProcessIdentity.from_dict("x") is None


def test_claim_wait_must_not_be_negative() -> None:
    from pipeline.errors import ConfigError
    from pipeline.files.ledger import SqliteCheckpointOptions
    from pipeline.toml_schema import from_table

    with pytest.raises(ConfigError, match=r"checkpoint\.claim_wait_s"):
        from_table(SqliteCheckpointOptions, {"claim_wait_s": -1.0}, "checkpoint")


def test_inside_modal_a_run_in_another_container_is_never_judged_dead_from_here(monkeypatch) -> None:
    """Modal containers may share hostname, boot id and PID namespace: "same host, process
    gone" proved nothing there (a live run in another container was taken for dead)."""
    import dataclasses

    monkeypatch.setenv("MODAL_TASK_ID", "ta-here")
    current.cache_clear()
    try:
        me = current()
        assert me.task_id == "ta-here"
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        for pid, ticks in ((proc.pid, 12345), (me.pid, me.start_ticks + 1)):
            elsewhere = dataclasses.replace(me, pid=pid, start_ticks=ticks, task_id="ta-other")
            assert not is_dead(elsewhere)  # same host, boot, namespace: still only the lease decides
            assert not is_dead(dataclasses.replace(elsewhere, task_id=""))  # recorded outside Modal
            # The same container: its processes are this kernel's view, a gone PID is dead.
            assert is_dead(dataclasses.replace(elsewhere, task_id="ta-here"))
        # The identity travels through the ledger.
        assert ProcessIdentity.from_dict(me.to_dict()) == me
    finally:
        current.cache_clear()


class _Clock:
    """A monotonic clock that moves only when the waiter waits (no real sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _ClockedStop(threading.Event):
    """A stop event whose wait advances the fake clock by the time asked for."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0.0
        return False


def test_the_claim_wait_is_one_budget_per_run_not_per_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19.3: with claim_wait_s = 3 an ingest of 4 shards waited 12 s (3 s per shard)."""
    import types

    import pipeline.engine.claims as claims_module

    clock = _Clock()
    monkeypatch.setattr(claims_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    holder, waiter_store = _store(tmp_path), _store(tmp_path, wait=3.0)
    waiter_store.claim_poll_s = 0.5
    try:
        holder.register("owner-a", "backfill", "all")
        waiter_store.register("owner-b", "ingest", "podcast=p")
        assert Claims(holder, wait=False).take(["e1", "e2", "e3", "e4"]) == {}
        waiter = Claims(waiter_store, wait=True, stop=_ClockedStop(clock))
        started = clock.now
        for shard_episodes in (["e1"], ["e2"], ["e3"], ["e4"]):  # one take per shard, as shard_work does
            assert set(waiter.take(shard_episodes)) == set(shard_episodes)  # left to the live holder
        assert clock.now - started == pytest.approx(3.0)
        assert waiter.waited_s == pytest.approx(3.0)
    finally:
        holder.close()
        waiter_store.close()
