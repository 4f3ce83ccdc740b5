"""Reading chunks from Parquet files, streamed by row group.

Shards are runs of consecutive row groups (about ``window_chunks`` rows each), so a
shard is a stable, cheap locator: re-reading it after a crash reads the same rows.
Only the mapped columns are read; filters prune row groups by their statistics
before any data is decoded.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import FieldMap
from pipeline.errors import ConfigError, SourceError
from pipeline.records import RawRecord, ShardSpec
from pipeline.selection import Selection
from pipeline.source import Source

READ_BATCH_ROWS = 1024


@dataclass(slots=True)
class ParquetSourceOptions:
    """``[source]`` options for ``kind = "parquet"``."""

    path: str  # a .parquet file, a folder of them, or a glob

    def validate(self, prefix: str) -> None:
        """The path must be set."""
        if not self.path.strip():
            raise ConfigError(f"{prefix}.path: must name a Parquet file or folder")


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.rglob("*.parquet") if not q.name.startswith("."))
    if p.is_file():
        return [p]
    matches = sorted(Path(m) for m in glob.glob(path, recursive=True))
    return [m for m in matches if m.is_file()]


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
        required = {"chunk_id", "episode_id", "text"}
        for f in self.files:
            try:
                meta = pq.read_metadata(f)
            except (OSError, pa.ArrowInvalid) as exc:
                raise SourceError(f"source.path: {f} is not a readable Parquet file: {exc}") from None
            self._meta[f] = meta
            starts = [0]
            for rg in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(rg).num_rows)
            self._row_starts[f] = starts
            names = set(meta.schema.names)
            for ours, theirs in fields.mapped().items():
                if theirs in names:
                    self.mapping.setdefault(ours, theirs)
                elif ours in required:
                    raise SourceError(
                        f"source.fields.{ours}: column {theirs!r} not found in {f} "
                        f"(columns: {', '.join(sorted(names))}); set source.fields.{ours}"
                    )

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
            meta = self._meta[f]
            groups: list[int] = []
            rows = 0

            def flush(f: Path = f) -> None:
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
                groups.append(rg)
                rows += meta.row_group(rg).num_rows
                if rows >= self.window:
                    flush()
            flush()
        return shards

    # ------------------------------------------------------------------- reading
    def _filter(self, table: pa.Table, selection: Selection) -> pa.Table:
        mask = None

        def both(m: Any, new: Any) -> Any:
            return new if m is None else pc.and_(m, new)

        if selection.episode_ids:
            mask = both(
                mask,
                pc.is_in(
                    table["episode_id"].cast(pa.string(), safe=False),
                    pa.array(selection.episode_ids, pa.string()),
                ),
            )
        if selection.podcast_ids:
            mask = both(
                mask,
                pc.is_in(
                    table["podcast_id"].cast(pa.string(), safe=False),
                    pa.array(selection.podcast_ids, pa.string()),
                ),
            )
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

    def read(self, shard: ShardSpec, selection: Selection) -> Iterator[RawRecord]:
        """Stream the shard's rows (only mapped columns) as raw records."""
        f = Path(shard.locator["file"])
        row_groups: list[int] = shard.locator["row_groups"]
        try:
            pf = pq.ParquetFile(f)
        except (OSError, pa.ArrowInvalid) as exc:
            raise SourceError(f"source: cannot read {f}: {exc}") from None
        meta = pf.metadata
        present = [c for c in self.mapping.values() if c in meta.schema.names]
        for rg in row_groups:
            offset = self._row_starts[f][rg]
            table = pf.read_row_group(rg, columns=present)
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
                ids = pq.read_table(f, columns=[col])[col]
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
        """Which of ``chunk_ids`` are in the source."""
        wanted = pa.array(list(chunk_ids), pa.string())
        if len(wanted) == 0:
            return set()
        mask = pc.is_in(wanted, value_set=self._id_column())
        return set(pc.filter(wanted, mask).to_pylist())

    def close(self) -> None:
        """Drop the cached id column."""
        self._ids = None
