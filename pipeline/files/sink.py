"""Writing vectors to a folder of Parquet files: one file per episode, plus a manifest.

Layout under ``path``::

    vectors/<episode>.parquet   chunk_id, episode_id, embedding, text_sha256,
                                model_fingerprint, instruction, embedded_at, run_id
    manifest.sqlite             chunk_id -> file that owns its vector (+ its state)

Updating some chunks rewrites only their episodes' files (read, merge by chunk id,
write a temp file, fsync, rename): a crash leaves the old file or the new one, never
half of one. The manifest says which file owns each chunk; it is committed after the
files are in place, so a row a file holds without owning it (a chunk moved to another
episode, mid-crash) is invisible to :func:`read_vectors`.

Overlapping runs may write one folder: each write (files and manifest together) holds
``fcntl.flock`` on ``manifest.lock``, so two writers never merge into one file at once.

Every write and delete first records the files it is about to touch in the manifest's
``pending`` table and clears them when done. A writer killed in between leaves them
listed: the next run (:meth:`ParquetSink.recover`, under the same lock) rewrites each
listed file with only the rows it owns, deletes files nobody owns and stale temp files.
So after a kill and a resume, any Parquet reader over ``vectors/`` (pyarrow.dataset,
DuckDB, Polars) sees exactly one row per chunk, the same rows :func:`read_vectors` returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.checkpoint import SinkHome
from pipeline.errors import ConfigError, TargetError
from pipeline.files.sqlite_db import Database
from pipeline.liveness import TMP_MARK, stale_temp_files
from pipeline.records import Chunk, StoredState, VectorRecord
from pipeline.sink import SearchOutcome, Sink, VectorQuery

MANIFEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS owner (
    chunk_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS owner_file ON owner(file);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (file TEXT PRIMARY KEY);
"""
LOOKUP_PAGE = 900  # SQLite's default limit on bound parameters is 999


def vector_schema(dimension: int) -> pa.Schema:
    """The schema of every vectors file."""
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("text_sha256", pa.string(), nullable=False),
            pa.field("model_fingerprint", pa.string(), nullable=False),
            pa.field("instruction", pa.string(), nullable=False),
            pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    )


