"""A small thread-safe SQLite wrapper shared by the local sink manifest and checkpoint store."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, TargetError


class Database:
    """One connection, serialised by a lock; WAL so readers never block on the writer."""

    def __init__(self, path: Path, schema: str, read_only: bool = False, missing_ok: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only and missing_ok and not path.exists():
            # Nothing to read yet: an empty database in memory (nothing is created on disk).
            self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._conn.executescript(schema)
            return
        if read_only:
            self._conn = self._open_read_only(path)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed ledger entry survives power loss, like the renamed files it describes.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(schema)
        except (sqlite3.Error, OSError) as exc:
            raise TargetError(f"cannot open {path}: {exc}") from None

    @staticmethod
    def _open_read_only(path: Path) -> sqlite3.Connection:
        """``mode=ro``: no table, journal or lock file is created; a missing file is an error.

        A WAL database whose writers all closed has no ``-wal`` file; opening it even
        ``mode=ro`` would create ``-wal`` and ``-shm`` beside it (or fail on a read-only
        folder). Then it is opened ``immutable``: with no ``-wal`` no one is writing, and a
        writer that starts meanwhile writes its ``-wal``, not the main file we read (the
        main file changes only at a checkpoint).
        """
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; check the path in the config (nothing was created)")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        wal = path.with_name(path.name + "-wal")
        if not wal.exists():
            uri += "&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise TargetError(f"cannot read {path}: {exc}") from None
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically; a SQLite failure leaves as a :class:`TargetError`."""
        if self.read_only:
            raise TargetError(f"{self.path}: opened read-only")
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                # On a full disk the rollback can fail too; the first error is the one to tell.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Fetch all rows of one statement."""
        with self._lock, self._errors():
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors as a message a user can act on, never a traceback."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            hint = ""
            if "full" in text or "disk I/O" in text:
                hint = (
                    ": free space on that disk (or point checkpoint.path at one with room), "
                    "then rerun the same command; it resumes where it stopped"
                )
            elif "readonly" in text or "read-only" in text:
                hint = ": the file or its folder is read-only for this user"
            raise TargetError(f"{self.path}: {text}{hint}") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
