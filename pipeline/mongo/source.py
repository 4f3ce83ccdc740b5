"""Reading chunks from a MongoDB collection.

- **Projection.** Only the mapped fields travel; vectors stored on the same documents
  (an in-place sink) are never read by the source.
- **Shards by episode.** ``plan`` groups the selected documents by episode on the
  server (one aggregation: episode id -> count) and packs consecutive episodes into
  shards of about ``window_chunks`` chunks. An episode larger than that is split into
  ``_id`` ranges. With ``shard_by = "id"`` (no usable episode field, or a huge number
  of one-chunk episodes) shards are plain ``_id`` ranges of ``window_chunks`` documents.
  A shard's id is a digest of its episodes, their chunk counts and its id bounds, so
  an episode that gains chunks lands in a new shard that the next run redoes.
- **Typed locators.** Episode values and ``_id`` bounds are kept in the locator as
  canonical extended JSON (``{"$oid": ...}``), so ObjectId, integer or string keys all
  round-trip exactly while the locator stays plain JSON.
- **Data is never a query.** Only episode values of an id type (string, integer,
  ObjectId, binary) go into a shard's filter, matched literally with ``$in``; a shard's
  read sends that ``$in`` alone (one indexed predicate on any server) and drops, on the
  client, a document whose episode field is an array holding one of its episodes. Documents
  whose episode id is anything else (missing, an object such as ``{"$gt": ""}``, an
  array, a BSON regex, a number with a fraction) are planned apart, into
  ``invalid_episode_ids`` shards selected by that type check, and are read once and
  dead-lettered by validation.
- **Server-side filters.** The configured ``query``, the shard and the run's
  :class:`~pipeline.engine.selection.Selection` (``--episode``, ``--podcast``, ``--since``)
  are one ``$and`` filter evaluated by the server.
- **Batched, retried reading.** A shard is fetched by one cursor (``batch_size``
  documents per round trip) as a unit: after a network fault or a step-down the
  query is retried whole, so no record is ever yielded twice or skipped. A shard is
  at most about ``window_chunks`` documents, which the run holds in memory anyway.
- **Cursor (change-proportional nights).** With ``cursor_field`` set (a field every write
  moves forward: ``updated_at``, or ``_id`` for ObjectIds when documents are only ever
  inserted), a run's snapshot is the field's highest value on the server when the run
  starts; the next incremental night reads only documents at or above that mark minus
  ``cursor_overlap_s`` (writes during the run, clocks slightly behind). The bound is a
  typed value read from the server, never text from a config or a document. A cursor
  sees no deletions and no update that left the field alone: the full sweep does.
- **Ids.** ObjectId and UUID ids become their string form as chunk ids; writing back
  matches every BSON type a string may stand for (see ``pipeline.mongo.values.id_candidates``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pipeline.config import FieldMap
from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError, SourceError, TargetError
from pipeline.interfaces.source import ChangePlan, Source
from pipeline.mongo.connection import (
    IN_PAGE,
    Connection,
    ConnectionOptions,
    check_field,
    check_name,
    connected,
    hosts_of,
)
from pipeline.mongo.duplicates import duplicate_ids
from pipeline.mongo.id_ranges import after, at_or_after, before
from pipeline.mongo.retry import ensure_index, retrying
from pipeline.mongo.values import (
    ID_TYPES,
    and_filter,
    from_ejson,
    get_path,
    id_filter,
    id_to_str,
    is_id_value,
    lacks_id_type,
    literal_in,
    literal_values,
    pages,
    to_ejson,
)
from pipeline.records import RawRecord, ShardSpec

log = logging.getLogger(__name__)

SAMPLE_DOCS = 50  # documents inspected at open to check the field mapping


@dataclass(slots=True)
class MongoSourceOptions(ConnectionOptions):
    """``[source]`` options for ``kind = "mongo"``."""

    database: str = ""
    collection: str = ""
    # An extra filter every read applies, e.g. { status = "published" } (MongoDB query syntax).
    query: dict[str, Any] = field(default_factory=dict)
    # Documents per page of a shard's cursor.
    batch_size: int = 1000
    # "episode": shards are groups of whole episodes; "id": shards are _id ranges.
    shard_by: Literal["episode", "id"] = "episode"
    # Create the indexes reads need (episode field, published_at, cursor_field) if missing.
    create_indexes: bool = True
    # A field every insert and update moves forward (a date such as "updated_at", or "_id"
    # holding ObjectIds when documents are only inserted): incremental nights read only the
    # documents at or above the last completed run's mark. "": every night reads everything.
    cursor_field: str = ""
    # The mark is lowered by this much (dates and ObjectIds): writes that landed while the
    # last run ran, or stamped by a clock slightly behind the server's, are read again.
    cursor_overlap_s: float = 300.0

    def validate(self, prefix: str) -> None:
        """Names must be set and sizes positive."""
        self.validate_connection(prefix)
        check_name(self.database, f"{prefix}.database", "database name")
        check_name(self.collection, f"{prefix}.collection", "collection name")
        if self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size: must be at least 1")
        for key in self.query:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{prefix}.query: keys must be field names or operators")
        if self.cursor_field:
            check_field(self.cursor_field, f"{prefix}.cursor_field")
        if not self.cursor_overlap_s >= 0:
            raise ConfigError(f"{prefix}.cursor_overlap_s: must be a number of seconds, 0 or more")


class MongoSource(Source):
    """Chunks from one MongoDB collection."""

    Options = MongoSourceOptions

    def __init__(
        self, options: MongoSourceOptions, fields: FieldMap, window_chunks: int, conn: Connection
    ) -> None:
        self.options = options
        self.fields = fields
        self.window = max(1, window_chunks)
        self.conn = conn
        self.mapping = fields.mapped()  # our name -> document field path
        self.collection = conn.client[options.database][options.collection]
        self.projection = {path: 1 for path in self.mapping.values()}
        self.projection["_id"] = 1
        self._plan_cursor: Any = None  # the cursor bound plan_since is planning with

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, options: MongoSourceOptions, fields: FieldMap, window_chunks: int) -> MongoSource:
        """Connect, check the collection exists and that documents carry the mapped fields."""
        for ours, path in fields.mapped().items():
            check_field(path, f"source.fields.{ours}")

        def build(conn: Connection) -> MongoSource:
            source = cls(options, fields, window_chunks, conn)
            source._check()
            if options.create_indexes:
                source._indexes()
            return source

        return connected(options, "source", build)

    def _check(self) -> None:
        opts = self.options
        db = self.conn.client[opts.database]
        names = retrying(
            self.conn,
            "listing collections",
            lambda: db.list_collection_names(filter={"name": opts.collection}),
        )
        if opts.collection not in names:
            raise SourceError(
                f"source.collection: no collection {opts.collection!r} in database "
                f"{opts.database!r} at {self.conn.safe}; check source.database/source.collection "
                "(load the sample corpus with `podembed load-sample`)"
            )
        sample = retrying(
            self.conn,
            "sampling documents",
            lambda: list(self.collection.find(self.options.query, self.projection).limit(SAMPLE_DOCS)),
        )
        if not sample:
            return  # an empty collection is fine: nothing to do yet
        for ours in ("chunk_id", "episode_id", "text"):
            path = self.mapping[ours]
            if path == "_id":
                continue
            if all(get_path(doc, path) is None for doc in sample):
                raise SourceError(
                    f"source.fields.{ours}: field {path!r} not found in the first {len(sample)} "
                    f"documents of {opts.database}.{opts.collection}; set source.fields.{ours} "
                    "to the field that holds it"
                )

    def _indexes(self) -> None:
        wanted = []
        if self.options.shard_by == "episode":
            wanted.append(self.mapping["episode_id"])
        if self.mapping.get("chunk_id", "_id") != "_id":
            wanted.append(self.mapping["chunk_id"])
        if "published_at" in self.mapping:
            wanted.append(self.mapping["published_at"])
        if self.options.cursor_field and self.options.cursor_field != "_id":
            wanted.append(self.options.cursor_field)
        for path in wanted:
            ensure_index(self.conn, self.collection, [(path, 1)])

    def describe(self) -> str:
        """Host and namespace, never the password."""
        o = self.options
        return f"mongodb:{hosts_of(self.conn.safe)}/{o.database}.{o.collection}"

    def version(self) -> str:
        """Identifies *what* is read (namespace, query, fields, sharding), not its content.

        MongoDB has no cheap content version. Shard ids carry the chunk count of each
        episode, so a resumed run redoes a shard whose episodes gained or lost chunks;
        a text edited in place is caught by the next incremental run (its hash differs).
        """
        o = self.options
        doc = {
            "ns": f"{o.database}.{o.collection}",
            "query": to_ejson(o.query),
            "fields": self.mapping,
            "shard_by": o.shard_by,
            "window": self.window,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- filters
    def _selection_filter(self, selection: Selection) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if selection.episode_ids:
            parts.append(id_filter(self.mapping["episode_id"], selection.episode_ids))
        if selection.podcast_ids:
            if "podcast_id" not in self.mapping:
                raise SourceError("--podcast needs a podcast field: set source.fields.podcast_id")
            parts.append(id_filter(self.mapping["podcast_id"], selection.podcast_ids))
        if selection.since is not None:
            if "published_at" not in self.mapping:
                raise SourceError("--since needs a date field: set source.fields.published_at")
            parts.append({self.mapping["published_at"]: {"$gte": selection.since}})
        return and_filter(*parts)

    def _base_filter(self, selection: Selection) -> dict[str, Any]:
        cursor = self._cursor_filter(self._plan_cursor) if self._plan_cursor is not None else {}
        return and_filter(self.options.query, self._selection_filter(selection), cursor)

    @staticmethod
    def _range_filter(locator: dict[str, Any]) -> dict[str, Any]:
        lo, hi = locator.get("id_gte"), locator.get("id_lt")
        return and_filter(
            at_or_after(from_ejson(lo)) if lo is not None else {},
            before(from_ejson(hi)) if hi is not None else {},
        )

    def _episodes_filter(self, values: list[Any]) -> dict[str, Any]:
        try:
            return literal_in(self.mapping["episode_id"], values)
        except ValueError as exc:
            # Plans only ever hold id-typed episode values; a locator that holds anything
            # else did not come from plan() and is refused rather than run as a query.
            raise SourceError(f"shard locator: episode value not usable in a query ({exc})") from None

    def _episodes_in(self, values: list[Any]) -> dict[str, Any]:
        """``{episode: {"$in": values}}`` alone: one indexed predicate, so that every server
        (the test server's planner included, which gives up on ``$and``/``$expr``) reads a
        shard through the episode index. The type check that :meth:`_episodes_filter`
        makes on the server is made by :meth:`read` on the documents instead."""
        try:
            return {self.mapping["episode_id"]: {"$in": literal_values(values)}}
        except ValueError as exc:
            # Plans only ever hold id-typed episode values; a locator that holds anything
            # else did not come from plan() and is refused rather than run as a query.
            raise SourceError(f"shard locator: episode value not usable in a query ({exc})") from None

    def _shard_filter(self, locator: dict[str, Any]) -> dict[str, Any]:
        parts = []
        if "episodes" in locator:
            # Without the server-side type check (read() makes it): see _episodes_in.
            parts.append(self._episodes_in([from_ejson(v) for v in locator["episodes"]]))
        elif locator.get("invalid_episode_ids"):
            parts.append(lacks_id_type(self.mapping["episode_id"]))
        parts.append(self._range_filter(locator))
        if "cursor_gte" in locator:
            parts.append(self._cursor_filter(_cursor_value(from_ejson(locator["cursor_gte"]))))
        return and_filter(*parts)

    def _cursor_filter(self, bound: Any) -> dict[str, Any]:
        # A typed value read from the server; $gte compares only values of its own BSON type.
        return {self.options.cursor_field: {"$gte": bound}}

    # ------------------------------------------------------ change detection
    def snapshot(self) -> dict[str, Any] | None:
        """The cursor field's highest value on the server now (``None`` without a cursor)."""
        path = self.options.cursor_field
        if not path:
            return None
        docs = retrying(
            self.conn,
            "reading the cursor's high-water mark",
            lambda: list(self.collection.find({path: {"$exists": True}}, {path: 1}).sort(path, -1).limit(1)),
        )
        mark = get_path(docs[0], path) if docs else None
        if mark is not None and _cursor_value(mark) is None:
            log.warning(
                "source.cursor_field: %r holds %s values, not dates, ObjectIds or numbers; "
                "every night reads everything",
                path,
                type(mark).__name__,
            )
            return None
        return {"cursor_field": path, "mark": to_ejson(mark) if mark is not None else None}

    def plan_since(self, selection: Selection, since: dict[str, Any]) -> ChangePlan:
        """Shards of the documents whose cursor field is at or above the last mark, less the overlap."""
        mark = from_ejson(since["mark"]) if since.get("mark") is not None else None
        if since.get("cursor_field") != self.options.cursor_field or mark is None:
            return ChangePlan(shards=self.plan(selection), may_have_removed=None)
        bound = _lowered(mark, self.options.cursor_overlap_s)
        self._plan_cursor = bound
        try:
            shards = self.plan(selection)
        finally:
            self._plan_cursor = None
        changed = sum(s.estimated_chunks for s in shards)
        total = self.count()
        return ChangePlan(
            shards=shards,
            unchanged=max(0, total - changed) if total is not None else 0,
            changed_units=[f"{self.options.cursor_field} >= {bound}"],
            may_have_removed=None,  # a cursor cannot see deletions
        )

    def count(self) -> int | None:
        """Documents the configured query selects (the collection's metadata when no query)."""
        if not self.options.query:
            return int(retrying(self.conn, "counting documents", self.collection.estimated_document_count))
        query = self.options.query
        return int(retrying(self.conn, "counting documents", lambda: self.collection.count_documents(query)))

    # ----------------------------------------------------------------- planning
    def plan(self, selection: Selection) -> list[ShardSpec]:
        """Shards of whole episodes (or ``_id`` ranges) of about ``window_chunks`` chunks."""
        base = self._base_filter(selection)
        if self.options.shard_by == "id":
            return [self._spec(b, {"counts": [n]}, n) for b, n in self._id_ranges(base)]
        episode_path = self.mapping["episode_id"]
        # Episode values that are not of an id type are grouped under null (never
        # returned, never queried): their documents are planned by type below.
        pipeline = [
            {"$match": base} if base else {"$match": {}},
            {
                "$group": {
                    "_id": {
                        "$cond": [
                            {"$in": [{"$type": f"${episode_path}"}, ID_TYPES]},
                            f"${episode_path}",
                            None,
                        ]
                    },
                    "n": {"$sum": 1},
                }
            },
            {"$sort": {"_id": 1}},
        ]
        groups = retrying(
            self.conn,
            "planning shards by episode",
            lambda: list(self.collection.aggregate(pipeline, allowDiskUse=True)),
        )
        shards: list[ShardSpec] = []
        pending: list[tuple[Any, int]] = []
        pending_n = 0

        def flush() -> None:
            nonlocal pending, pending_n
            if pending:
                shards.append(
                    self._spec(
                        {"episodes": [to_ejson(e) for e, _ in pending]},
                        {"counts": [n for _, n in pending]},
                        pending_n,
                    )
                )
            pending, pending_n = [], 0

        invalid = 0
        for g in groups:
            episode, n = g["_id"], int(g["n"])
            if episode is None:
                invalid += n
                continue
            if n > self.window:
                flush()
                # One large episode: split it into _id ranges so memory stays bounded.
                ep_filter = and_filter(base, self._episodes_filter([episode]))
                for bounds, count in self._id_ranges(ep_filter):
                    shards.append(
                        self._spec({"episodes": [to_ejson(episode)], **bounds}, {"counts": [count]}, count)
                    )
                continue
            if pending_n + n > self.window:
                flush()
            pending.append((episode, n))
            pending_n += n
        flush()
        if invalid:
            shards += self._invalid_shards(base, invalid)
        return shards

    def _invalid_shards(self, base: dict[str, Any], n: int) -> list[ShardSpec]:
        """Shards of the documents whose episode id is missing or not of an id type.

        They are selected by type, never by value, and validation dead-letters them.
        """
        marker = {"invalid_episode_ids": True}
        if n <= self.window:
            return [self._spec(marker, {"counts": [n]}, n)]
        flt = and_filter(base, lacks_id_type(self.mapping["episode_id"]))
        return [self._spec({**marker, **b}, {"counts": [c]}, c) for b, c in self._id_ranges(flt)]

    def _spec(self, locator: dict[str, Any], extra: dict[str, Any], n: int) -> ShardSpec:
        if self._plan_cursor is not None:
            # Reading the shard applies the same bound, so a resumed run reads the same documents.
            locator = {**locator, "cursor_gte": to_ejson(self._plan_cursor)}
        ident = json.dumps({"loc": locator, **extra}, sort_keys=True)
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        prefix = "ep" if "episodes" in locator else "bad" if locator.get("invalid_episode_ids") else "id"
        return ShardSpec(shard_id=f"{prefix}-{digest}", locator=locator, estimated_chunks=n)

    def _id_ranges(self, flt: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
        """Cut the matching documents into ``_id`` ranges of ``window_chunks`` (reads ids only).

        The first range is open below and the last open above, so documents inserted
        later outside the planned span still belong to a shard.
        """
        starts: list[Any] = []
        counts: list[int] = []
        last: Any = None
        while True:
            page_filter = and_filter(flt, after(last)) if starts else flt
            docs = retrying(
                self.conn,
                "planning shards by _id",
                lambda pf=page_filter: list(
                    self.collection.find(pf, {"_id": 1}).sort("_id", 1).limit(self.window)
                ),
            )
            if not docs:
                break
            starts.append(docs[0]["_id"])
            counts.append(len(docs))
            last = docs[-1]["_id"]
            if len(docs) < self.window:
                break
        ranges = []
        for i, n in enumerate(counts):
            lo = to_ejson(starts[i]) if i > 0 else None
            hi = to_ejson(starts[i + 1]) if i + 1 < len(starts) else None
            ranges.append(({"id_gte": lo, "id_lt": hi}, n))
        return ranges

    # ------------------------------------------------------------------ reading
    def read(self, shard: ShardSpec, selection: Selection) -> Iterator[RawRecord]:
        """The shard's documents (mapped fields only), fetched by one batched cursor.

        The shard is fetched whole (it is at most about ``window_chunks`` documents,
        which the run holds in memory anyway) so that a transient fault simply retries
        the query: no record is ever yielded twice or skipped.
        """
        flt = self._read_filter(shard, selection)
        o = self.options
        docs = retrying(
            self.conn,
            f"reading shard {shard.shard_id}",
            lambda: list(self.collection.find(flt, self.projection).sort("_id", 1).batch_size(o.batch_size)),
        )
        where = f"{o.database}.{o.collection}"
        by_episode = "episodes" in shard.locator
        episode_path = self.mapping["episode_id"]
        for doc in docs:
            # An array holding one of the shard's episodes matches $in; such a document is
            # planned into (and dead-lettered by) the invalid-episode-id shard, not here.
            if by_episode and not is_id_value(get_path(doc, episode_path)):
                continue
            yield self._record(doc, where)

    def _read_filter(self, shard: ShardSpec, selection: Selection) -> dict[str, Any]:
        """The server-side filter of one shard's read: a lone ``$in`` on the episode field
        for a plain episode shard, so that it runs off the episode index."""
        return and_filter(self._base_filter(selection), self._shard_filter(shard.locator))

    def _record(self, doc: dict[str, Any], where: str) -> RawRecord:
        fields = {ours: get_path(doc, path) for ours, path in self.mapping.items()}
        fields["chunk_id"] = id_to_str(fields.get("chunk_id"))
        if fields.get("episode_id") is not None:
            fields["episode_id"] = id_to_str(fields["episode_id"])
        if fields.get("podcast_id") is not None:
            fields["podcast_id"] = id_to_str(fields["podcast_id"])
        return RawRecord(fields=fields, position=f"{where} _id={id_to_str(doc['_id'])!s}")

    # -------------------------------------------------------------- id queries
    def duplicate_ids(self, selection: Selection) -> dict[str, int]:
        """Chunk ids shared by more than one document the configured ``query`` selects
        (see :func:`pipeline.mongo.duplicates.duplicate_ids`; the selection does not narrow it)."""
        o = self.options
        return duplicate_ids(self.conn, self.collection, o.query, self.mapping["chunk_id"], o.batch_size)

    def existing_ids(self, chunk_ids: Iterable[str]) -> set[str]:
        """Which of these ids are on a document the configured ``query`` still selects."""
        path = self.mapping["chunk_id"]
        found: set[str] = set()
        for page in pages(list(chunk_ids), IN_PAGE):
            flt = and_filter(self.options.query, id_filter(path, page))
            docs = retrying(
                self.conn,
                "checking which chunks exist",
                lambda f=flt: list(self.collection.find(f, {path: 1, "_id": 1})),
            )
            for doc in docs:
                found.add(str(id_to_str(get_path(doc, path))))
        return found

    def distinct_values(self, name: str, among: Iterable[str] | None = None) -> set[str] | None:
        """Distinct values of one mapped field on the documents ``query`` selects (``among``:
        only those asked, matched as ids are); ``None`` when the server cannot list them."""
        path = self.mapping.get(name)
        if path is None:
            return None
        flt = self.options.query if among is None else and_filter(self.options.query, id_filter(path, among))
        try:
            values = retrying(
                self.conn, f"listing {name} values", lambda: self.collection.distinct(path, flt)
            )
        except TargetError:
            if among is not None:
                raise
            return None  # e.g. more distinct values than one reply holds: no suggestions then
        return {str(id_to_str(v)) for v in values if v is not None and is_id_value(v)}

    def close(self) -> None:
        """Release the shared client."""
        self.conn.close()


def _cursor_value(value: Any) -> Any:
    """``value`` when a cursor may compare with it (a date, an ObjectId, a number), else ``None``."""
    from bson import ObjectId, Timestamp

    if isinstance(value, bool):
        return None
    if isinstance(value, datetime | ObjectId | Timestamp | int | float):
        return value
    return None


def _lowered(mark: Any, overlap_s: float) -> Any:
    """The mark less the overlap: dates and ObjectIds by time; numbers are versions, kept as is."""
    from bson import ObjectId, Timestamp

    if isinstance(mark, datetime):
        return mark - timedelta(seconds=overlap_s)
    if isinstance(mark, ObjectId):
        return ObjectId.from_datetime(mark.generation_time - timedelta(seconds=overlap_s))
    if isinstance(mark, Timestamp):
        return Timestamp(max(0, mark.time - int(overlap_s)), 0)
    return mark
