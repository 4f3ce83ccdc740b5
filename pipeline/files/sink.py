"""Writing vectors to a folder as one Lance table: few large files, atomic versions, compaction.

Layout under ``path``::

    vectors.lance/          the table (Lance format): one row per current chunk
        data/*.lance        chunk_id, episode_id, embedding, text_sha256,
                            model_fingerprint, instruction, embedded_at, run_id
        _versions/          one manifest per committed version (the commit point)
        _indices/           the chunk_id B-tree; the ANN index `podembed index` builds
        _deletions/, _transactions/
    vectors.lock            the writers' lock (flock); readers never take it
    vectors.readers         readers hold a shared flock on it while they read a snapshot
    search/                 the exact-search matrix and ANN index of one version (`podembed index`)
    state.sqlite            the run ledger (pipeline/files/ledger.py)

Why a table format and not our own files: one Parquet file per episode meant ~364,000
files at 10M chunks, a rewrite and fsync per episode per write, and readers racing the
writer's renames. Lance gives what this sink needs, well kept and tested elsewhere:

- an upsert keyed on ``chunk_id`` (``merge_insert``) that commits atomically: a write is a
  new version or nothing, so a kill at any instruction leaves the old version or the new
  one; data files of a commit that never happened are never read and are removed later;
- a chunk moved to another episode is the same row updated: never two rows for one id;
- versions: a reader opens one and sees exactly it, however the writer moves, deletes or
  compacts meanwhile (issue 19.1);
- ``compact_files`` merges the small fragments each write adds into large ones, and a
  scalar index on ``chunk_id`` keeps lookups and upserts independent of the table's size;
- ``lance.dataset(path)`` is a ``pyarrow.dataset.Dataset``: DuckDB and Polars read it.

The state of every chunk (hash, fingerprint, run, episode) is read from the table itself
(no second store to keep in step with it). Overlapping runs may write one folder: each
write holds ``fcntl.flock`` on ``vectors.lock``. Old versions are deleted only while no
reader holds ``vectors.readers``, so a reader never finds its snapshot's files gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError, TargetError
from pipeline.files.legacy import read_legacy_vectors
from pipeline.files.schema import vector_schema
from pipeline.files.search import SEARCH_DIR, build_index, has_ann, prune_matrices, write_matrix
from pipeline.files.search import fingerprint_counts as search_counts
from pipeline.files.search import search as exact_or_ann_search
from pipeline.interfaces.checkpoint import SinkHome
from pipeline.interfaces.sink import IndexOutcome, SearchOutcome, Sink, VectorQuery
from pipeline.memory import release_free_memory
from pipeline.records import Chunk, StoredState, VectorRecord

log = logging.getLogger(__name__)

TABLE = "vectors.lance"
WRITE_LOCK = "vectors.lock"
READERS_LOCK = "vectors.readers"
LEGACY_DIR = "vectors"  # the per-episode layout of podembed before the table
LEGACY_MANIFEST = "manifest.sqlite"
ID_INDEX = "chunk_id_idx"
STATE_COLUMNS = ["chunk_id", "text_sha256", "model_fingerprint", "run_id", "episode_id"]
LOOKUP_PAGE = 4096
#: Compact once this many small fragments piled up (each write adds one).
COMPACT_AFTER_FRAGMENTS = 48
#: A compacted fragment holds up to this many rows (~770 MB at 768 dimensions): 10M chunks -> ~40 files.
TARGET_ROWS_PER_FRAGMENT = 262_144
#: Re-index chunk ids once this many rows are outside the B-tree (an upsert scans them).
REINDEX_AFTER_ROWS = 16_384


@dataclass(slots=True)
class ParquetSinkOptions:
    """``[sink]`` options for ``kind = "parquet"`` (a local folder; the table is Lance, see above)."""

    path: str
    compression: str = "zstd"  # kept for old configs; Lance chooses its own encodings

    def validate(self, prefix: str) -> None:
        """The path must be set."""
        if not self.path.strip():
            raise ConfigError(f"{prefix}.path: must name an output folder")


def _lance() -> Any:
    import lance  # imported lazily: loading a config must stay cheap

    return lance


def _table_dimension(dataset: Any) -> int:
    return int(dataset.schema.field("embedding").type.list_size)


def _is_legacy(root: Path) -> bool:
    return (root / LEGACY_MANIFEST).exists() and not (root / TABLE).exists()


@contextlib.contextmanager
def reader_snapshot(root: Path) -> Iterator[None]:
    """Hold a shared flock on ``vectors.readers`` (when present) while reading a snapshot.

    Opened read-only, so it works on a read-only copy and creates nothing; a writer deletes
    old versions' files only when it can take this lock exclusively.
    """
    fd = _hold_shared(root)
    try:
        yield  # without the file no writer ever ran here (or a copy): nothing can delete under us
    finally:
        if fd is not None:
            os.close(fd)


def _hold_shared(root: Path) -> int | None:
    try:
        fd = os.open(root / READERS_LOCK, os.O_RDONLY)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def open_snapshot(root: Path) -> Any | None:
    """The table's latest version (a ``lance.LanceDataset``), or ``None`` when none was written."""
    if not (root / TABLE / "_versions").exists():
        return None
    try:
        return _lance().dataset(str(root / TABLE))
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read {root / TABLE}: {exc}") from None


