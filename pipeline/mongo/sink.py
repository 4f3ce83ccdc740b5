"""Writing vectors to MongoDB, in place on the chunk documents or into a collection of their own.

Document layout (both modes)::

    <vector_field>: BinData subtype 9 float32 vector (Binary.from_vector), or an array of doubles
    <meta_field>:   { model_fingerprint, instruction, text_sha256, dimension, dtype,
                      embedded_at, run_id, episode_id }

``mode = "in_place"`` (default): ``collection`` is the chunk collection; a vector is
``$set`` on the chunk's own document (found by ``id_field``, in whatever BSON type the
id is stored: string, ObjectId, integer, UUID). Other fields are never touched and no
document is ever created.

``mode = "collection"``: ``collection`` holds one document per chunk,
``_id`` = the chunk id (string), ``episode_id`` beside the vector; ``chunks_collection``
names the chunk collection the texts are checked against.

**Conditional writes.** A vector must never be stamped on a text it was not computed from.

- In place, every ``UpdateOne`` filters on the chunk id *and* ``text_field`` equal to the
  exact text that was embedded (``VectorRecord.text``). The check and the write are one
  atomic single-document update on the server: if another writer changed the text at
  any moment before, the update matches nothing and the stale vector is dropped (counted
  in ``stale_dropped``); the next incremental run sees the new text's hash and embeds it.
- In a separate collection no single-document operation spans both collections, so
  the sink checks before and after: it reads the chunks' current texts and writes only
  vectors whose text is unchanged, then reads the texts again and deletes any vector it
  has just written whose text changed in between (the delete is conditional on that
  vector's hash and run id, so it never removes a newer vector). A text changed after
  that second read is an ordinary later edit, which the stored ``text_sha256`` reveals
  and the next run fixes.

Writes are unordered ``bulk_write``s of ``UpdateOne`` ``$set``s keyed by chunk id:
idempotent, so a retried or repeated batch overwrites and never adds. ``lookup`` and
``iter_states`` project only the metadata: vectors never cross the wire to be compared.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pipeline.config import FieldMap
from pipeline.errors import TargetError
from pipeline.interfaces.checkpoint import SinkHome
from pipeline.interfaces.sink import IndexOutcome, SearchOutcome, Sink, VectorQuery, WriteOutcome
from pipeline.mongo.connection import (
    IN_PAGE,
    Connection,
    connected,
    hosts_of,
    short_message,
)
from pipeline.mongo.retry import ensure_index, guarded, is_transient, retrying
from pipeline.mongo.search import ensure_vector_index, native_filters
from pipeline.mongo.search import search as search_vectors
from pipeline.mongo.sink_options import MongoSinkOptions
from pipeline.mongo.values import (
    encode_vector,
    get_path,
    id_filter,
    id_to_str,
    one_id_filter,
    pages,
)
from pipeline.records import Chunk, DeadLetter, StoredState, VectorRecord

log = logging.getLogger(__name__)


class MongoSink(Sink):
    """Vectors in MongoDB (see the module docstring for the layout and guarantees)."""

    Options = MongoSinkOptions
    default_checkpoint = "mongo"

    @classmethod
    def home(cls, options: MongoSinkOptions) -> SinkHome:
        """The sink's database and URI; its target is ``database.collection.vector_field``."""
        return SinkHome(
            target=f"{options.database}.{options.collection}.{options.vector_field}",
            where={"database": options.database, "uri_env": options.uri_env},
        )

    @classmethod
    def check_fields(cls, options: MongoSinkOptions, fields: FieldMap, source_options: Any) -> None:
        """In place, the sink writes onto the source's documents: their field names must agree."""
        options.check_fields(fields, source_options, "sink")

    def __init__(self, options: MongoSinkOptions, dimension: int, conn: Connection) -> None:
        self.options = options
        self.dimension = dimension
        self.conn = conn
        db = conn.client[options.database]
        self.target = db[options.collection]
        self.in_place = options.mode == "in_place"
        self.chunks = self.target if self.in_place else db[options.chunks_collection]
        # Where a chunk's vector document is found: its own id field in place, _id otherwise.
        self.key_field = options.id_field if self.in_place else "_id"
        self.meta = options.meta_field
        self._lock = threading.Lock()
        self.stale_dropped = 0  # vectors dropped because the text changed meanwhile
        self.missing_skipped = 0  # vectors dropped because the chunk document is gone
        self.written = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, options: MongoSinkOptions, dimension: int, read_only: bool = False, missing_ok: bool = False
    ) -> MongoSink:
        """Connect (failing fast if the server is down) and create indexes (unless ``read_only``)."""

        def build(conn: Connection) -> MongoSink:
            sink = cls(options, dimension, conn)
            if options.create_indexes and not read_only:
                sink._indexes()
            return sink

        return connected(options, "sink", build)

    def _indexes(self) -> None:
        # Only what writes and lookups need (by chunk id). No index on the metadata: status
        # scans it anyway, and every index costs on each vector write (measured: -30%).
        o = self.options
        if self.in_place and o.id_field != "_id":
            ensure_index(self.conn, self.target, [(o.id_field, 1)])
        if not self.in_place:
            ensure_index(self.conn, self.target, [("episode_id", 1)])
            if o.id_field != "_id":
                ensure_index(self.conn, self.chunks, [(o.id_field, 1)])

    def describe(self) -> str:
        """Namespace, mode and field; never the password."""
        o = self.options
        where = f"mongodb:{hosts_of(self.conn.safe)}/{o.database}.{o.collection}"
        if self.in_place:
            return f"{where} (in place, {o.vector_field})"
        return f"{where} (vectors of {o.database}.{o.chunks_collection}, {o.vector_field})"

    # ------------------------------------------------------------------ reading state
    def _projection(self) -> dict[str, int]:
        proj = {self.key_field: 1, self.meta: 1}
        if not self.in_place:
            proj["episode_id"] = 1
        return proj

    def _state(self, doc: dict[str, Any]) -> StoredState | None:
        meta = doc.get(self.meta) if "." not in self.meta else get_path(doc, self.meta)
        if not isinstance(meta, dict) or "text_sha256" not in meta:
            return None
        cid = id_to_str(get_path(doc, self.key_field))
        return StoredState(
            chunk_id=str(cid),
            text_sha256=str(meta.get("text_sha256", "")),
            model_fingerprint=str(meta.get("model_fingerprint", "")),
            run_id=str(meta.get("run_id", "")),
            episode_id=meta.get("episode_id") or doc.get("episode_id"),
        )

    def lookup(self, chunks: list[Chunk]) -> dict[str, StoredState]:
        """Stored hash, fingerprint and run of these chunks (metadata only, no vectors)."""
        out: dict[str, StoredState] = {}
        ids = [c.chunk_id for c in chunks]
        for page in pages(ids, IN_PAGE):
            flt = {**id_filter(self.key_field, page), self.meta: {"$exists": True}}
            docs = retrying(
                self.conn,
                "looking up stored vectors",
                lambda f=flt: list(self.target.find(f, self._projection())),
            )
            for doc in docs:
                state = self._state(doc)
                if state is not None:
                    out[state.chunk_id] = state
        return out

    def iter_states(self) -> Iterator[StoredState]:
        """Every stored vector's state, streamed (metadata only)."""
        cursor = self.target.find({self.meta: {"$exists": True}}, self._projection()).batch_size(5000)
        with guarded(self.conn, "listing stored vectors"), cursor:
            for doc in cursor:
                state = self._state(doc)
                if state is not None:
                    yield state

    # ------------------------------------------------------------------ writing
    def _document(self, r: VectorRecord) -> dict[str, Any]:
        vec = np.asarray(r.embedding, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dimension:
            raise TargetError(
                f"sink: vector for {r.chunk_id} has {vec.shape[0]} dimensions, the sink "
                f"expects {self.dimension} (model.dimension)"
            )
        if not np.all(np.isfinite(vec)):
            raise TargetError(f"sink: refusing to write a non-finite vector for {r.chunk_id}")
        meta = {
            "model_fingerprint": r.model_fingerprint,
            "instruction": r.instruction,
            "text_sha256": r.text_sha256,
            "dimension": int(vec.shape[0]),
            "dtype": "float32",
            "embedded_at": r.embedded_at,
            "run_id": r.run_id,
            "episode_id": r.episode_id,
        }
        doc = {self.options.vector_field: encode_vector(vec, self.options.vector_format), self.meta: meta}
        if not self.in_place:
            doc["episode_id"] = r.episode_id
        return doc

    def _bulk(self, ops: list[Any], what: str) -> tuple[int, dict[int, str]]:
        """An unordered bulk write: (documents matched or upserted, {op index: why the server
        refused that one}). The other operations of an unordered write are applied, so a
        document the server refuses for good (over 16 MiB: code 10334; a validation rule)
        costs that chunk only; faults worth retrying are retried as a whole (idempotent)."""
        from pymongo.errors import BulkWriteError

        def attempt() -> tuple[int, dict[int, str]]:
            try:
                result = self.target.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                details = exc.details or {}
                errors = details.get("writeErrors") or []
                if not errors or details.get("writeConcernErrors") or is_transient(exc):
                    raise
                refused = {
                    int(e["index"]): "MongoDB refused the write "
                    + self.conn.scrub(f"(code {e.get('code')}): {short_message(str(e.get('errmsg')))}")
                    for e in errors
                }
                return int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0)), refused
            return int(result.matched_count) + int(result.upserted_count), {}

        return retrying(self.conn, what, attempt)

    def _refused(self, page: list[VectorRecord], refused: dict[int, str]) -> list[DeadLetter]:
        """Dead letters for the records the server refused, with its reason."""
        letters = [
            DeadLetter(
                chunk_id=page[i].chunk_id,
                field="sink",
                reason=reason,
                episode_id=page[i].episode_id,
                text_sha256=page[i].text_sha256,
            )
            for i, reason in sorted(refused.items())
        ]
        for letter in letters:
            log.warning("vector for %s not written: %s", letter.chunk_id, letter.reason)
        return letters

    def _count_dropped(self, stale: list[str], gone: list[str]) -> None:
        """Count vectors not written because their chunk's text changed or the chunk vanished."""
        with self._lock:
            self.stale_dropped += len(stale)
            self.missing_skipped += len(gone)
        if stale:
            log.warning(
                "%d vector(s) not written: the text changed while they were embedded "
                "(e.g. %s); the next run embeds the new text",
                len(stale),
                stale[0],
            )

    def write(self, records: list[VectorRecord]) -> int:
        """Write the vectors whose text is unchanged; returns how many were written."""
        return self.write_all(records).written

    def write_all(self, records: list[VectorRecord]) -> WriteOutcome:
        """Write the vectors whose text is unchanged; documents the server refuses are dead letters."""
        from pymongo import UpdateOne

        # One record per chunk id (the last wins), so a repeated batch cannot double-count.
        unique = list({r.chunk_id: r for r in records}.values())
        outcome = WriteOutcome(0)
        for page in pages(unique, self.options.write_batch):
            if self.in_place:
                ops = [
                    UpdateOne(
                        {**one_id_filter(self.options.id_field, r.chunk_id), self.options.text_field: r.text},
                        {"$set": self._document(r)},
                    )
                    for r in page
                ]
                n, refused = self._bulk(ops, "writing vectors")
                outcome.refused += self._refused(page, refused)
                applied = [r for i, r in enumerate(page) if i not in refused]
                if n < len(applied):
                    self._count_skips(applied, n)
                outcome.written += n
            else:
                n, letters = self._write_collection(page, UpdateOne)
                outcome.written += n
                outcome.refused += letters
        with self._lock:
            self.written += outcome.written
        return outcome

    def _count_skips(self, page: list[VectorRecord], matched: int) -> None:
        """Find out why some in-place updates matched nothing: text changed, or chunk gone."""
        ids = [r.chunk_id for r in page]
        current = self._current_texts(ids)
        stale = [r.chunk_id for r in page if r.chunk_id in current and current[r.chunk_id] != r.text]
        gone = [r.chunk_id for r in page if r.chunk_id not in current]
        self._count_dropped(stale, gone)
        if gone:
            log.warning("%d vector(s) not written: chunk document deleted (e.g. %s)", len(gone), gone[0])

    def _current_texts(self, chunk_ids: list[str]) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {}
        for page in pages(chunk_ids, IN_PAGE):
            flt = id_filter(o.id_field, page)
            docs = retrying(
                self.conn,
                "reading current texts",
                lambda f=flt: list(self.chunks.find(f, {o.id_field: 1, o.text_field: 1})),
            )
            out.update({str(id_to_str(get_path(d, o.id_field))): get_path(d, o.text_field) for d in docs})
        return out

    def _write_collection(self, page: list[VectorRecord], update_one: Any) -> tuple[int, list[DeadLetter]]:
        before = self._current_texts([r.chunk_id for r in page])
        fresh = [r for r in page if before.get(r.chunk_id) == r.text]
        stale = [r.chunk_id for r in page if r.chunk_id in before and before[r.chunk_id] != r.text]
        gone = [r.chunk_id for r in page if r.chunk_id not in before]
        letters: list[DeadLetter] = []
        if fresh:
            ops = [update_one({"_id": r.chunk_id}, {"$set": self._document(r)}, upsert=True) for r in fresh]
            _, refused = self._bulk(ops, "writing vectors")
            letters = self._refused(fresh, refused)
            fresh = [r for i, r in enumerate(fresh) if i not in refused]
            after = self._current_texts([r.chunk_id for r in fresh])
            changed = [r for r in fresh if after.get(r.chunk_id) != r.text]
            if changed:
                m = self.meta
                flt = {
                    "$or": [
                        {"_id": r.chunk_id, f"{m}.text_sha256": r.text_sha256, f"{m}.run_id": r.run_id}
                        for r in changed
                    ]
                }
                retrying(self.conn, "withdrawing stale vectors", lambda: self.target.delete_many(flt))
                stale += [r.chunk_id for r in changed if r.chunk_id in after]
                gone += [r.chunk_id for r in changed if r.chunk_id not in after]
                fresh = [r for r in fresh if after.get(r.chunk_id) == r.text]
        self._count_dropped(stale, gone)
        return len(fresh), letters

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove these chunks' vectors (in place: unset the fields; the chunk stays)."""
        o = self.options
        removed = 0
        for page in pages(list(chunk_ids), IN_PAGE):
            flt = id_filter(self.key_field, page)
            if self.in_place:
                flt[self.meta] = {"$exists": True}
                res = retrying(
                    self.conn,
                    "removing vectors",
                    lambda f=flt: self.target.update_many(f, {"$unset": {o.vector_field: "", self.meta: ""}}),
                )
                removed += int(res.modified_count)
            else:
                res = retrying(self.conn, "removing vectors", lambda f=flt: self.target.delete_many(f))
                removed += int(res.deleted_count)
        return removed

    # ------------------------------------------------------------------ search
    # Atlas Vector Search or an exact scan, and the index: pipeline/mongo/search.py.
    def fingerprint_counts(self) -> dict[str, int]:
        """Stored vectors per model fingerprint, counted by the server."""
        pipeline = [
            {"$match": {self.meta: {"$exists": True}}},
            {"$group": {"_id": f"${self.meta}.model_fingerprint", "n": {"$sum": 1}}},
        ]
        rows = retrying(self.conn, "counting vectors", lambda: list(self.target.aggregate(pipeline)))
        return {str(r["_id"]): int(r["n"]) for r in rows}

    def search_filters(self, fields: FieldMap) -> frozenset[str]:
        """In place, the chunk documents hold episode, podcast and date; a vectors collection, the episode."""
        return native_filters(self, fields)

    def search(self, query: VectorQuery) -> SearchOutcome:
        """``$vectorSearch`` when the server has a queryable index, else an exact scan."""
        return search_vectors(self, query)

    def ensure_search_index(self, fields: FieldMap) -> IndexOutcome:
        """Create or update the Atlas Vector Search index (or say the server has none)."""
        return ensure_vector_index(self, fields)

    def close(self) -> None:
        """Release the shared client."""
        self.conn.close()
