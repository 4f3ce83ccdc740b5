"""Vector search in MongoDB: Atlas Vector Search when the server has it, an exact scan otherwise.

**The index** (``podembed index``) is an Atlas Vector Search index named
``podembed_<vector_field>`` on the sink's collection::

    {"fields": [
        {"type": "vector", "path": "<vector_field>", "numDimensions": <model.dimension>,
         "similarity": "cosine"},
        {"type": "filter", "path": "<meta_field>.model_fingerprint"},
        {"type": "filter", "path": "<episode field>"},
        {"type": "filter", "path": "<podcast field>"},      # in place, when mapped
        {"type": "filter", "path": "<published_at field>"}  # in place, when mapped
    ]}

``similarity = "cosine"``, not ``dotProduct``: for the unit vectors podembed writes by
default (``model.normalize = true``) the two rank identically and score identically
(Atlas reports ``(1 + x) / 2`` for both), and dotProduct saves Atlas one normalization
per comparison, a negligible cost next to the graph walk. Cosine stays right when it is
not true: a config with ``normalize = false``, or vectors another tool wrote beside
ours; dotProduct would then rank long vectors first. The exact scan computes cosine too,
so both paths return the same scores.

Filter fields: the fingerprint (search compares only the configured model's vectors),
and the episode, podcast and publication date where the vector documents hold them: on
the chunk documents themselves in place, only ``episode_id`` in a separate vectors
collection (there podcast and date filters are resolved into episodes by the caller).

**Searching.** ``$vectorSearch`` with the filters as pre-filters when the index exists
and is queryable; otherwise an exact scan, announced in one line: a cursor over the
matching documents projecting only the id, the episode and the vector, decoded and
scored in blocks of ``BLOCK_ROWS``. A server without Atlas Search (a community
``mongod``, SecantusDB) answers the search-index commands with an error, which is how
support is detected.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from pipeline.config import FieldMap
from pipeline.interfaces.sink import (
    EPISODE,
    PODCAST,
    SINCE,
    IndexOutcome,
    SearchOutcome,
    VectorHit,
    VectorQuery,
)
from pipeline.mongo.connection import Connection, short_message
from pipeline.mongo.retry import guarded, retrying
from pipeline.mongo.sink_options import MongoSinkOptions
from pipeline.mongo.values import get_path, id_candidates, id_to_str


class SearchedSink(Protocol):
    """What search needs of :class:`pipeline.mongo.sink.MongoSink` (which imports this module)."""

    options: MongoSinkOptions
    dimension: int
    conn: Connection
    target: Any  # the pymongo collection holding the vectors
    in_place: bool
    key_field: str
    meta: str


log = logging.getLogger(__name__)

#: Documents decoded and scored per matrix product in an exact scan.
BLOCK_ROWS = 8192
#: Atlas: candidates examined per result; 20x k is the documented rule of thumb for recall.
CANDIDATES_PER_HIT = 20
MAX_CANDIDATES = 10_000
#: Error codes of servers without Atlas Search: CommandNotFound, CommandNotSupported,
#: unknown pipeline stage, SearchNotEnabled, "$listSearchIndexes only on Atlas".
UNSUPPORTED_CODES = {59, 115, 40324, 31082, 6047401}
_FLOAT32_DTYPE = 0x27  # first byte of a BSON binary vector (subtype 9) of float32


class _Unsupported(Exception):
    """The server has no Atlas Search."""


def index_name(sink: SearchedSink) -> str:
    """``podembed_<vector_field>`` (dots in a nested field path become underscores)."""
    return "podembed_" + sink.options.vector_field.replace(".", "_")


def filter_paths(sink: SearchedSink, fields: FieldMap) -> dict[str, str]:
    """Where each filter lives in the vector documents: ``episode``/``podcast``/``since``."""
    if not sink.in_place:
        return {EPISODE: "episode_id"}
    paths = {EPISODE: fields.episode_id}
    if fields.podcast_id:
        paths[PODCAST] = fields.podcast_id
    if fields.published_at:
        paths[SINCE] = fields.published_at
    return paths


def _fingerprint_path(sink: SearchedSink) -> str:
    return f"{sink.meta}.model_fingerprint"


def index_definition(sink: SearchedSink, fields: FieldMap) -> dict[str, Any]:
    """The Atlas Vector Search index definition for the sink's vector field."""
    filters = [_fingerprint_path(sink), *filter_paths(sink, fields).values()]
    return {
        "fields": [
            {
                "type": "vector",
                "path": sink.options.vector_field,
                "numDimensions": sink.dimension,
                "similarity": "cosine",
            },
            *({"type": "filter", "path": p} for p in dict.fromkeys(filters)),
        ]
    }


