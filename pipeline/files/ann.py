"""The approximate search index over one exact-search matrix: faiss IVF with 8-bit codes.

Why faiss's ``IndexIVFScalarQuantizer`` (inverted file, 8-bit scalar-quantized vectors,
inner product on unit vectors = cosine):

- it builds in about 30 s at 1M x 768 on two cores (k-means on a sample of
  ``TRAIN_PER_LIST`` rows per list, then one assignment pass): Lance's IVF_PQ took 236 s
  at 100k here, HNSW graphs take many minutes at 1M;
- its codes are a quarter of the float32 matrix (768 MB at 1M x 768) and it is opened
  memory-mapped, so a one-shot `podembed search` process does not read it all;
- the full vectors are already in the matrix beside it: the index only proposes
  ``REFINE`` x k candidates and search re-scores them exactly, so scores are exact cosines
  and recall depends only on the lists probed.

Row ``i`` of the index is row ``i`` of the matrix (faiss numbers added vectors in order).
The trained quantizer is kept apart (``search/ivf-trained.faiss``, a few MB) so that the
index of a later version only assigns vectors to lists, without training again, until the
table has grown enough for more lists.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

#: The index file inside ``search/v<N>/``.
ANN_FILE = "ann.faiss"
#: The trained, empty index inside ``search/`` (reused by later versions).
TRAINED_FILE = "ivf-trained.faiss"
#: Below this many vectors exact search is as fast as any index: none is built.
MIN_ROWS = 10_000
#: Lists probed per query and candidates re-scored exactly per hit wanted
#: (recall@10 >= 0.95 on clustered data: benchmarks/search_speed_scale.py, tests/test_ann.py).
NPROBE = 64
REFINE = 10
#: k-means sample per list (faiss warns below 39).
TRAIN_PER_LIST = 40
ADD_BLOCK = 65_536


def _faiss() -> Any:
    import faiss  # imported late: `podembed` commands that never search do not load it

    return faiss


def lists_for(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: about sqrt(rows) (1M -> 1,000; ~1,000 vectors each)."""
    return max(1, round(math.sqrt(rows)))


def _unit(block: np.ndarray) -> np.ndarray:
    block = np.array(block, dtype=np.float32, copy=True)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    np.divide(block, norms, out=block, where=norms > 0)
    return block


def _trained(matrix: np.ndarray, folder: Path) -> Any:
    """The trained empty index: the kept one when it fits this table, else trained now and kept."""
    faiss = _faiss()
    rows, dim = matrix.shape
    path = folder / TRAINED_FILE
    want = lists_for(rows)
    try:
        kept = faiss.read_index(str(path))
        if kept.d == dim and kept.nlist * 2 >= want:
            return kept
    except RuntimeError:  # absent or unreadable: train anew
        pass
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, want, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.spherical = True  # centroids on the unit sphere, as the vectors are
    sample = min(rows, TRAIN_PER_LIST * want)
    picked = np.sort(np.random.default_rng(0).choice(rows, size=sample, replace=False))
    index.train(_unit(matrix[picked]))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    return index


def build(matrix: np.ndarray, out: Path, trained_dir: Path) -> dict[str, Any]:
    """Index every row of ``matrix`` (cosine) into ``out``, written then renamed; its definition."""
    faiss = _faiss()
    index = _trained(matrix, trained_dir)
    for s in range(0, matrix.shape[0], ADD_BLOCK):
        index.add(_unit(matrix[s : s + ADD_BLOCK]))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    faiss.write_index(index, str(tmp))
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return definition(index)


def definition(index: Any) -> dict[str, Any]:
    """What `podembed index` prints about the index."""
    return {
        "library": "faiss",
        "index": f"IVF{index.nlist},SQ8",
        "metric": "cosine (inner product of unit vectors)",
        "nprobe": NPROBE,
        "refine": f"{REFINE} x k candidates re-scored exactly",
        "vectors": int(index.ntotal),
    }


def load(path: Path, rows: int) -> Any | None:
    """The index at ``path``, memory-mapped, if it indexes exactly ``rows`` rows; else ``None``."""
    faiss = _faiss()
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return None
    return index if int(index.ntotal) == rows else None


def candidates(index: Any, q: np.ndarray, k: int, keep: np.ndarray | None) -> np.ndarray:
    """Matrix rows worth re-scoring for the top ``k`` of unit query ``q``, sorted.

    ``keep`` (a boolean per row) restricts the search to those rows inside faiss, so a
    filter never costs a hit that the lists probed hold.
    """
    faiss = _faiss()
    params = faiss.SearchParametersIVF()
    params.nprobe = min(NPROBE, int(index.nlist))
    bitmap = None  # faiss holds only a pointer into it: it must outlive the search
    if keep is not None:
        bitmap = np.packbits(keep, bitorder="little")
        params.sel = faiss.IDSelectorBitmap(keep.size, faiss.swig_ptr(bitmap))
    _, found = index.search(
        np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1), k * REFINE, params=params
    )
    rows = found[0]
    return np.sort(rows[rows >= 0])
