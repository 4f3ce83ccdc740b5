"""Search over the local vectors table: an ANN index when it covers the version, else exact.

Every search reads one version of the table (a snapshot: pipeline/files/sink.py), so a
chunk is never found twice and no file vanishes under it, whatever a writer does meanwhile.

Exact search, two ways:

- from the *matrix* `podembed index` writes beside the table for one version
  (``search/v<version>/matrix.f32``: every vector, contiguous float32, plus the ids,
  episodes and fingerprints in ``rows.parquet``): memory-mapped and scored with one
  matrix product per block of ``BLOCK_ROWS`` rows, ``argpartition`` for the top k. At 1M
  x 768 this is memory speed (3 GB read from the page cache);
- streamed from the table otherwise (the matrix is for another version, or none was
  built): the same blocks, decoded from the table's files.

The approximate index is Lance's IVF_PQ on ``embedding`` (cosine), searched with a
refine step that re-scores the candidates with their full vectors. It is used only when
it covers every row of the version being read; otherwise the search is exact and says
why, so a result is never silently missing what the last run wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.sink import IndexOutcome, SearchOutcome, VectorHit, VectorQuery

if TYPE_CHECKING:
    from pipeline.files.sink import ParquetSink

#: Vectors scored per matrix product: 32k x 768 float32 is 96 MiB.
BLOCK_ROWS = 32_768
ANN_INDEX = "embedding_idx"
#: Below this many vectors exact search is as fast as any index: `podembed index` builds none.
MIN_ANN_ROWS = 10_000
#: Partitions probed and candidates re-scored exactly per hit (recall@10 >= 0.95, benchmarks/search_speed.py).
NPROBES = 32
REFINE_FACTOR = 10
SEARCH_DIR = "search"
#: Off until its recall is verified: the first 100k measurement gave recall@10 = 0.005 against
#: exact (a query/metric bug not yet found), and a 236 s build on 2 shared cores. Exact search
#: from the matrix is 0.07 s at 100k, so search stays exact meanwhile.
ANN_ENABLED = False


def _filter(query: VectorQuery) -> pc.Expression:
    """The fingerprint and episode filters as an Arrow expression (values stay data)."""
    expr = pc.field("model_fingerprint") == query.fingerprint
    if query.episode_ids:
        expr = expr & pc.field("episode_id").isin(pa.array(sorted(set(query.episode_ids)), pa.string()))
    return expr


def fingerprint_counts(sink: ParquetSink) -> dict[str, int]:
    """Stored vectors per model fingerprint: one string column of one version."""
    with sink.reading() as ds:
        if ds is None:
            return {}
        counts: dict[str, int] = {}
        for batch in ds.to_batches(columns=["model_fingerprint"], batch_size=65_536):
            for item in pc.value_counts(batch.column(0)).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + int(item["counts"])
        return counts


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
        keep = keep[np.isfinite(scores[keep])]
        taken = pa.array(keep, pa.int64())
        all_scores = np.concatenate([self.scores, scores[keep]])
        all_ids = self.ids + ids.take(taken).to_pylist()
        all_eps = self.episodes + episodes.take(taken).to_pylist()
        # Ties are broken by chunk id so that a search is reproducible run to run.
        order = sorted(range(all_scores.size), key=lambda i: (-float(all_scores[i]), all_ids[i]))[: self.k]
        self.scores = all_scores[order]
        self.ids = [all_ids[i] for i in order]
        self.episodes = [all_eps[i] for i in order]

    def hits(self) -> list[VectorHit]:
        return [
            VectorHit(chunk_id=cid, score=float(s), episode_id=ep)
            for cid, s, ep in zip(self.ids, self.scores, self.episodes, strict=True)
        ]


def _scores(matrix: np.ndarray, q: np.ndarray, unit: bool) -> np.ndarray:
    scores = matrix @ q
    if not unit:
        # Cosine for vectors stored unnormalized (model.normalize = false).
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    return scores


def _unit_query(query: VectorQuery) -> np.ndarray:
    q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    return q / norm if norm > 0 else q


# ---------------------------------------------------------------------------- exact: the matrix
@dataclass(slots=True)
class _Matrix:
    matrix: np.ndarray  # memory-mapped, rows x dimension
    ids: pa.Array
    episodes: pa.Array
    fingerprints: pa.Array


def _matrix_dir(sink: ParquetSink, version: int) -> Path:
    return sink.root / SEARCH_DIR / f"v{version}"


def _load_matrix(sink: ParquetSink, version: int) -> _Matrix | None:
    folder = _matrix_dir(sink, version)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        rows = pq.read_table(folder / "rows.parquet")
        matrix = np.memmap(folder / "matrix.f32", dtype=np.float32, mode="r", shape=tuple(meta["shape"]))
    except (OSError, ValueError, KeyError):
        return None
    if rows.num_rows != matrix.shape[0]:
        return None
    return _Matrix(
        matrix,
        rows["chunk_id"].combine_chunks(),
        rows["episode_id"].combine_chunks(),
        rows["model_fingerprint"].combine_chunks(),
    )


def _search_matrix(m: _Matrix, query: VectorQuery, q: np.ndarray) -> tuple[list[VectorHit], int]:
    mask = pc.equal(m.fingerprints, query.fingerprint)
    if query.episode_ids:
        mask = pc.and_(mask, pc.is_in(m.episodes, pa.array(sorted(set(query.episode_ids)), pa.string())))
    selected = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    top = _TopK(query.k)
    n = m.matrix.shape[0]
    if selected.size == n:  # every row: stream the memory map block by block
        for s in range(0, n, BLOCK_ROWS):
            block = np.asarray(m.matrix[s : s + BLOCK_ROWS])
            top.add(
                _scores(block, q, query.unit_vectors),
                m.ids.slice(s, block.shape[0]),
                m.episodes.slice(s, block.shape[0]),
            )
        return top.hits(), n
    for s in range(0, selected.size, BLOCK_ROWS):
        rows = selected[s : s + BLOCK_ROWS]
        taken = pa.array(rows, pa.int64())
        top.add(_scores(m.matrix[rows], q, query.unit_vectors), m.ids.take(taken), m.episodes.take(taken))
    return top.hits(), int(selected.size)


# ---------------------------------------------------------------------------- exact: streamed
def _search_streamed(
    ds: Any, query: VectorQuery, q: np.ndarray, dimension: int
) -> tuple[list[VectorHit], int]:
    top = _TopK(query.k)
    scanned = 0
    for batch in ds.to_batches(
        columns=["chunk_id", "episode_id", "embedding"], filter=_filter(query), batch_size=BLOCK_ROWS
    ):
        if batch.num_rows == 0:
            continue
        emb = batch.column(2)
        flat = emb.values.slice(emb.offset * dimension, len(emb) * dimension)
        matrix = flat.to_numpy(zero_copy_only=False).reshape(-1, dimension)
        top.add(_scores(matrix, q, query.unit_vectors), batch.column(0), batch.column(1))
        scanned += batch.num_rows
    return top.hits(), scanned


# ---------------------------------------------------------------------------- the ANN index
def ann_coverage(ds: Any) -> tuple[int, int] | None:
    """(indexed rows, rows) of the ANN index on this version, or ``None`` when there is none."""
    if not any(ix.name == ANN_INDEX for ix in ds.describe_indices()):
        return None
    stats = ds.stats.index_stats(ANN_INDEX)
    return int(stats["num_indexed_rows"]), int(stats["num_indexed_rows"]) + int(stats["num_unindexed_rows"])


def _search_ann(ds: Any, query: VectorQuery, q: np.ndarray) -> list[VectorHit]:
    table = ds.to_table(
        columns=["chunk_id", "episode_id"],
        filter=_filter(query),
        prefilter=True,
        nearest={
            "column": "embedding",
            "q": q,
            "k": query.k,
            "nprobes": NPROBES,
            "refine_factor": REFINE_FACTOR,
            "metric": "cosine",
        },
    )
    # Lance returns the cosine distance (1 - cosine) of the refined candidates.
    scores = 1.0 - table["_distance"].to_numpy(zero_copy_only=False).astype(np.float32)
    top = _TopK(query.k)
    top.add(scores, table["chunk_id"].combine_chunks(), table["episode_id"].combine_chunks())
    return top.hits()


def search(sink: ParquetSink, query: VectorQuery) -> SearchOutcome:
    """Cosine top k over one version of the table, the index's way when it covers it."""
    q = _unit_query(query)
    with sink.reading() as ds:
        if ds is None:
            return SearchOutcome(hits=[], method="exact")
        notices: list[str] = []
        coverage = ann_coverage(ds)
        if ANN_ENABLED and coverage is not None and coverage[0] == coverage[1]:
            hits = _search_ann(ds, query, q)
            return SearchOutcome(hits=hits, method=f"ann (IVF_PQ, refine x{REFINE_FACTOR})", scanned=0)
        if ANN_ENABLED and coverage is not None:
            notices.append(
                f"the search index covers {coverage[0]} of {coverage[1]} vectors (written since it "
                "was built): searched exactly instead; `podembed index` brings it up to date"
            )
        matrix = _load_matrix(sink, ds.version)
        if matrix is not None:
            hits, scanned = _search_matrix(matrix, query, q)
            return SearchOutcome(hits=hits, method="exact (matrix)", scanned=scanned, notices=notices)
        hits, scanned = _search_streamed(ds, query, q, sink.dimension)
        return SearchOutcome(hits=hits, method="exact", scanned=scanned, notices=notices)


