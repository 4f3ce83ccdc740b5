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

The approximate index (pipeline/files/ann.py: faiss IVF with 8-bit codes) lives beside
the matrix of the same version (``search/v<version>/ann.faiss``, row i = matrix row i). It
proposes candidates and the matrix re-scores them exactly. Because both belong to one
version, a write after `podembed index` makes a new version with neither, so search falls
back to exact (streamed) and says so: a result never misses what the last run wrote. The
end of a later run rebuilds both when they existed (the trained lists are reused).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.files import ann
from pipeline.interfaces.sink import IndexOutcome, SearchOutcome, VectorHit, VectorQuery


class SearchedSink(Protocol):
    """What search needs of :class:`pipeline.files.sink.ParquetSink` (which imports this module)."""

    root: Path
    dimension: int

    def describe(self) -> str: ...
    def reading(self) -> AbstractContextManager[Any | None]: ...
    def writing(self) -> AbstractContextManager[Any | None]: ...
    def after_index(self, version: int) -> None: ...


#: Vectors scored per matrix product: 32k x 768 float32 is 96 MiB.
BLOCK_ROWS = 32_768
SEARCH_DIR = "search"
#: With a filter keeping fewer rows than this share, exact search over just those rows is
#: cheaper than the index (and a filtered IVF search could find too few candidates).
ANN_MIN_SHARE = 0.1


def _filter(query: VectorQuery) -> pc.Expression:
    """The fingerprint and episode filters as an Arrow expression (values stay data)."""
    expr = pc.field("model_fingerprint") == query.fingerprint
    if query.episode_ids:
        expr = expr & pc.field("episode_id").isin(pa.array(sorted(set(query.episode_ids)), pa.string()))
    return expr


def fingerprint_counts(sink: SearchedSink) -> dict[str, int]:
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


def _matrix_dir(sink: SearchedSink, version: int) -> Path:
    return sink.root / SEARCH_DIR / f"v{version}"


def _load_matrix(sink: SearchedSink, version: int) -> _Matrix | None:
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


def _selection(m: _Matrix, query: VectorQuery) -> np.ndarray:
    """Rows of this fingerprint (and of the episodes asked for), as a boolean per row."""
    mask = pc.equal(m.fingerprints, query.fingerprint)
    if query.episode_ids:
        mask = pc.and_(mask, pc.is_in(m.episodes, pa.array(sorted(set(query.episode_ids)), pa.string())))
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _search_matrix(m: _Matrix, query: VectorQuery, q: np.ndarray) -> tuple[list[VectorHit], int]:
    selected = np.flatnonzero(_selection(m, query))
    return _score_rows(m, query, q, selected), int(selected.size)


def _score_rows(m: _Matrix, query: VectorQuery, q: np.ndarray, selected: np.ndarray) -> list[VectorHit]:
    """Exact top k among the given matrix rows (sorted ascending)."""
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
        return top.hits()
    for s in range(0, selected.size, BLOCK_ROWS):
        rows = selected[s : s + BLOCK_ROWS]
        taken = pa.array(rows, pa.int64())
        top.add(_scores(m.matrix[rows], q, query.unit_vectors), m.ids.take(taken), m.episodes.take(taken))
    return top.hits()


def _search_ann(
    m: _Matrix, index: Any, query: VectorQuery, q: np.ndarray
) -> tuple[list[VectorHit], int] | None:
    """The index's candidates re-scored exactly; ``None`` when a filter makes exact cheaper."""
    keep = _selection(m, query)
    kept = int(np.count_nonzero(keep))
    if kept < ANN_MIN_SHARE * keep.size or kept < ann.MIN_ROWS:
        return None
    rows = ann.candidates(index, q, query.k, None if kept == keep.size else keep)
    return _score_rows(m, query, q, rows), int(rows.size)


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


def search(sink: SearchedSink, query: VectorQuery) -> SearchOutcome:
    """Cosine top k over one version of the table: the index of that version, else exact."""
    q = _unit_query(query)
    with sink.reading() as ds:
        if ds is None:
            return SearchOutcome(hits=[], method="exact")
        notices: list[str] = []
        matrix = _load_matrix(sink, ds.version)
        if matrix is not None:
            index = ann.load(_matrix_dir(sink, ds.version) / ann.ANN_FILE, matrix.matrix.shape[0])
            if index is not None:
                found = _search_ann(matrix, index, query, q)
                if found is not None:
                    d = ann.definition(index)
                    method = f"ann ({d['library']} {d['index']}, nprobe {d['nprobe']}, re-scored exactly)"
                    return SearchOutcome(hits=found[0], method=method, scanned=found[1])
            hits, scanned = _search_matrix(matrix, query, q)
            return SearchOutcome(hits=hits, method="exact (matrix)", scanned=scanned, notices=notices)
        if any((sink.root / SEARCH_DIR).glob("v*")):
            notices.append(
                "the search index is of an older version of the vectors (written since it was "
                "built): searched exactly instead; `podembed index` brings it up to date"
            )
        hits, scanned = _search_streamed(ds, query, q, sink.dimension)
        return SearchOutcome(hits=hits, method="exact", scanned=scanned, notices=notices)


# ---------------------------------------------------------------------------- podembed index
def write_matrix(sink: SearchedSink, ds: Any, with_ann: bool = False) -> tuple[Path, dict[str, Any] | None]:
    """Every vector of version ``ds`` as one contiguous float32 file (written, fsynced, renamed).

    With ``with_ann`` (and at least ``ann.MIN_ROWS`` vectors) the approximate index of the
    same rows is added beside it. Returns the folder and the index's definition when this
    call built one.
    """
    final = _matrix_dir(sink, ds.version)
    if not (final / "meta.json").exists():
        _write_matrix_files(sink, ds, final)
    m = _load_matrix(sink, ds.version)
    if not with_ann or m is None or m.matrix.shape[0] < ann.MIN_ROWS or (final / ann.ANN_FILE).exists():
        return final, None
    return final, ann.build(m.matrix, final / ann.ANN_FILE, sink.root / SEARCH_DIR)


def _write_matrix_files(sink: SearchedSink, ds: Any, final: Path) -> None:
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


def has_ann(sink: SearchedSink) -> bool:
    """Whether `podembed index` built an approximate index here (later runs keep it current)."""
    return (sink.root / SEARCH_DIR / ann.TRAINED_FILE).exists()


def prune_matrices(sink: SearchedSink, keep: int) -> None:
    """Delete the matrices and indexes of other versions (the caller holds off readers)."""
    folder = sink.root / SEARCH_DIR
    if not folder.exists():
        return
    for child in folder.iterdir():
        if child.is_dir() and child.name != f"v{keep}":
            shutil.rmtree(child, ignore_errors=True)


def build_index(sink: SearchedSink) -> IndexOutcome:
    """Write the exact matrix of the current version and, from ``ann.MIN_ROWS`` vectors, its ANN index."""
    with sink.writing() as ds:
        if ds is None:
            return IndexOutcome("not_needed", f"{sink.describe()}: no vectors yet; nothing to index")
        rows = int(ds.count_rows())
        path, definition = write_matrix(sink, ds, with_ann=True)
        sink.after_index(ds.version)
    if rows < ann.MIN_ROWS:
        status, what = "not_needed", f"{rows} vectors: exact search is as fast as an index"
    elif definition is None:
        status, what = "exists", "the search index covers every vector"
    else:
        status, what = "created", f"built a {definition['index']} index (faiss) over {rows} vectors"
    return IndexOutcome(status, f"{sink.describe()}: {what}; exact-search matrix in {path}", definition)
