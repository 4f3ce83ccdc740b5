"""The local checkpoint store: a SQLite ledger beside the Parquet sink, with claims.

Runs on one sink overlap: each claims the episodes it is about to embed (table
``claims``, taken in one ``BEGIN IMMEDIATE`` transaction, so two runs never both get
one). Whether a claim's owner still lives is a kernel fact, not a timer: every live run
holds ``fcntl.flock`` on its own file in ``<state>.owners/``, and the kernel drops that
lock when the process dies, ``kill -9`` included. A claimer that finds the lock free
knows the owner is dead and takes its claims over at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import ConfigError, TargetError
from pipeline.files.sqlite_db import Database
from pipeline.interfaces.checkpoint import (
    CLAIM_WAIT_S,
    CheckpointStore,
    Holder,
    LiveRun,
    SinkHome,
    SourceSnapshot,
    StoredDeadLetter,
    check_claim_wait,
)
from pipeline.records import DeadLetter

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    plan_key TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    meta TEXT NOT NULL,
    report TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(plan_key, started_at);
CREATE TABLE IF NOT EXISTS shards (
    run_id TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    done_at TEXT NOT NULL,
    counts TEXT NOT NULL,
    PRIMARY KEY (run_id, shard_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    chunk_id TEXT PRIMARY KEY,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    text_sha256 TEXT,
    episode_id TEXT,
    position TEXT
);
CREATE TABLE IF NOT EXISTS live_runs (
    owner TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    command TEXT NOT NULL,
    selection TEXT NOT NULL,
    started_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    unit TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_owner ON claims(owner);
CREATE TABLE IF NOT EXISTS source_snapshots (
    source_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    basis TEXT NOT NULL,
    state TEXT NOT NULL,
    full_sweep INTEGER NOT NULL,
    nights_since_full INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    taken_at TEXT NOT NULL
);
"""
PAGE = 900


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(slots=True)
class SqliteCheckpointOptions:
    """``[checkpoint]`` options for ``kind = "sqlite"``."""

    path: str = ""  # default: <sink.path>/state.sqlite
    # How long an ingest or reindex waits for an episode another live run is embedding.
    claim_wait_s: float = CLAIM_WAIT_S

    def validate(self, prefix: str) -> None:
        """The wait must not be negative."""
        check_claim_wait(self.claim_wait_s, f"{prefix}.claim_wait_s")