# ---------------------------------------------------------------------------- podembed index
def write_matrix(sink: ParquetSink, ds: Any) -> Path:
    """Every vector of version ``ds`` as one contiguous float32 file (written, fsynced, renamed)."""
    final = _matrix_dir(sink, ds.version)
    if (final / "meta.json").exists():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dim = sink.dimension
    rows = 0
    metas: list[pa.Table] = []
    with (tmp / "matrix.f32").open("wb") as fh:
        for batch in ds.to_batches(
            columns=["chunk_id", "episode_id", "model_fingerprint", "embedding"], batch_size=BLOCK_ROWS
        ):
            emb = batch.column(3)
            flat = emb.values.slice(emb.offset * dim, len(emb) * dim)
            fh.write(np.ascontiguousarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).tobytes())
            metas.append(
                pa.Table.from_batches([batch.select(["chunk_id", "episode_id", "model_fingerprint"])])
            )
            rows += batch.num_rows
        fh.flush()
        os.fsync(fh.fileno())
    schema = pa.schema(
        [("chunk_id", pa.string()), ("episode_id", pa.string()), ("model_fingerprint", pa.string())]
    )
    pq.write_table(pa.concat_tables(metas) if metas else schema.empty_table(), tmp / "rows.parquet")
    (tmp / "meta.json").write_text(
        json.dumps({"shape": [rows, dim], "version": ds.version}), encoding="utf-8"
    )
    os.replace(tmp, final)
    return final