class ParquetSink(Sink):
    """Vectors in one Lance table under a local folder (``kind = "parquet"`` for old configs)."""

    Options = ParquetSinkOptions
    default_checkpoint = "sqlite"

    @classmethod
    def home(cls, options: ParquetSinkOptions) -> SinkHome:
        """The output folder; the SQLite ledger defaults to ``state.sqlite`` inside it."""
        return SinkHome(target=f"parquet:{options.path}", where={"folder": options.path})

    def __init__(
        self, options: ParquetSinkOptions, dimension: int, read_only: bool = False, missing_ok: bool = False
    ) -> None:
        self.options = options
        self.root = Path(options.path)
        self.table_path = self.root / TABLE
        self.dimension = dimension
        self.schema = vector_schema(dimension)
        self.read_only = read_only
        self._wrote = False
        self._since_compaction = 0
        if read_only:
            if not self.root.is_dir() and missing_ok:
                pass  # `plan` before the first run: an empty sink, and nothing is created
            elif not self.root.is_dir():
                raise ConfigError(
                    f"sink.path: {self.root} does not exist; check sink.path in the config "
                    "(nothing was created)"
                )
            if _is_legacy(self.root):
                raise ConfigError(
                    f"sink.path: {self.root} holds vectors in the per-episode layout of an older "
                    "podembed (vectors/ + manifest.sqlite); run `podembed backfill` once to move "
                    f"them into {TABLE} (nothing is re-embedded), then read again"
                )
        else:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / READERS_LOCK).touch(exist_ok=True)
            except OSError as exc:
                raise TargetError(f"sink.path: cannot create {self.root}: {exc.strerror}") from None
        self._reader_fd: int | None = None
        if read_only:
            # A reader keeps one snapshot from open to close: old versions' files stay meanwhile.
            self._reader_fd = _hold_shared(self.root)
        self._ds = open_snapshot(self.root)
        if self._ds is not None and _table_dimension(self._ds) != dimension:
            raise ConfigError(
                f"sink.path: {self.root} holds {_table_dimension(self._ds)}-dimension vectors but "
                f"model.dimension is {dimension}; write to another sink.path (or delete that folder "
                "to start over)"
            )
        if not read_only and _is_legacy(self.root):
            with self._exclusive():
                if _is_legacy(self.root):
                    self._migrate_legacy()

    @classmethod
    def open(
        cls, options: ParquetSinkOptions, dimension: int, read_only: bool = False, missing_ok: bool = False
    ) -> ParquetSink:
        """Create the folder if needed; ``read_only``: create nothing, and the folder must exist
        unless ``missing_ok`` (then it reads as empty)."""
        return cls(options, dimension, read_only, missing_ok)

    def describe(self) -> str:
        """The output folder."""
        return f"parquet:{self.options.path}"

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the folder's write lock (other processes' writes wait; the kernel frees it on death)."""
        if self.read_only:
            raise TargetError(f"{self.root}: opened read-only")
        with (self.root / WRITE_LOCK).open("a", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            self._ds = open_snapshot(self.root)  # another writer may have committed meanwhile
            yield

    @contextlib.contextmanager
    def writing(self) -> Iterator[Any | None]:
        """The latest version, under the write lock (for `podembed index`)."""
        with self._exclusive():
            yield self._ds

    def refresh(self) -> Any | None:
        """Re-open the latest version (after a commit made through :meth:`snapshot`'s object)."""
        self._ds = open_snapshot(self.root)
        return self._ds

    def after_index(self, version: int) -> None:
        """Drop what older versions left (their files, their matrices) if no reader needs them."""
        self._cleanup()

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> Any | None:
        """The version this sink reads (a writer's latest commit; a reader's opening version)."""
        return self._ds

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any | None]:
        """The version to read: a reader's own snapshot, or a writer's latest, kept while reading."""
        if self.read_only:
            yield self._ds
            return
        with reader_snapshot(self.root):
            yield open_snapshot(self.root)

    def _states(self, table: pa.Table) -> Iterator[StoredState]:
        cols = [table[c].to_pylist() for c in STATE_COLUMNS]
        for cid, sha, fp, run, ep in zip(*cols, strict=True):
            yield StoredState(cid, sha, fp, run, episode_id=ep)

    def lookup(self, chunks: list[Chunk]) -> dict[str, StoredState]:
        """State from the table's id index and metadata columns: no vector is read."""
        if not chunks:
            return {}
        ids = list(dict.fromkeys(c.chunk_id for c in chunks))
        out: dict[str, StoredState] = {}
        with self.reading() as ds:
            if ds is None:
                return {}
            for i in range(0, len(ids), LOOKUP_PAGE):
                # An Arrow expression, not SQL text: an id is data, whatever characters it holds.
                wanted = pc.field("chunk_id").isin(pa.array(ids[i : i + LOOKUP_PAGE], pa.string()))
                table = ds.to_table(columns=STATE_COLUMNS, filter=wanted)
                out.update((s.chunk_id, s) for s in self._states(table))
        return out

    def iter_states(self) -> Iterator[StoredState]:
        """Every stored chunk's state, streamed from one version (no vectors read)."""
        with self.reading() as ds:
            if ds is None:
                return
            for batch in ds.to_batches(columns=STATE_COLUMNS, batch_size=8192):
                yield from self._states(pa.Table.from_batches([batch]))

    def count(self) -> int:
        """Stored vectors (rows of the current version)."""
        with self.reading() as ds:
            return 0 if ds is None else int(ds.count_rows())

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

    def write(self, records: list[VectorRecord]) -> int:
        """Upsert vectors by chunk id in one atomic commit (then compact when due)."""
        if not records:
            return 0
        latest: dict[str, VectorRecord] = {}
        for r in records:
            if not np.isfinite(r.embedding).all():
                raise TargetError(f"refusing to write a non-finite vector for chunk {r.chunk_id}")
            latest[r.chunk_id] = r  # the last of a chunk delivered twice in one batch wins
        table = self._table(list(latest.values()))
        with self._exclusive():
            self._upsert(table)
            self._wrote = True
            self._since_compaction += 1
            if self._since_compaction >= COMPACT_AFTER_FRAGMENTS:
                self._maintain()
            else:
                self._reindex_if_due()
        return len(latest)

    def _upsert(self, table: pa.Table) -> None:
        lance = _lance()
        try:
            if self._ds is None:
                self._ds = lance.write_dataset(table, str(self.table_path), schema=self.schema, mode="create")
                self._ds.create_scalar_index("chunk_id", "BTREE", name=ID_INDEX)
                return
            self._ds.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all().execute(
                table
            )
            self._ds = lance.dataset(str(self.table_path))
        except OSError as exc:
            raise TargetError(f"cannot write {self.table_path}: {exc}") from None

    def _reindex_if_due(self) -> None:
        ds = self._ds
        if ds is None:
            return
        if not any(ix.name == ID_INDEX for ix in ds.describe_indices()):
            ds.create_scalar_index("chunk_id", "BTREE", name=ID_INDEX)
        elif ds.stats.index_stats(ID_INDEX)["num_unindexed_rows"] >= REINDEX_AFTER_ROWS:
            ds.optimize.optimize_indices(index_names=[ID_INDEX])
        else:
            return
        self._ds = _lance().dataset(str(self.table_path))

    def _maintain(self) -> None:
        """Compact small fragments, bring the id index up to date, delete unused old versions."""
        ds = self._ds
        if ds is None:
            return
        # Binary copy moves the encoded pages as they are instead of decoding every row and
        # encoding it again: compaction's peak memory halves (measured: 639 -> 310 MiB when
        # merging into a 270k-row fragment). Lance falls back to re-encoding when it must.
        ds.optimize.compact_files(
            target_rows_per_fragment=TARGET_ROWS_PER_FRAGMENT, compaction_mode="try_binary_copy"
        )
        ds = _lance().dataset(str(self.table_path))
        ds.optimize.optimize_indices()
        self._ds = _lance().dataset(str(self.table_path))
        self._since_compaction = 0
        self._cleanup()
        release_free_memory()  # compaction's buffers: give the pages back (pipeline/memory.py)

    def _cleanup(self) -> None:
        """Delete files no current version uses, unless a reader holds a snapshot now.

        Under the write lock no other commit is under way, so a file no version references
        is garbage (``delete_unverified``): e.g. data written by a writer killed before its
        commit. A busy reader only postpones this to the next write.
        """
        if self._ds is None:
            return
        fd = os.open(self.root / READERS_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            self._ds.cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)
            prune_matrices(self, keep=self._ds.version)
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Remove what a killed writer left: data files of commits that never happened.

        Nothing else can be half-done: a commit is atomic, so the table is the old version
        or the new one.
        """
        with self._exclusive():
            self._cleanup()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Delete these chunks' rows in one atomic commit."""
        ids = list(dict.fromkeys(chunk_ids))
        if not ids:
            return 0
        with self._exclusive():
            present = self.lookup([Chunk(cid, "", "") for cid in ids])
            if not present:
                return 0
            wanted = list(present)
            for i in range(0, len(wanted), LOOKUP_PAGE):
                page = pa.array(wanted[i : i + LOOKUP_PAGE], pa.string())
                self._delete_page(page)
            self._ds = _lance().dataset(str(self.table_path))
            self._wrote = True
            return len(present)

    def _delete_page(self, ids: pa.Array) -> None:
        # Lance's delete takes a SQL predicate: ids are quoted as SQL string literals here,
        # never interpolated raw (a quote in an id is doubled).
        literals = ",".join("'" + str(v).replace("'", "''") + "'" for v in ids.to_pylist())
        self._ds.delete(f"chunk_id IN ({literals})")

    # ------------------------------------------------------------------ legacy layout
    def _migrate_legacy(self) -> None:
        """Move the per-episode layout (vectors/*.parquet + manifest.sqlite) into the table.

        Only rows the old manifest owns are taken (exactly what the old reader returned);
        the old files are renamed, not deleted, so nothing is lost if the user wants them.
        """
        old = read_legacy_vectors(self.root)
        if old.num_rows:
            old = old.cast(self.schema)
            if _table_dimension_of(old) != self.dimension:
                raise ConfigError(
                    f"sink.path: {self.root} holds {_table_dimension_of(old)}-dimension vectors "
                    f"but model.dimension is {self.dimension}; write to another sink.path"
                )
            for i in range(0, old.num_rows, 65_536):
                self._upsert(old.slice(i, 65_536))
            self._maintain()
        kept = self.root / "legacy-layout"
        kept.mkdir(exist_ok=True)
        for name in (
            LEGACY_DIR,
            LEGACY_MANIFEST,
            f"{LEGACY_MANIFEST}-wal",
            f"{LEGACY_MANIFEST}-shm",
            "manifest.lock",
        ):
            if (self.root / name).exists():
                os.replace(self.root / name, kept / name)
        log.warning(
            "sink: moved %d vectors from the old per-episode layout into %s; the old files are in %s "
            "(delete them when you no longer need them)",
            old.num_rows,
            self.table_path,
            kept,
        )

    # ------------------------------------------------------------------ search
    def fingerprint_counts(self) -> dict[str, int]:
        """Stored vectors per fingerprint, counted from one column of one version."""
        return search_counts(self)

    def search(self, query: VectorQuery) -> SearchOutcome:
        """The ANN index when it covers this version, else exact (see pipeline/files/search.py)."""
        return exact_or_ann_search(self, query)

    def ensure_search_index(self, fields: Any) -> IndexOutcome:
        """Build the ANN index and the exact-search matrix for the current version."""
        return build_index(self)

    def close(self) -> None:
        """Compact what this process wrote (few large files for readers), then let go."""
        if self._wrote and not self.read_only:
            self._wrote = False
            had_matrix = any((self.root / SEARCH_DIR).glob("v*"))
            with self._exclusive():
                self._maintain()
                if had_matrix and self._ds is not None:
                    # The user asked for fast search (`podembed index`): keep the matrix, and
                    # the ANN index if one was built, current (the trained lists are reused).
                    write_matrix(self, self._ds, with_ann=has_ann(self))
                    self._cleanup()
        self._ds = None
        if self._reader_fd is not None:
            os.close(self._reader_fd)
            self._reader_fd = None


def _table_dimension_of(table: pa.Table) -> int:
    return int(table.schema.field("embedding").type.list_size)


def read_vectors(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The current vectors under a sink folder: exactly one row per chunk, from one version.

    Works on a read-only copy; creates nothing.
    """
    root = Path(path)
    if _is_legacy(root):
        return read_legacy_vectors(root, columns)
    with reader_snapshot(root):
        ds = open_snapshot(root)
        if ds is None:
            raise TargetError(f"{root} holds no podembed vectors (no {TABLE})")
        wanted = None if columns is None else list(dict.fromkeys(["chunk_id", *columns]))
        return ds.to_table(columns=wanted)
