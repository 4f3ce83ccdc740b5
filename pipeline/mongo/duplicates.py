"""Chunk ids that more than one document holds, including ids equal only as strings.

A chunk id is a key across the collection: a run of one episode dead-letters the same
duplicates a full run does. Ids count as equal when their string forms are (``1`` and
``"1"``, an ObjectId and its hex string, a UUID and its text form), because that string
is the chunk id.
"""

from __future__ import annotations

from typing import Any

from pipeline.mongo.connection import IN_PAGE, Connection
from pipeline.mongo.retry import retrying
from pipeline.mongo.values import (
    TYPED_LOOKING,
    and_filter,
    get_path,
    has_id_type,
    id_to_str,
    pages,
    typed_forms,
)


def duplicate_ids(
    conn: Connection, collection: Any, query: dict[str, Any], path: str, batch_size: int = 1000
) -> dict[str, int]:
    """Chunk ids shared by more than one document the configured ``query`` selects.

    A chunk id is a key across the collection, so the run's selection does not narrow
    the check: a run of one episode dead-letters the same duplicates a full run does.
    Ids count as equal when their string forms are (``1`` and ``"1"``, an ObjectId and
    its hex string, a UUID and its text form), because that string is the chunk id.
    """
    found: dict[str, int] = {}
    if path != "_id":  # _id is unique within one BSON type
        pipeline = [
            {"$match": and_filter(query, has_id_type(path))},
            {"$group": {"_id": f"${path}", "n": {"$sum": 1}}},
            {"$match": {"n": {"$gt": 1}}},
        ]
        rows = retrying(
            conn,
            "finding duplicate chunk ids",
            lambda: list(collection.aggregate(pipeline, allowDiskUse=True)),
        )
        for r in rows:
            key = id_to_str(r["_id"])
            if isinstance(key, int | str):
                found[str(key)] = found.get(str(key), 0) + int(r["n"])
    found.update(_cross_type_duplicates(conn, collection, query, path, batch_size))
    return found


def _cross_type_duplicates(
    conn: Connection, collection: Any, query: dict[str, Any], path: str, batch_size: int
) -> dict[str, int]:
    """Ids whose string form is held by a string and by a typed value (int, ObjectId, UUID).

    Counts both sides, reads the smaller one (ids only) and looks its string forms up
    on the other side: nothing is read when the collection uses one id type.
    """
    strings = and_filter(query, {path: {"$regex": TYPED_LOOKING}})
    typed = and_filter(query, {path: {"$type": ["int", "long", "objectId", "binData"]}})
    sizes = []
    for name, flt in (("string", strings), ("typed", typed)):
        sizes.append(
            retrying(conn, f"counting {name} chunk ids", lambda f=flt: collection.count_documents(f))
        )
    if not all(sizes):
        return {}
    small, other_type = (strings, "typed") if sizes[0] <= sizes[1] else (typed, "string")
    counts: dict[str, int] = {}

    def keys_of(flt: dict[str, Any]) -> list[str]:
        docs = retrying(
            conn,
            "reading chunk ids",
            lambda: list(collection.find(flt, {path: 1, "_id": 1}).batch_size(batch_size)),
        )
        keys = []
        for doc in docs:
            key = id_to_str(get_path(doc, path))
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if isinstance(key, str):
                keys.append(key)
        return keys

    mine = keys_of(small)
    theirs: list[str] = []
    for page in pages(sorted(set(mine)), IN_PAGE):
        values: list[Any] = []
        for key in page:
            values += typed_forms(key) if other_type == "typed" else [key]
        if values:
            theirs += keys_of(and_filter(query, {path: {"$in": values}}))
    for key in mine + theirs:
        counts[key] = counts.get(key, 0) + 1
    # A key found on the other side is held by both a string and a typed value.
    return {k: counts[k] for k in set(theirs)}
