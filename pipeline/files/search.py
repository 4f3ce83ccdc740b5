"""Exact vector search over a Parquet sink folder, streamed in blocks.

The manifest says which file owns which chunks (with which model fingerprint and
episode), so the episode and fingerprint filters are one SQL ``GROUP BY`` before any
vector is read: the files to read and how many chunks each owns. The files are then
read a few at a time (only the id, episode, fingerprint and embedding columns), gathered
into blocks of about ``BLOCK_ROWS`` vectors, scored with one float32 matrix product per
block, and reduced to a running top k. Memory is bounded by a block (plus the largest
single file), not by the corpus.

A row a file holds without owning it (left by an interrupted write or move) is skipped,
as :func:`~pipeline.files.sink.read_vectors` does, so a chunk is never found twice: a
file whose rows of the fingerprint are exactly as many as the chunks it owns is taken
whole (the sink writes a file before the manifest and deletes from the manifest before
the file, so an interruption always leaves a file with extra rows); any other file's
rows are checked one by one against the manifest.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.sink import SearchOutcome, VectorHit, VectorQuery

if TYPE_CHECKING:
    from pipeline.files.sink import ParquetSink

#: Vectors scored per matrix product: 32k x 768 float32 is 96 MiB, 32k x 384 is 48 MiB.
BLOCK_ROWS = 32_768
#: Files read concurrently (pyarrow releases the GIL while decoding; each read is single-threaded
#: because the files are small: one episode each, where per-file overhead dominates).
READ_THREADS = max(1, min(4, os.cpu_count() or 1))
_COLUMNS = ["chunk_id", "episode_id", "model_fingerprint", "embedding"]
_SQL_PAGE = 900  # SQLite's limit on bound parameters is 999


def fingerprint_counts(sink: ParquetSink) -> dict[str, int]:
    """Stored vectors per model fingerprint, counted by SQLite from the manifest."""
    rows = sink.db.query("SELECT model_fingerprint, COUNT(*) FROM owner GROUP BY model_fingerprint")
    return {str(fp): int(n) for fp, n in rows}


def _episode_clause(query: VectorQuery) -> list[tuple[str, tuple[str, ...]]]:
    """SQL conditions for the episode filter, paged under SQLite's parameter limit."""
    if not query.episode_ids:
        return [("", ())]
    episodes = list(dict.fromkeys(query.episode_ids))
    pages = [tuple(episodes[i : i + _SQL_PAGE]) for i in range(0, len(episodes), _SQL_PAGE)]
    return [(f" AND episode_id IN ({','.join('?' * len(p))})", p) for p in pages]


def _expected(sink: ParquetSink, query: VectorQuery) -> dict[str, int]:
    """File -> how many chunks it owns with the query's fingerprint (and episodes)."""
    counts: dict[str, int] = defaultdict(int)
    for clause, params in _episode_clause(query):
        sql = f"SELECT file, COUNT(*) FROM owner WHERE model_fingerprint = ?{clause} GROUP BY file"
        for name, n in sink.db.query(sql, (query.fingerprint, *params)):
            counts[name] += int(n)
    return counts


def _owned_ids(sink: ParquetSink, name: str, query: VectorQuery) -> list[str]:
    """The chunk ids file ``name`` owns with the query's fingerprint (and episodes)."""
    ids: list[str] = []
    for clause, params in _episode_clause(query):
        sql = f"SELECT chunk_id FROM owner WHERE file = ? AND model_fingerprint = ?{clause}"
        ids += [r[0] for r in sink.db.query(sql, (name, query.fingerprint, *params))]
    return ids


class _TopK:
    """The k best (score, chunk, episode) seen so far, merged block by block."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.empty(0, dtype=np.float32)
        self.ids: list[str] = []
        self.episodes: list[str] = []

    def add(self, scores: np.ndarray, ids: pa.Array, episodes: pa.Array) -> None:
        if scores.size > self.k:
            keep = np.argpartition(-scores, self.k - 1)[: self.k]
        else:
            keep = np.arange(scores.size)
        taken = pa.array(keep, pa.int64())
        all_scores = np.concatenate([self.scores, scores[keep]])
        all_ids = self.ids + ids.take(taken).to_pylist()
        all_eps = self.episodes + episodes.take(taken).to_pylist()
        # Ties are broken by chunk id so that a search is reproducible run to run.
        order = sorted(range(all_scores.size), key=lambda i: (-float(all_scores[i]), all_ids[i]))[: self.k]
        self.scores = all_scores[order]
        self.ids = [all_ids[i] for i in order]
        self.episodes = [all_eps[i] for i in order]


def _read(sink: ParquetSink, name: str, fingerprint: str) -> pa.Table | None:
    """The file's rows with ``fingerprint``: id, episode and vector only."""
    try:
        table = pq.ParquetFile(sink.vectors_dir / name).read(columns=_COLUMNS, use_threads=False)
    except FileNotFoundError:
        return None  # deleted by a concurrent prune: its chunks are gone too
    table = table.filter(pc.equal(table["model_fingerprint"], fingerprint))
    return table.select(["chunk_id", "episode_id", "embedding"])


def _read_ahead(
    sink: ParquetSink, names: list[str], fingerprint: str
) -> Iterator[tuple[str, pa.Table | None]]:
    """The files' tables in order, at most ``2 * READ_THREADS`` read ahead (bounded memory)."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending: deque[tuple[str, Future[pa.Table | None]]] = deque()
        for name in names:
            pending.append((name, pool.submit(_read, sink, name, fingerprint)))
            if len(pending) >= 2 * READ_THREADS:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _score(block: list[pa.Table], query: np.ndarray, dimension: int, unit: bool, top: _TopK) -> int:
    table = pa.concat_tables(block)
    if table.num_rows == 0:
        return 0
    emb = table["embedding"].combine_chunks()
    matrix = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    scores = matrix @ query
    if not unit:
        # Cosine for vectors stored unnormalized (model.normalize = false).
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    top.add(scores, table["chunk_id"].combine_chunks(), table["episode_id"].combine_chunks())
    return table.num_rows


def search(sink: ParquetSink, query: VectorQuery) -> SearchOutcome:
    """Exact cosine top k over the sink's current vectors with the query's fingerprint."""
    q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if norm > 0:
        q = q / norm
    expected = _expected(sink, query)
    top = _TopK(query.k)
    scanned = 0
    block: list[pa.Table] = []
    rows = 0
    for name, table in _read_ahead(sink, sorted(expected), query.fingerprint):
        if table is None:
            continue
        if table.num_rows != expected[name]:
            # Rows the file holds without owning them (an interrupted write or move): keep the owned.
            owned = pa.array(_owned_ids(sink, name, query), pa.string())
            table = table.filter(pc.is_in(table["chunk_id"], value_set=owned))
        block.append(table)
        rows += table.num_rows
        if rows >= BLOCK_ROWS:
            scanned += _score(block, q, sink.dimension, query.unit_vectors, top)
            block, rows = [], 0
    if block:
        scanned += _score(block, q, sink.dimension, query.unit_vectors, top)
    hits = [
        VectorHit(chunk_id=cid, score=float(s), episode_id=ep)
        for cid, s, ep in zip(top.ids, top.scores, top.episodes, strict=True)
    ]
    return SearchOutcome(hits=hits, method="exact", scanned=scanned)
