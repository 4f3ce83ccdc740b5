"""Reading chunks from Parquet files, streamed by row group.

Shards are runs of consecutive row groups (about ``window_chunks`` rows each), so a
shard is a stable, cheap locator: re-reading it after a crash reads the same rows.
A row group larger than a window (pyarrow and pandas write up to a million rows in
one) is cut into row ranges of about a window each, so a kill never loses more than
a window of work whatever the file's layout. Only the mapped columns are read;
filters prune row groups by their statistics before any data is decoded.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import FieldMap
from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError, SourceError
from pipeline.interfaces.source import ChangePlan, Source
from pipeline.records import RawRecord, ShardSpec

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 1024
REQUIRED = ("chunk_id", "episode_id", "text")


def _nested(tp: pa.DataType) -> bool:
    """List, struct, map or union: never a chunk id, an episode id or a text."""
    return pa.types.is_nested(tp) or pa.types.is_union(tp)


@dataclass(slots=True)
class ParquetSourceOptions:
    """``[source]`` options for ``kind = "parquet"``."""

    path: str  # a .parquet file, a folder of them, or a glob

    def validate(self, prefix: str) -> None:
        """The path must be set."""
        if not self.path.strip():
            raise ConfigError(f"{prefix}.path: must name a Parquet file or folder")


FOOTER_TAIL = 8  # a Parquet file ends with the footer's length (4 bytes) and "PAR1"


def file_fingerprint(f: Path) -> list[Any]:
    """``[size, mtime_ns, footer sha256, rows]``: what the format records of a file's content.

    The footer holds every row group's row count, byte sizes, offsets and column-chunk
    statistics, so a rewrite that changes any row changes its hash even when size and
    modification time were restored. Stat first: a file rewritten after this call has a
    newer mtime and is read again next time.
    """
    st = f.stat()
    with f.open("rb") as fh:
        fh.seek(max(0, st.st_size - FOOTER_TAIL))
        tail = fh.read(FOOTER_TAIL)
        length = int.from_bytes(tail[:4], "little") if len(tail) == FOOTER_TAIL else 0
        fh.seek(max(0, st.st_size - FOOTER_TAIL - length))
        footer = fh.read(length + FOOTER_TAIL)
    return [st.st_size, st.st_mtime_ns, hashlib.sha256(footer).hexdigest()[:32], None]


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return _folder_files(p)
    if p.is_file():
        return [p]
    matches = sorted(Path(m) for m in glob.glob(path, recursive=True))
    return [f for m in matches for f in (_folder_files(m) if m.is_dir() else [m] if _usable(m) else [])]


def _folder_files(folder: Path) -> list[Path]:
    """The Parquet files under ``folder``, as ``pyarrow.dataset`` reads a folder.

    A folder named ``*.parquet`` (a dataset written by Spark or ``pyarrow.dataset``:
    ``part-*.parquet`` beside ``_SUCCESS`` and ``.crc`` files) is read through its parts.
    Names starting with ``.`` or ``_`` are skipped at any depth (hidden files, ``.crc``,
    ``_SUCCESS``, ``_metadata``, and Spark's unfinished ``_temporary/`` output).
    """
    found: list[Path] = []
    for q in sorted(folder.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in q.relative_to(folder).parts):
            continue
        if _usable(q):
            found.append(q)
    return found


def _usable(q: Path) -> bool:
    """A regular file (or a link to one), judged by ``stat`` alone: a FIFO named ``.parquet``
    would block the first read forever, so nothing but a regular file is ever opened."""
    try:
        mode = q.stat().st_mode
    except OSError as exc:  # a broken symlink, a file removed meanwhile, no permission
        log.warning("source.path: skipping %s: %s", q, exc.strerror or exc)
        return False
    if stat.S_ISDIR(mode):  # a dataset folder: its part files are listed by the walk
        if not any(q.rglob("*.parquet")):
            log.warning("source.path: skipping %s: a folder with no Parquet files in it", q)
        return False
    if not stat.S_ISREG(mode):
        log.warning("source.path: skipping %s: not a regular file (a FIFO, socket or device)", q)
        return False
    return True


class ParquetSource(Source):
    """Chunks from one or more Parquet files."""

    Options = ParquetSourceOptions

    def __init__(self, options: ParquetSourceOptions, fields: FieldMap, window_chunks: int) -> None:
        self.options = options
        self.fields = fields
        self.window = window_chunks
        self.files = _files(options.path)
        if not self.files:
            raise SourceError(
                f"source.path: no Parquet files at {options.path!r}; "
                "check the path (relative paths start from the current folder)"
            )
        self.mapping: dict[str, str] = {}  # our name -> column
        self._meta: dict[Path, pq.FileMetaData] = {}
        self._row_starts: dict[Path, list[int]] = {}  # first row of each row group, for messages
        self._ids: pa.Array | None = None
        # (file, row group) -> its decoded columns, while its row ranges are being read.
        self._group_cache: tuple[tuple[Path, int], pa.Table] | None = None
        self._cache_lock = threading.Lock()
        #: Files whose id, episode or text column has a nested type: their rows are dead-lettered.
        self.wrong_type: dict[Path, str] = {}
        #: Each file's fingerprint as of opening (see file_fingerprint), for the next run.
        self._fingerprints: dict[str, list[Any]] = {}
        for f in self.files:
            try:
                fingerprint = file_fingerprint(f)
                meta = pq.read_metadata(f)
                arrow_schema = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(
                    f"source.path: {f} is not a readable Parquet file ({exc}); fix it, or move it "
                    "out of the source folder (its chunks would otherwise count as removed)"
                ) from None
            self._meta[f] = meta
            fingerprint[3] = meta.num_rows
            self._fingerprints[os.fspath(f)] = fingerprint
            starts = [0]
            for rg in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(rg).num_rows)
            self._row_starts[f] = starts
            # Top-level names: a list or struct column's leaves have other names in the footer.
            names = set(arrow_schema.names)
            for ours, theirs in fields.mapped().items():
                if theirs in names:
                    self.mapping.setdefault(ours, theirs)
                    tp = arrow_schema.field(theirs).type
                    if ours in REQUIRED and _nested(tp) and f not in self.wrong_type:
                        self.wrong_type[f] = (
                            f"source.fields.{ours}: column {theirs!r} in {f} has type {tp}, "
                            f"not strings; map source.fields.{ours} to a column of plain values"
                        )
                elif ours in REQUIRED:
                    raise SourceError(
                        f"source.fields.{ours}: column {theirs!r} not found in {f} "
                        f"(columns: {', '.join(sorted(names))}); set source.fields.{ours}"
                    )
        if self.wrong_type and len(self.wrong_type) == len(self.files):
            raise SourceError(next(iter(self.wrong_type.values())))
        for problem in self.wrong_type.values():
            log.warning("%s; the file's rows are dead-lettered, the other files are read", problem)

    @classmethod
    def open(cls, options: ParquetSourceOptions, fields: FieldMap, window_chunks: int) -> ParquetSource:
        """Open the files' metadata and check the mapped columns exist."""
        return cls(options, fields, window_chunks)

    def describe(self) -> str:
        """The path as configured."""
        return f"parquet:{self.options.path}"

    def version(self) -> str:
        """Changes when any file's size or modification time changes."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ planning
    def _column_index(self, meta: pq.FileMetaData, ours: str) -> int | None:
        col = self.mapping.get(ours)
        if col is None:
            return None
        try:
            return meta.schema.names.index(col)
        except ValueError:
            return None

    def _may_match(self, meta: pq.FileMetaData, rg: int, selection: Selection) -> bool:
        """Row-group pruning by min/max statistics; ``True`` when unsure."""
        group = meta.row_group(rg)

        def stats(ours: str) -> Any:
            idx = self._column_index(meta, ours)
            if idx is None:
                return None
            s = group.column(idx).statistics
            return s if s is not None and s.has_min_max else None

        for ours, wanted in (("episode_id", selection.episode_ids), ("podcast_id", selection.podcast_ids)):
            s = stats(ours)
            if (
                wanted
                and s is not None
                and isinstance(s.min, str)
                and not any(s.min <= w <= s.max for w in wanted)
            ):
                return False
        if selection.since is not None:
            s = stats("published_at")
            if s is not None and hasattr(s.max, "tzinfo"):
                mx = s.max if s.max.tzinfo else s.max.replace(tzinfo=UTC)
                if mx < selection.since:
                    return False
        return True

    def plan(self, selection: Selection) -> list[ShardSpec]:
        """Consecutive row groups of about ``window_chunks`` rows make a shard."""
        if selection.since is not None and "published_at" not in self.mapping:
            raise SourceError("--since needs a published_at column: set source.fields.published_at")
        if selection.podcast_ids and "podcast_id" not in self.mapping:
            raise SourceError("--podcast needs a podcast_id column: set source.fields.podcast_id")
        shards: list[ShardSpec] = []
        for f in self.files:
            shards.extend(self._plan_file(f, selection))
        return shards

    def _plan_file(self, f: Path, selection: Selection) -> list[ShardSpec]:
        meta = self._meta[f]
        shards: list[ShardSpec] = []
        groups: list[int] = []
        rows = 0

        def flush() -> None:
            nonlocal groups, rows
            if groups:
                shards.append(
                    ShardSpec(
                        shard_id=f"{f.as_posix()}#rg{groups[0]}-{groups[-1]}",
                        locator={"file": str(f), "row_groups": list(groups)},
                        estimated_chunks=rows,
                    )
                )
            groups, rows = [], 0

        for rg in range(meta.num_row_groups):
            if not self._may_match(meta, rg, selection):
                flush()
                continue
            n = meta.row_group(rg).num_rows
            if n > self.window:
                # One big row group: cut it into row ranges, each its own checkpointed shard.
                flush()
                shards.extend(self._row_ranges(f, rg, n))
                continue
            groups.append(rg)
            rows += n
            if rows >= self.window:
                flush()
        flush()
        return shards

    # ------------------------------------------------------ change detection
    def snapshot(self) -> dict[str, Any]:
        """Every file's ``[size, mtime_ns, footer sha256, rows]`` as of opening."""
        return {"files": dict(self._fingerprints)}

    def plan_since(self, selection: Selection, since: dict[str, Any]) -> ChangePlan:
        """Shards of the files that are new or differ from ``since``; the rest is not decoded.

        Decided from metadata alone: path, size, modification time and the footer's hash.
        """
        before: dict[str, list[Any]] = since.get("files") or {}
        change = ChangePlan(shards=[])
        for f in self.files:
            key = os.fspath(f)
            if before.get(key) == self._fingerprints[key]:
                change.unchanged += self._meta[f].num_rows
                continue
            change.changed_units.append(key)
            change.shards.extend(self._plan_file(f, selection))
        change.gone_units = sorted(set(before) - set(self._fingerprints))
        # A chunk can leave only with a file that changed (or one that was there before).
        change.may_have_removed = bool(change.gone_units) or any(k in before for k in change.changed_units)
        return change

    def count(self) -> int:
        """Rows in every file, from the footers."""
        return sum(m.num_rows for m in self._meta.values())

    def _row_ranges(self, f: Path, rg: int, n: int) -> list[ShardSpec]:
        parts = -(-n // self.window)
        size = -(-n // parts)  # equal ranges: no tiny tail shard
        return [
            ShardSpec(
                shard_id=f"{f.as_posix()}#rg{rg}:{start}-{min(n, start + size)}",
                locator={"file": str(f), "row_groups": [rg], "rows": [start, min(n, start + size)]},
                estimated_chunks=min(n, start + size) - start,
            )
            for start in range(0, n, size)
        ]

    # ------------------------------------------------------------------- reading
    def _filter(self, table: pa.Table, selection: Selection) -> pa.Table:
        mask = None

        def both(m: Any, new: Any) -> Any:
            return new if m is None else pc.and_(m, new)

        def among(name: str, wanted: tuple[str, ...]) -> Any:
            col = table[name]
            if _nested(col.type):  # a list or struct equals no id
                return pa.array([False] * table.num_rows)
            return pc.is_in(col.cast(pa.string(), safe=False), pa.array(wanted, pa.string()))

        if selection.episode_ids:
            mask = both(mask, among("episode_id", selection.episode_ids))
        if selection.podcast_ids:
            mask = both(mask, among("podcast_id", selection.podcast_ids))
        if selection.since is not None:
            col = table["published_at"]
            since = pa.scalar(selection.since, type=pa.timestamp("us", tz="UTC"))
            if pa.types.is_timestamp(col.type):
                if col.type.tz is None:
                    col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
                mask = both(mask, pc.greater_equal(col, since.cast(col.type)))
            else:
                raise SourceError(
                    f"source.fields.published_at: column {self.mapping['published_at']!r} "
                    f"is {col.type}, not a timestamp; --since cannot filter on it"
                )
        if mask is None:
            return table
        return table.filter(pc.fill_null(mask, False))

    def _group(self, pf: pq.ParquetFile, f: Path, rg: int, columns: list[str], keep: bool) -> pa.Table:
        """Decode one row group's mapped columns; ``keep`` caches it for the next row range."""
        with self._cache_lock:
            cached = self._group_cache
            if cached is not None and cached[0] == (f, rg):
                if not keep:
                    self._group_cache = None
                return cached[1]
        try:
            table = pf.read_row_group(rg, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(
                f"source: {f} is damaged: row group {rg} cannot be decoded ({exc}); "
                "restore the file or move it out of source.path"
            ) from None
        with self._cache_lock:
            self._group_cache = ((f, rg), table) if keep else None
        return table

    def read(self, shard: ShardSpec, selection: Selection) -> Iterator[RawRecord]:
        """Stream the shard's rows (only mapped columns) as raw records."""
        f = Path(shard.locator["file"])
        row_groups: list[int] = shard.locator["row_groups"]
        rows: list[int] | None = shard.locator.get("rows")
        try:
            pf = pq.ParquetFile(f)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"source: cannot read {f}: {exc}") from None
        present = [c for c in self.mapping.values() if c in pf.schema_arrow.names]
        for rg in row_groups:
            offset = self._row_starts[f][rg]
            if rows is None:
                table = self._group(pf, f, rg, present, keep=False)
            else:
                start, end = rows
                last = end >= pf.metadata.row_group(rg).num_rows
                table = self._group(pf, f, rg, present, keep=not last).slice(start, end - start)
                offset += start
            table = table.rename_columns(
                [next(o for o, t in self.mapping.items() if t == c) for c in table.column_names]
            )
            table = table.append_column("__row", pa.array(range(offset, offset + table.num_rows), pa.int64()))
            text = table["text"]
            # Decode text ourselves so invalid UTF-8 becomes a dead letter, not a crash.
            if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
                table = table.set_column(
                    table.column_names.index("text"), "text", text.cast(pa.large_binary())
                )
            table = self._filter(table, selection)
            for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
                for row in batch.to_pylist():
                    pos = f"{f.name} row {row.pop('__row')}"
                    yield RawRecord(fields=row, position=pos)

    # ----------------------------------------------------------------- id queries
    def _id_column(self) -> pa.Array:
        # Only the id column, kept compact in Arrow: the text is never loaded here.
        if self._ids is None:
            col = self.mapping["chunk_id"]
            chunks = []
            for f in self.files:
                if f in self.wrong_type:
                    continue  # its rows are dead-lettered: no id of it counts
                try:
                    ids = pq.read_table(f, columns=[col])[col]
                except (OSError, pa.ArrowException) as exc:
                    raise SourceError(
                        f"source: {f} is damaged: its {col!r} column cannot be decoded ({exc}); "
                        "restore the file or move it out of source.path"
                    ) from None
                chunks.extend(ids.cast(pa.string(), safe=False).chunks)
            self._ids = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
        return self._ids

    def duplicate_ids(self, selection: Selection) -> dict[str, int]:
        """Ids occurring more than once anywhere in the source (only the id column is read)."""
        counts = pc.value_counts(self._id_column())
        values, freq = counts.field("values"), counts.field("counts")
        dup = pc.greater(freq, 1)
        return dict(zip(pc.filter(values, dup).to_pylist(), pc.filter(freq, dup).to_pylist(), strict=True))

    def existing_ids(self, chunk_ids: Iterable[str]) -> set[str]:
        """Which of ``chunk_ids`` are in the source (one hash of the source's ids per call:
        ask all ids at once, as :meth:`missing_ids` does, never page by page)."""
        wanted = pa.array(list(chunk_ids), pa.string())
        if len(wanted) == 0:
            return set()
        mask = pc.is_in(wanted, value_set=self._id_column())
        return set(pc.filter(wanted, mask).to_pylist())

    def missing_ids(self, chunk_ids: Iterable[str]) -> Iterator[str]:
        """The ids the source lacks, in one pass: the source's ids are hashed once.

        Ids are gathered into compact Arrow arrays (not Python sets), so memory is a few
        tens of bytes per id; ``pc.is_in`` per page would rebuild the hash of every
        source id for each page (quadratic).
        """
        pages: list[pa.Array] = []
        page: list[str] = []
        for cid in chunk_ids:
            page.append(cid)
            if len(page) >= READ_BATCH_ROWS * 64:
                pages.append(pa.array(page, pa.string()))
                page = []
        if page:
            pages.append(pa.array(page, pa.string()))
        if not pages:
            return iter(())
        wanted = pa.chunked_array(pages, type=pa.string())
        mask = pc.is_in(wanted, value_set=self._id_column())
        return iter(pc.filter(wanted, pc.invert(mask)).to_pylist())

    def distinct_values(self, name: str, among: Iterable[str] | None = None) -> set[str] | None:
        """Distinct values of one mapped column over every file (only that column is read)."""
        col = self.mapping.get(name)
        if col is None:
            return None
        found: set[str] = set()
        for f in self.files:
            if f in self.wrong_type:
                continue
            try:
                values = pq.read_table(f, columns=[col])[col]
            except (OSError, pa.ArrowException):
                return None  # a damaged file: the run itself will say which
            if _nested(values.type):
                continue
            found.update(v for v in pc.unique(values.cast(pa.string(), safe=False)).to_pylist() if v)
        return found if among is None else found & set(among)

    def close(self) -> None:
        """Drop the cached id column and row group."""
        self._ids = None
        self._group_cache = None