def _is_unsupported(exc: Exception) -> bool:
    code = getattr(exc, "code", None)
    return code in UNSUPPORTED_CODES


def _list_index(sink: SearchedSink) -> dict[str, Any] | None:
    """The index's description, ``None`` if absent; raises :class:`_Unsupported` without Atlas Search."""
    from pymongo.errors import OperationFailure

    def ask() -> list[dict[str, Any]]:
        try:
            return list(sink.target.list_search_indexes(index_name(sink)))
        except OperationFailure as exc:
            if _is_unsupported(exc):
                raise _Unsupported(short_message(str(exc))) from None
            raise

    found = retrying(sink.conn, "listing search indexes", ask)
    return found[0] if found else None


def ensure_vector_index(sink: SearchedSink, fields: FieldMap) -> IndexOutcome:
    """Create the vector search index, or update it if its definition differs (idempotent)."""
    from pymongo.operations import SearchIndexModel

    name = index_name(sink)
    definition = index_definition(sink, fields)
    where = f"{sink.options.database}.{sink.options.collection}"
    try:
        existing = _list_index(sink)
    except _Unsupported:
        return IndexOutcome(
            "unsupported",
            f"this MongoDB server has no Atlas Vector Search (search indexes are an Atlas feature); "
            f"`podembed search` scans exactly here. On Atlas, create index {name!r} on {where} "
            f'with this definition (Atlas UI JSON editor, or mongosh: db.getSiblingDB("'
            f'{sink.options.database}").{sink.options.collection}.createSearchIndex("{name}", '
            f'"vectorSearch", <definition>)), or run `podembed index` against the Atlas cluster.',
            {"name": name, "type": "vectorSearch", "definition": definition},
        )
    if existing is None:
        model = SearchIndexModel(definition=definition, name=name, type="vectorSearch")
        retrying(sink.conn, f"creating search index {name}", lambda: sink.target.create_search_index(model))
        status = "created"
        message = f"created vector search index {name!r} on {where}; Atlas builds it in the background"
    elif existing.get("latestDefinition") == definition:
        status = "exists"
        message = f"vector search index {name!r} on {where} is up to date ({existing.get('status', '?')})"
    else:
        retrying(
            sink.conn,
            f"updating search index {name}",
            lambda: sink.target.update_search_index(name, definition),
        )
        status = "updated"
        message = f"updated vector search index {name!r} on {where} to the new definition; Atlas rebuilds it"
    return IndexOutcome(status, message, {"name": name, "type": "vectorSearch", "definition": definition})


def _filter(sink: SearchedSink, query: VectorQuery) -> dict[str, Any]:
    """The same pre-filter for ``$vectorSearch`` and the exact scan (values are data, never syntax)."""
    paths = filter_paths(sink, query.fields)
    parts: list[dict[str, Any]] = [{_fingerprint_path(sink): {"$eq": query.fingerprint}}]
    for key, values in ((EPISODE, query.episode_ids), (PODCAST, query.podcast_ids)):
        if values:
            parts.append(_any_of(paths[key], values))
    if query.since is not None:
        parts.append({paths[SINCE]: {"$gte": query.since}})
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _any_of(path: str, values: tuple[str, ...]) -> dict[str, Any]:
    """``path`` equal to any of ``values`` in whatever BSON type the ids are stored as.

    Atlas wants one BSON type per ``$in`` list, so each type gets its own list.
    """
    by_type: dict[type, list[Any]] = {}
    for value in values:
        for typed in id_candidates(value):
            by_type.setdefault(type(typed), []).append(typed)
    ors = [{path: {"$in": typed}} for typed in by_type.values()]
    return ors[0] if len(ors) == 1 else {"$or": ors}


def _episode_path(sink: SearchedSink) -> str:
    # The episode as the sink recorded it: in the metadata (both modes).
    return f"{sink.meta}.episode_id"


def search(sink: SearchedSink, query: VectorQuery) -> SearchOutcome:
    """Top k by cosine: ``$vectorSearch`` if an index is queryable, else an exact scan."""
    reason: str
    try:
        index = _list_index(sink)
    except _Unsupported:
        reason = "this server has no Atlas Vector Search"
    else:
        if index is None:
            reason = f"no vector search index {index_name(sink)!r} (create it with `podembed index`)"
        elif not index.get("queryable", False):
            reason = f"vector search index {index_name(sink)!r} is not queryable yet ({index.get('status')})"
        else:
            return _vector_search(sink, query)
    outcome = _exact(sink, query)
    outcome.notices.insert(0, f"{reason}: scanning {outcome.scanned} vectors exactly")
    return outcome


