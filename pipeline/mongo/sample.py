"""Loading the sample corpus (``data/sample_chunks.parquet``) into a MongoDB collection.

One document per chunk, ``_id`` = the chunk id, the other columns as fields
(``published_at`` as a BSON date). Idempotent: documents are upserted by ``_id`` with
``$set`` of the sample's fields only, so loading twice changes nothing, and vectors a
run has stored on the documents are left alone (a text restored to the sample's makes
its vector stale, which the next run detects by hash).

    podembed load-sample --mongo-uri-env PODEMBED_MONGO_URI --database podcasts --collection chunks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import SourceError
from pipeline.mongo.connection import DEFAULT_URI_ENV, ConnectionOptions, connect
from pipeline.mongo.retry import retrying
from pipeline.mongo.values import pages

SAMPLE_PATH = Path("data/sample_chunks.parquet")
WRITE_PAGE = 1000


@dataclass(slots=True)
class LoadResult:
    """What a load did."""

    read: int
    inserted: int
    updated: int
    unchanged: int
    namespace: str
    server: str  # redacted URI

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"loaded {self.read} chunks into {self.namespace} at {self.server}: "
            f"{self.inserted} inserted, {self.updated} updated, {self.unchanged} unchanged"
        )


def sample_documents(path: str | Path = SAMPLE_PATH, limit: int | None = None) -> list[dict[str, Any]]:
    """The sample chunks as MongoDB documents (``_id`` = ``chunk_id``)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise SourceError(
            f"sample corpus not found at {p}; run from the project folder or pass --path "
            "(regenerate it with `python data/make_sample.py`)"
        )
    rows = pq.read_table(p).to_pylist()
    if limit is not None:
        rows = rows[:limit]
    docs = []
    for row in rows:
        doc = {"_id": row.pop("chunk_id"), **row}
        docs.append(doc)
    return docs


def load_documents(
    docs: list[dict[str, Any]],
    database: str,
    collection: str,
    uri_env: str = DEFAULT_URI_ENV,
    server_selection_timeout_ms: int = 5000,
) -> LoadResult:
    """Upsert ``docs`` (each with an ``_id``) into ``database.collection``."""
    from pymongo import UpdateOne

    conn = connect(
        ConnectionOptions(uri_env=uri_env, server_selection_timeout_ms=server_selection_timeout_ms),
        "load-sample",
    )
    try:
        coll = conn.client[database][collection]
        inserted = updated = unchanged = 0
        for page in pages(docs, WRITE_PAGE):
            ops = [
                UpdateOne(
                    {"_id": d["_id"]}, {"$set": {k: v for k, v in d.items() if k != "_id"}}, upsert=True
                )
                for d in page
            ]
            res = retrying(conn, "loading the sample", lambda ops=ops: coll.bulk_write(ops, ordered=False))
            inserted += res.upserted_count
            updated += res.modified_count
            unchanged += res.matched_count - res.modified_count
        return LoadResult(len(docs), inserted, updated, unchanged, f"{database}.{collection}", conn.safe)
    finally:
        conn.close()


def load_sample(
    database: str = "podcasts",
    collection: str = "chunks",
    uri_env: str = DEFAULT_URI_ENV,
    path: str | Path = SAMPLE_PATH,
    limit: int | None = None,
) -> LoadResult:
    """Load the sample corpus (or its first ``limit`` chunks) into ``database.collection``."""
    return load_documents(sample_documents(path, limit), database, collection, uri_env)