class SqliteCheckpointStore(CheckpointStore):
    """Runs, shards and dead letters in one SQLite file; a flock guards the target."""

    Options = SqliteCheckpointOptions

    def __init__(
        self,
        path: Path,
        claim_wait_s: float = CLAIM_WAIT_S,
        read_only: bool = False,
        missing_ok: bool = False,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.db = Database(path, SCHEMA, read_only=read_only, missing_ok=missing_ok)
        columns = {r[1] for r in self.db.query("PRAGMA table_info(runs)")}
        if "owner" not in columns and not read_only:  # a ledger written before runs had owners
            with self.db.transaction() as conn:
                conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        self.owners_dir = path.with_name(path.name + ".owners")
        self.claim_wait_s = claim_wait_s
        self._owner: str | None = None
        self._owner_file: TextIO | None = None

    @classmethod
    def open(
        cls,
        options: SqliteCheckpointOptions,
        home: SinkHome,
        read_only: bool = False,
        missing_ok: bool = False,
    ) -> SqliteCheckpointStore:
        """Open ``options.path``, or ``state.sqlite`` in the sink's folder.

        ``read_only``: opened ``mode=ro`` and nothing is created; the file must exist unless
        ``missing_ok`` (then it reads as an empty ledger).
        """
        path = Path(options.path) if options.path else None
        if path is None and not home.where.get("folder"):
            raise ConfigError("checkpoint.path: required when the sink has no folder")
        path = path or Path(home.where["folder"]) / "state.sqlite"  # type: ignore[arg-type]
        return cls(path, options.claim_wait_s, read_only, missing_ok)

    # -- liveness ------------------------------------------------------------------
    def _lock_path(self, owner: str) -> Path:
        return self.owners_dir / (hashlib.sha256(owner.encode()).hexdigest()[:32] + ".lock")

    def _alive(self, owner: str) -> bool:
        """Whether ``owner``'s process still holds its flock (a dead one's file is removed)."""
        if owner == self._owner:
            return True
        path = self._lock_path(owner)
        try:
            fh = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return False
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            if not self.read_only:
                path.unlink(missing_ok=True)
            return False

    def register(self, owner: str, command: str, selection: str) -> None:
        """Hold a flock on this run's own file for as long as the process lives."""
        try:
            self.owners_dir.mkdir(parents=True, exist_ok=True)
            final = self._lock_path(owner)
            # Locked before it appears under its name: nobody can see it unlocked and
            # take this live run for a dead one.
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            fh = tmp.open("w", encoding="utf-8")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.write(f"{owner} {command} since {_now()}\n")
            fh.flush()
            os.replace(tmp, final)
        except OSError as exc:
            raise TargetError(f"cannot register the run in {self.owners_dir}: {exc}") from None
        self._owner, self._owner_file = owner, fh
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO live_runs VALUES (?, '', ?, ?, ?)",
                (owner, command, selection, _now()),
            )

    def _forget_dead(self, conn: Any, owners: Iterable[str]) -> None:
        for owner in owners:
            conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            conn.execute("DELETE FROM live_runs WHERE owner = ?", (owner,))

    def _holders(self, owners: set[str]) -> dict[str, Holder]:
        out = {o: Holder(o, "", "?") for o in owners}
        for o, run_id, command in self.db.query("SELECT owner, run_id, command FROM live_runs"):
            if o in owners:
                out[o] = Holder(o, run_id, command)
        return out

    def claim(self, units: Collection[str]) -> dict[str, Holder]:
        """Take free, own and dead runs' units in one transaction; return the rest's holders."""
        me = self._owner
        if me is None:
            raise TargetError("claim before register: a run must register first")
        wanted = list(dict.fromkeys(units))
        held: dict[str, str] = {}
        with self.db.transaction() as conn:
            alive: dict[str, bool] = {}
            for i in range(0, len(wanted), PAGE):
                page = wanted[i : i + PAGE]
                rows = conn.execute(
                    f"SELECT unit, owner FROM claims WHERE unit IN ({','.join('?' * len(page))})", page
                ).fetchall()
                for unit, owner in rows:
                    if owner == me:
                        continue
                    if owner not in alive:
                        alive[owner] = self._alive(owner)
                    if alive[owner]:
                        held[unit] = owner
            self._forget_dead(conn, [o for o, live in alive.items() if not live])
            now = _now()
            conn.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                [(u, me, now) for u in wanted if u not in held],
            )
        holders = self._holders(set(held.values())) if held else {}
        return {u: holders[o] for u, o in held.items()}

    def release_claims(self, units: Collection[str]) -> None:
        """Delete this run's claims on ``units``."""
        if self._owner is None or not units:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM claims WHERE unit = ? AND owner = ?", [(u, self._owner) for u in units]
            )

    def unregister(self) -> None:
        """Drop every claim, the live-run row and the flock."""
        owner, fh = self._owner, self._owner_file
        if owner is None:
            return
        try:
            with self.db.transaction() as conn:
                self._forget_dead(conn, [owner])
        finally:
            self._owner, self._owner_file = None, None
            if fh is not None:
                self._lock_path(owner).unlink(missing_ok=True)
                fh.close()  # closing drops the flock

    def live_runs(self) -> list[LiveRun]:
        """Live runs and their claims; rows left by dead runs are cleaned up on the way."""
        rows = self.db.query("SELECT owner, run_id, command, selection, started_at FROM live_runs")
        dead = [r[0] for r in rows if not self._alive(r[0])]
        if dead and not self.read_only:  # a read-only look leaves the cleanup to the next run
            with self.db.transaction() as conn:
                self._forget_dead(conn, dead)
        claims: dict[str, list[str]] = {}
        for unit, owner in self.db.query("SELECT unit, owner FROM claims ORDER BY unit"):
            claims.setdefault(owner, []).append(unit)
        return [
            LiveRun(owner=o, run_id=r, command=c, selection=sel, started_at=t, claims=claims.get(o, []))
            for o, r, c, sel, t in rows
            if o not in dead
        ]

    # -- runs ----------------------------------------------------------------------
    def find_resumable(self, plan_key: str) -> str | None:
        """Take over the newest unfinished run with this key whose process is gone."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT run_id, status, owner FROM runs WHERE plan_key = ? ORDER BY started_at DESC",
                (plan_key,),
            ).fetchall()
            for run_id, status, owner in rows:
                if status == "running" and owner and self._alive(owner):
                    continue  # a live run of the same work: this one starts its own
                if status == "completed":
                    return None
                conn.execute("UPDATE runs SET owner = ? WHERE run_id = ?", (self._owner, run_id))
                return str(run_id)
        return None

    def start_run(self, run_id: str, plan_key: str, command: str, meta: dict[str, Any]) -> None:
        """Insert the run, or mark a resumed one running again."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, plan_key, command, status, started_at, meta, owner) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                "status='running', finished_at=NULL, owner=excluded.owner",
                (run_id, plan_key, command, _now(), json.dumps(meta), self._owner),
            )
            conn.execute("UPDATE live_runs SET run_id = ? WHERE owner = ?", (run_id, self._owner))

    def done_shards(self, run_id: str) -> set[str]:
        """Shard ids marked done for this run."""
        return {r[0] for r in self.db.query("SELECT shard_id FROM shards WHERE run_id = ?", (run_id,))}

    def mark_shard_done(self, run_id: str, shard_id: str, counts: dict[str, int]) -> None:
        """Durably record a finished shard."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)",
                (run_id, shard_id, _now(), json.dumps(counts)),
            )

    def finish_run(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        """Record how the run ended."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, report = ? WHERE run_id = ?",
                (status, _now(), json.dumps(report, default=str), run_id),
            )

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """Newest runs first."""
        rows = self.db.query(
            "SELECT run_id, command, status, started_at, finished_at, report FROM runs "
            "ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "run_id": r[0],
                "command": r[1],
                "status": r[2],
                "started_at": r[3],
                "finished_at": r[4],
                "report": json.loads(r[5]) if r[5] else None,
            }
            for r in rows
        ]

    # -- source snapshots -------------------------------------------------------------
    def source_snapshot(self, source_key: str) -> SourceSnapshot | None:
        """The last completed whole-source run's snapshot of this source."""
        rows = self.db.query(
            "SELECT source_key, run_id, basis, state, full_sweep, nights_since_full, removed, taken_at "
            "FROM source_snapshots WHERE source_key = ?",
            (source_key,),
        )
        if not rows:
            return None
        r = rows[0]
        return SourceSnapshot(r[0], r[1], r[2], json.loads(r[3]), bool(r[4]), int(r[5]), int(r[6]), r[7])

    def save_source_snapshot(self, snapshot: SourceSnapshot) -> None:
        """Replace this source's snapshot (one row per source)."""
        s = snapshot
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO source_snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    s.source_key,
                    s.run_id,
                    s.basis,
                    json.dumps(s.state),
                    int(s.full_sweep),
                    s.nights_since_full,
                    s.removed,
                    s.taken_at,
                ),
            )

    # -- dead letters ----------------------------------------------------------------
    def add_dead_letters(self, run_id: str, letters: Iterable[DeadLetter]) -> None:
        """Upsert, keeping the first time each chunk failed."""
        now = _now()
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO dead_letters (chunk_id, field, reason, run_id, first_seen, last_seen, "
                "text_sha256, episode_id, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(chunk_id) DO UPDATE SET field=excluded.field, reason=excluded.reason, "
                "run_id=excluded.run_id, last_seen=excluded.last_seen, "
                "text_sha256=excluded.text_sha256, episode_id=excluded.episode_id, "
                "position=excluded.position",
                [
                    (d.chunk_id, d.field, d.reason, run_id, now, now, d.text_sha256, d.episode_id, d.position)
                    for d in letters
                ],
            )

    def _rows(self, sql_where: str, params: list[Any]) -> list[StoredDeadLetter]:
        rows = self.db.query(
            "SELECT chunk_id, field, reason, run_id, first_seen, last_seen, text_sha256, episode_id "
            f"FROM dead_letters {sql_where}",
            params,
        )
        return [StoredDeadLetter(*r) for r in rows]

    def dead_letters(self, chunk_ids: Iterable[str]) -> dict[str, StoredDeadLetter]:
        """Stored failures for these ids."""
        ids = list(chunk_ids)
        out: dict[str, StoredDeadLetter] = {}
        for i in range(0, len(ids), PAGE):
            page = ids[i : i + PAGE]
            for d in self._rows(f"WHERE chunk_id IN ({','.join('?' * len(page))})", page):
                out[d.chunk_id] = d
        return out

    def clear_dead_letters(self, chunk_ids: Iterable[str]) -> None:
        """Forget failures that are now fixed."""
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM dead_letters WHERE chunk_id = ?", [(c,) for c in chunk_ids])

    def list_dead_letters(self, limit: int | None = None) -> list[StoredDeadLetter]:
        """Newest failures first."""
        sql = "ORDER BY last_seen DESC, chunk_id" + (" LIMIT ?" if limit else "")
        return self._rows(sql, [limit] if limit else [])

    def count_dead_letters(self) -> int:
        """How many chunks are dead-lettered."""
        return int(self.db.query("SELECT COUNT(*) FROM dead_letters")[0][0])

    def close(self) -> None:
        """Unregister (if still registered) and close the database."""
        try:
            self.unregister()
        finally:
            self.db.close()