def episode_file_name(episode_id: str) -> str:
    """A safe, readable, collision-free file name for an episode id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", episode_id)[:80].strip("._") or "episode"
    digest = hashlib.sha256(episode_id.encode("utf-8")).hexdigest()[:10]
    return f"{readable}-{digest}.parquet"


@dataclass(slots=True)
class ParquetSinkOptions:
    """``[sink]`` options for ``kind = "parquet"``."""

    path: str
    compression: str = "zstd"

    def validate(self, prefix: str) -> None:
        """The path must be set."""
        if not self.path.strip():
            raise ConfigError(f"{prefix}.path: must name an output folder")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ParquetSink(Sink):
    """Vectors in per-episode Parquet files with a SQLite ownership manifest."""

    Options = ParquetSinkOptions
    default_checkpoint = "sqlite"

    @classmethod
    def home(cls, options: ParquetSinkOptions) -> SinkHome:
        """The output folder; the SQLite ledger defaults to ``state.sqlite`` inside it."""
        return SinkHome(target=f"parquet:{options.path}", folder=options.path)

    def __init__(self, options: ParquetSinkOptions, dimension: int) -> None:
        self.options = options
        self.root = Path(options.path)
        self.vectors_dir = self.root / "vectors"
        try:
            self.vectors_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TargetError(f"sink.path: cannot create {self.vectors_dir}: {exc.strerror}") from None
        self.dimension = dimension
        self.schema = vector_schema(dimension)
        self.db = Database(self.root / "manifest.sqlite", MANIFEST_SCHEMA)
        with self.db.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', ?)", (str(dimension),))
        stored = int(self.db.query("SELECT value FROM meta WHERE key = 'dimension'")[0][0])
        if stored != dimension:
            self.db.close()
            raise ConfigError(
                f"sink.path: {self.root} holds {stored}-dimension vectors but model.dimension is "
                f"{dimension}; write to another sink.path (or delete that folder to start over)"
            )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the folder's write lock (other processes' writes wait; the kernel frees it on death)."""
        with (self.root / "manifest.lock").open("a", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield

    @classmethod
    def open(cls, options: ParquetSinkOptions, dimension: int) -> ParquetSink:
        """Create the folder and manifest if needed."""
        return cls(options, dimension)

    def describe(self) -> str:
        """The output folder."""
        return f"parquet:{self.options.path}"

    # ------------------------------------------------------------------ reading
    def _owners(self, chunk_ids: list[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for i in range(0, len(chunk_ids), LOOKUP_PAGE):
            page = chunk_ids[i : i + LOOKUP_PAGE]
            marks = ",".join("?" * len(page))
            for row in self.db.query(
                "SELECT chunk_id, file, episode_id, text_sha256, model_fingerprint, run_id "
                f"FROM owner WHERE chunk_id IN ({marks})",
                page,
            ):
                out[row[0]] = row[1:]
        return out

    def lookup(self, chunks: list[Chunk]) -> dict[str, StoredState]:
        """State from the manifest alone: no vector is read."""
        owners = self._owners([c.chunk_id for c in chunks])
        return {
            cid: StoredState(cid, sha, fp, run, episode_id=ep)
            for cid, (_file, ep, sha, fp, run) in owners.items()
        }

    def iter_states(self) -> Iterator[StoredState]:
        """Every owned chunk, in id order, paged so memory stays flat."""
        last = ""
        while True:
            rows = self.db.query(
                "SELECT chunk_id, text_sha256, model_fingerprint, run_id, episode_id FROM owner "
                "WHERE chunk_id > ? ORDER BY chunk_id LIMIT 5000",
                (last,),
            )
            if not rows:
                return
            for cid, sha, fp, run, ep in rows:
                yield StoredState(cid, sha, fp, run, episode_id=ep)
            last = rows[-1][0]

    def _read_file(self, name: str) -> pa.Table | None:
        path = self.vectors_dir / name
        if not path.exists():
            return None
        return pq.read_table(path, schema=self.schema)

    def _owned_ids(self, name: str) -> list[str]:
        return [r[0] for r in self.db.query("SELECT chunk_id FROM owner WHERE file = ?", (name,))]

    # ------------------------------------------------------------------ writing
    def _table(self, records: list[VectorRecord]) -> pa.Table:
        flat = np.ascontiguousarray(np.stack([r.embedding for r in records]), dtype=np.float32)
        if flat.shape[1] != self.dimension:
            raise TargetError(f"vector has {flat.shape[1]} dimensions, sink expects {self.dimension}")
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), self.dimension)
        return pa.Table.from_arrays(
            [
                pa.array([r.chunk_id for r in records], pa.string()),
                pa.array([r.episode_id for r in records], pa.string()),
                embedding,
                pa.array([r.text_sha256 for r in records], pa.string()),
                pa.array([r.model_fingerprint for r in records], pa.string()),
                pa.array([r.instruction for r in records], pa.string()),
                pa.array([r.embedded_at for r in records], pa.timestamp("us", tz="UTC")),
                pa.array([r.run_id for r in records], pa.string()),
            ],
            schema=self.schema,
        )

    def _replace_file(self, name: str, keep: pa.Table | None) -> None:
        """Atomically replace ``vectors/name`` with ``keep`` (or remove it when empty)."""
        path = self.vectors_dir / name
        if keep is None or keep.num_rows == 0:
            if path.exists():
                path.unlink()
                _fsync_dir(self.vectors_dir)
            return
        keep = keep.sort_by("chunk_id")
        tmp = path.with_name(f".{name}{TMP_MARK}{os.getpid()}")
        try:
            with tmp.open("wb") as fh:
                pq.write_table(keep, fh, compression=self.options.compression)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.vectors_dir)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _rewrite(self, name: str, new: pa.Table | None, drop: set[str]) -> None:
        """Merge ``new`` into file ``name``: drop replaced, disowned and ``drop`` rows."""
        old = self._read_file(name)
        parts: list[pa.Table] = []
        if old is not None and old.num_rows:
            owned = set(self._owned_ids(name)) - drop
            if new is not None:
                owned -= set(new["chunk_id"].to_pylist())
            mask = pc.is_in(old["chunk_id"], pa.array(sorted(owned), pa.string()))
            parts.append(old.filter(mask))
        if new is not None:
            parts.append(new)
        self._replace_file(name, pa.concat_tables(parts) if parts else None)

    def write(self, records: list[VectorRecord]) -> int:
        """Upsert vectors: files first, then the manifest, then drop moved chunks' old rows."""
        if not records:
            return 0
        with self._exclusive():
            return self._write(records)

    def _write(self, records: list[VectorRecord]) -> int:
        latest: dict[str, VectorRecord] = {}
        for r in records:
            if not np.isfinite(r.embedding).all():
                raise TargetError(f"refusing to write a non-finite vector for chunk {r.chunk_id}")
            latest[r.chunk_id] = r
        by_file: dict[str, list[VectorRecord]] = defaultdict(list)
        for r in latest.values():
            by_file[episode_file_name(r.episode_id)].append(r)
        previous = self._owners(list(latest))
        moved: dict[str, set[str]] = defaultdict(set)
        for cid, (old_file, *_rest) in previous.items():
            if old_file != episode_file_name(latest[cid].episode_id):
                moved[old_file].add(cid)
        self._set_pending([*by_file, *moved])
        for name, recs in by_file.items():
            self._rewrite(name, self._table(recs), drop=set())
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO owner (chunk_id, file, episode_id, text_sha256, model_fingerprint, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(chunk_id) DO UPDATE SET file=excluded.file, "
                "episode_id=excluded.episode_id, text_sha256=excluded.text_sha256, "
                "model_fingerprint=excluded.model_fingerprint, run_id=excluded.run_id",
                [
                    (
                        r.chunk_id,
                        episode_file_name(r.episode_id),
                        r.episode_id,
                        r.text_sha256,
                        r.model_fingerprint,
                        r.run_id,
                    )
                    for r in latest.values()
                ],
            )
            # Those files now hold exactly the rows they own.
            conn.executemany("DELETE FROM pending WHERE file = ?", [(n,) for n in by_file if n not in moved])
        for name, ids in moved.items():
            self._rewrite(name, None, drop=ids)
        self._clear_pending(moved)
        return len(latest)

    # ------------------------------------------------------------------ crash repair
    def _set_pending(self, names: Iterable[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO pending VALUES (?)", [(n,) for n in names])

    def _clear_pending(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            with self.db.transaction() as conn:
                conn.executemany("DELETE FROM pending WHERE file = ?", [(n,) for n in names])

    def recover(self) -> None:
        """Repair what a killed write or delete left: stray rows, unowned files, temp files.

        Under the folder's write lock: a live writer holds it from its first temp file to
        its last manifest commit, so whatever is pending, unowned or temporary now was left
        by a writer that died.
        """
        with self._exclusive():
            # Ours too: a write of this process holds the lock, so none is under way.
            for tmp in stale_temp_files(self.vectors_dir, ours_too=True):
                tmp.unlink(missing_ok=True)
            pending = [r[0] for r in self.db.query("SELECT file FROM pending ORDER BY file")]
            for name in pending:
                self._rewrite(name, None, drop=set())  # keeps only the rows the manifest gives it
            self._clear_pending(pending)
            owned = {r[0] for r in self.db.query("SELECT DISTINCT file FROM owner")}
            orphans = [f for f in self.vectors_dir.glob("*.parquet") if f.name not in owned]
            for f in orphans:  # e.g. left by a version without the pending list
                f.unlink(missing_ok=True)
            if orphans:
                _fsync_dir(self.vectors_dir)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Disown in the manifest first (atomic), then rewrite the files without them."""
        with self._exclusive():
            return self._delete(list(dict.fromkeys(chunk_ids)))

    def _delete(self, ids: list[str]) -> int:
        owners = self._owners(ids)
        if not owners:
            return 0
        by_file: dict[str, set[str]] = defaultdict(set)
        for cid, (name, *_rest) in owners.items():
            by_file[name].add(cid)
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM owner WHERE chunk_id = ?", [(c,) for c in owners])
            conn.executemany("INSERT OR IGNORE INTO pending VALUES (?)", [(n,) for n in by_file])
        for name, drop in by_file.items():
            self._rewrite(name, None, drop=drop)
        self._clear_pending(by_file)
        return len(owners)

    # ------------------------------------------------------------------ search
    def fingerprint_counts(self) -> dict[str, int]:
        """Stored vectors per fingerprint, from the manifest (see pipeline/files/search.py)."""
        from pipeline.files.search import fingerprint_counts

        return fingerprint_counts(self)

    def search(self, query: VectorQuery) -> SearchOutcome:
        """Exact search streamed over the vector files (see pipeline/files/search.py)."""
        from pipeline.files.search import search

        return search(self, query)

    def close(self) -> None:
        """Close the manifest."""
        self.db.close()


def read_vectors(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The current vectors under a Parquet sink folder: exactly one row per chunk.

    Rows a file holds without owning them (left by an interrupted move) are skipped.
    """
    root = Path(path)
    manifest = root / "manifest.sqlite"
    if not manifest.exists():
        raise TargetError(f"{root} holds no podembed vectors (no manifest.sqlite)")
    db = Database(manifest, MANIFEST_SCHEMA)
    try:
        dimension = int(db.query("SELECT value FROM meta WHERE key = 'dimension'")[0][0])
        files = [r[0] for r in db.query("SELECT DISTINCT file FROM owner ORDER BY file")]
        wanted = None if columns is None else list(dict.fromkeys(["chunk_id", *columns]))
        tables = []
        for name in files:
            ids = db.query("SELECT chunk_id FROM owner WHERE file = ?", (name,))
            owned = pa.array([r[0] for r in ids], pa.string())
            table = pq.read_table(root / "vectors" / name, columns=wanted)
            tables.append(table.filter(pc.is_in(table["chunk_id"], owned)))
    finally:
        db.close()
    if not tables:
        schema = vector_schema(dimension)
        return schema.empty_table() if wanted is None else schema.empty_table().select(wanted)
    return pa.concat_tables(tables)
