"""Reading the per-episode layout of older podembed versions (vectors/*.parquet + manifest.sqlite).

Kept only to migrate such a folder into the table (pipeline/files/sink.py) and to let
``read_vectors`` read one that was not migrated yet. Opens the manifest read-only.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import TargetError
from pipeline.files.schema import vector_schema


def read_legacy_vectors(root: Path, columns: list[str] | None = None) -> pa.Table:
    """The rows the old manifest owns: exactly one per chunk, as the old reader returned."""
    manifest = root / "manifest.sqlite"
    try:
        conn = sqlite3.connect(f"{manifest.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise TargetError(f"cannot read {manifest}: {exc}") from None
    wanted = None if columns is None else list(dict.fromkeys(["chunk_id", *columns]))
    tables: list[pa.Table] = []
    try:
        owners: dict[str, list[str]] = {}
        for cid, name in conn.execute("SELECT chunk_id, file FROM owner ORDER BY file"):
            owners.setdefault(name, []).append(cid)
    except sqlite3.Error as exc:
        raise TargetError(f"cannot read {manifest}: {exc}") from None
    finally:
        conn.close()
    for name, ids in owners.items():
        table = pq.read_table(root / "vectors" / name, columns=wanted)
        tables.append(table.filter(pc.is_in(table["chunk_id"], pa.array(ids, pa.string()))))
    if not tables:
        empty = vector_schema(1).empty_table()
        return empty if wanted is None else empty.select(wanted)
    return pa.concat_tables(tables)
