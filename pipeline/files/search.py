"""Exact vector search over a Parquet sink folder, streamed in blocks.

The manifest says which file owns which chunk (and with which model fingerprint and
episode), so the episode filter and the fingerprint filter are one SQL query before any
vector is read. The owning files are then read a few at a time (only the id, episode,
fingerprint and embedding columns), gathered into blocks of about ``BLOCK_ROWS``
vectors, scored with one float32 matrix product per block, and reduced to a running
top k. Memory is bounded by a block (plus the largest single file), not by the corpus.

A row a file holds without owning it (left by an interrupted move) is skipped, exactly
as :func:`~pipeline.files.sink.read_vectors` does, so a chunk is never found twice.
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


def _owned(sink: ParquetSink, query: VectorQuery) -> dict[str, list[str]]:
    """File -> chunk ids it owns with the query's fingerprint (and episodes, if filtered)."""
    by_file: dict[str, list[str]] = defaultdict(list)
    base = "SELECT file, chunk_id FROM owner WHERE model_fingerprint = ?"
    if not query.episode_ids:
        for name, cid in sink.db.query(base, (query.fingerprint,)):
            by_file[name].append(cid)
        return by_file
    episodes = list(dict.fromkeys(query.episode_ids))
    for i in range(0, len(episodes), _SQL_PAGE):
        page = episodes[i : i + _SQL_PAGE]
        marks = ",".join("?" * len(page))
        for name, cid in sink.db.query(f"{base} AND episode_id IN ({marks})", (query.fingerprint, *page)):
            by_file[name].append(cid)
    return by_file


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


def _read(sink: ParquetSink, name: str, owned: list[str], fingerprint: str) -> pa.Table | None:
    path = sink.vectors_dir / name
    try:
        table = pq.ParquetFile(path).read(columns=_COLUMNS, use_threads=False)
    except FileNotFoundError:
        return None  # deleted by a concurrent prune: its chunks are gone too
    mask = pc.and_(
        pc.is_in(table["chunk_id"], value_set=pa.array(owned, pa.string())),
        pc.equal(table["model_fingerprint"], fingerprint),
    )
    return table.filter(mask).select(["chunk_id", "episode_id", "embedding"])


def _read_ahead(
    sink: ParquetSink, names: list[str], owned: dict[str, list[str]], fingerprint: str
) -> Iterator[pa.Table | None]:
    """The files' tables in order, at most ``2 * READ_THREADS`` read ahead (bounded memory)."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending: deque[Future[pa.Table | None]] = deque()
        for name in names:
            pending.append(pool.submit(_read, sink, name, owned[name], fingerprint))
            if len(pending) >= 2 * READ_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _score(block: list[pa.Table], query: np.ndarray, dimension: int, top: _TopK) -> int:
    table = pa.concat_tables(block)
    if table.num_rows == 0:
        return 0
    emb = table["embedding"].combine_chunks()
    matrix = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    scores = matrix @ query
    # Cosine even if the vectors were stored unnormalized (model.normalize = false).
    norms = np.linalg.norm(matrix, axis=1)
    scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    top.add(scores, table["chunk_id"].combine_chunks(), table["episode_id"].combine_chunks())
    return table.num_rows


def search(sink: ParquetSink, query: VectorQuery) -> SearchOutcome:
    """Exact cosine top k over the sink's current vectors with the query's fingerprint."""
    q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if norm > 0:
        q = q / norm
    owned = _owned(sink, query)
    top = _TopK(query.k)
    scanned = 0
    block: list[pa.Table] = []
    rows = 0
    names = sorted(owned)
    for table in _read_ahead(sink, names, owned, query.fingerprint):
        if table is None:
            continue
        block.append(table)
        rows += table.num_rows
        if rows >= BLOCK_ROWS:
            scanned += _score(block, q, sink.dimension, top)
            block, rows = [], 0
    if block:
        scanned += _score(block, q, sink.dimension, top)
    hits = [
        VectorHit(chunk_id=cid, score=float(s), episode_id=ep)
        for cid, s, ep in zip(top.ids, top.scores, top.episodes, strict=True)
    ]
    return SearchOutcome(hits=hits, method="exact", scanned=scanned)