def _vector_search(sink: SearchedSink, query: VectorQuery) -> SearchOutcome:
    vector = [float(x) for x in np.asarray(query.vector, dtype=np.float32).reshape(-1)]
    stage = {
        "index": index_name(sink),
        "path": sink.options.vector_field,
        "queryVector": vector,
        "numCandidates": min(MAX_CANDIDATES, max(query.k * CANDIDATES_PER_HIT, 100)),
        "limit": query.k,
        "filter": _filter(sink, query),
    }
    pipeline = [
        {"$vectorSearch": stage},
        {
            "$project": {
                "_id": 1,
                sink.key_field: 1,
                _episode_path(sink): 1,
                "score": {"$meta": "vectorSearchScore"},
            }
        },
    ]
    docs = retrying(sink.conn, "searching vectors", lambda: list(sink.target.aggregate(pipeline)))
    # Atlas scores cosine as (1 + cos) / 2; report the cosine itself, as the exact scan does.
    hits = [_hit(sink, d, 2.0 * float(d.get("score", 0.0)) - 1.0) for d in docs]
    return SearchOutcome(hits=hits, method="vectorSearch")


def _hit(sink: SearchedSink, doc: dict[str, Any], score: float) -> VectorHit:
    episode = get_path(doc, _episode_path(sink))
    return VectorHit(
        chunk_id=str(id_to_str(get_path(doc, sink.key_field))),
        score=score,
        episode_id=None if episode is None else str(id_to_str(episode)),
    )


def _vector(value: Any, dimension: int) -> np.ndarray | None:
    """A stored vector as float32 without a Python list in between (binary vectors)."""
    from bson.binary import Binary

    if isinstance(value, Binary) and value.subtype == 9 and len(value) > 2 and value[0] == _FLOAT32_DTYPE:
        vec = np.frombuffer(value, dtype="<f4", offset=2)
    elif isinstance(value, list):
        vec = np.asarray(value, dtype=np.float32)
    else:
        return None
    return vec if vec.shape[0] == dimension else None


def _exact(sink: SearchedSink, query: VectorQuery) -> SearchOutcome:
    q = np.asarray(query.vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    q = q / norm if norm > 0 else q
    projection = {"_id": 1, sink.key_field: 1, _episode_path(sink): 1, sink.options.vector_field: 1}
    flt = {**_filter(sink, query), sink.options.vector_field: {"$exists": True}}
    best: list[tuple[float, str, Any]] = []
    scanned = 0
    docs: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []

    def score_block() -> None:
        nonlocal best, scanned
        if not vectors:
            return
        matrix = np.vstack(vectors)
        scores = matrix @ q
        if not query.unit_vectors:
            norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
            scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
        keep = np.argsort(-scores, kind="stable")[: query.k]
        best += [(float(scores[i]), str(id_to_str(get_path(docs[i], sink.key_field))), docs[i]) for i in keep]
        best = sorted(best, key=lambda t: (-t[0], t[1]))[: query.k]
        scanned += len(vectors)
        docs.clear()
        vectors.clear()

    cursor = sink.target.find(flt, projection).batch_size(BLOCK_ROWS)
    skipped = 0
    # A scan is read once; a fault mid-way fails the search (rerun it) rather than retry silently.
    with guarded(sink.conn, "scanning vectors"), cursor:
        for doc in cursor:
            vec = _vector(get_path(doc, sink.options.vector_field), sink.dimension)
            if vec is None:
                skipped += 1
                continue
            docs.append(doc)
            vectors.append(vec)
            if len(vectors) >= BLOCK_ROWS:
                score_block()
    score_block()
    notices = []
    if skipped:
        notices.append(f"{skipped} stored vectors could not be read (not {sink.dimension} float32 values)")
    hits = [_hit(sink, doc, score) for score, _cid, doc in best]
    return SearchOutcome(hits=hits, method="exact", scanned=scanned, notices=notices)


def native_filters(sink: SearchedSink, fields: FieldMap) -> frozenset[str]:
    """The filters the vector documents can answer themselves."""
    return frozenset(filter_paths(sink, fields))
