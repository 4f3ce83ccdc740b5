"""The local checkpoint store: a SQLite ledger beside the Parquet sink, and a file lock.

The lock is ``fcntl.flock`` on a file: the kernel releases it when the process dies,
so a run killed with ``kill -9`` never leaves a stale lock behind, and a rerun can
start at once.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pipeline.checkpoint import CheckpointStore, SinkHome, StoredDeadLetter
from pipeline.errors import ConfigError, LockedError
from pipeline.files.sqlite_db import Database
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
    report TEXT
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
"""
PAGE = 900


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(slots=True)
class SqliteCheckpointOptions:
    """``[checkpoint]`` options for ``kind = "sqlite"``."""

    path: str = ""  # default: <sink.path>/state.sqlite


class SqliteCheckpointStore(CheckpointStore):
    """Runs, shards and dead letters in one SQLite file; a flock guards the target."""

    Options = SqliteCheckpointOptions

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = Database(path, SCHEMA)
        self._lock_file: TextIO | None = None

    @classmethod
    def open(cls, options: SqliteCheckpointOptions, home: SinkHome) -> SqliteCheckpointStore:
        """Open ``options.path``, or ``state.sqlite`` in the sink's folder."""
        if options.path:
            return cls(Path(options.path))
        if not home.folder:
            raise ConfigError("checkpoint.path: required when the sink has no folder")
        return cls(Path(home.folder) / "state.sqlite")

    # -- lock ----------------------------------------------------------------------
    def acquire(self, owner: str) -> None:
        """Take an exclusive flock, or say who holds it."""
        lock_path = self.path.with_suffix(".lock")
        fh = lock_path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise LockedError(
                f"{self.path.parent} is being written by another run ({holder}); "
                "wait for it to finish (the lock frees itself if that process dies)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{owner} since {_now()}\n")
        fh.flush()
        self._lock_file = fh

    def release(self) -> None:
        """Drop the flock."""
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- runs ----------------------------------------------------------------------
    def find_resumable(self, plan_key: str) -> str | None:
        """The newest run with this key, unless it completed."""
        rows = self.db.query(
            "SELECT run_id, status FROM runs WHERE plan_key = ? ORDER BY started_at DESC LIMIT 1",
            (plan_key,),
        )
        if rows and rows[0][1] != "completed":
            return str(rows[0][0])
        return None

    def start_run(self, run_id: str, plan_key: str, command: str, meta: dict[str, Any]) -> None:
        """Insert the run, or mark a resumed one running again."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, plan_key, command, status, started_at, meta) "
                "VALUES (?, ?, ?, 'running', ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                "status='running', finished_at=NULL",
                (run_id, plan_key, command, _now(), json.dumps(meta)),
            )

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
        """Release the lock (if still held) and close the database."""
        self.release()
        self.db.close()