def prune_matrices(sink: ParquetSink, keep: int) -> None:
    """Delete the matrices of other versions (the caller holds off readers)."""
    folder = sink.root / SEARCH_DIR
    if not folder.exists():
        return
    for child in folder.iterdir():
        if child.name != f"v{keep}":
            shutil.rmtree(child, ignore_errors=True)


def build_index(sink: ParquetSink) -> IndexOutcome:
    """Build (or bring up to date) the ANN index, then the exact matrix of the resulting version."""
    with sink.writing() as ds:
        if ds is None:
            return IndexOutcome("not_needed", f"{sink.describe()}: no vectors yet; nothing to index")
        rows = int(ds.count_rows())
        definition: dict[str, Any] | None = None
        if ANN_ENABLED and rows >= MIN_ANN_ROWS:
            coverage = ann_coverage(ds)
            if coverage is not None and coverage[0] == coverage[1]:
                status, what = "exists", "the search index covers every vector"
            elif coverage is not None:
                ds.optimize.optimize_indices(index_names=[ANN_INDEX])
                status, what = "updated", f"indexed {coverage[1] - coverage[0]} new vectors"
            else:
                definition = {
                    "index_type": "IVF_PQ",
                    "metric": "cosine",
                    "num_partitions": max(1, int(math.sqrt(rows))),
                    "num_sub_vectors": _sub_vectors(sink.dimension),
                }
                ds.create_index("embedding", name=ANN_INDEX, **definition)
                status, what = "created", f"built an IVF_PQ index over {rows} vectors"
            ds = sink.refresh()
        else:
            status, what = "not_needed", f"{rows} vectors: exact search is as fast as an index"
        path = write_matrix(sink, ds)
        sink.after_index(ds.version)
    return IndexOutcome(status, f"{sink.describe()}: {what}; exact-search matrix in {path}", definition)


def _sub_vectors(dimension: int) -> int:
    """PQ sub-vectors: 16 dimensions each where it divides (768 -> 48), else the largest divisor <= 16."""
    for width in range(16, 0, -1):
        if dimension % width == 0:
            return dimension // width
    return dimension
