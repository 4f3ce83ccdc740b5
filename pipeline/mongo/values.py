"""BSON values as the pipeline sees them: typed chunk ids, field paths, extended JSON.

Chunk ids are strings in the pipeline; MongoDB ids may be ObjectIds, integers or UUIDs.
:func:`id_candidates` turns a string id back into every BSON value it may have come from,
so writes and lookups match the original document with ``{"_id": {"$in": candidates}}``.

Values read from the data are never query syntax. Only values of :data:`ID_TYPES`
(strings, integers, ObjectIds, binary ids) are ever placed into a filter, and only
under ``$in``, where they match literally. Objects (``{"$gt": ""}``), arrays and BSON
regexes, which ``$in`` would treat as operators, element matches or patterns, are
recognised by their type on the server (:func:`has_id_type`, :func:`lacks_id_type`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
_INT = re.compile(r"^-?[0-9]{1,19}$")


def id_to_str(value: Any) -> Any:
    """A chunk id as the pipeline sees it: ObjectIds and UUIDs become strings.

    Strings and integers pass through (validation turns integers into strings);
    anything else is returned unchanged, and validation dead-letters it.
    """
    from bson import ObjectId
    from bson.binary import Binary

    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4):
        try:
            return str(value.as_uuid(value.subtype))
        except ValueError:
            return value
    return value


def id_candidates(chunk_id: str) -> list[Any]:
    """Every BSON value whose string form is ``chunk_id`` (string first)."""
    from bson import ObjectId
    from bson.binary import Binary, UuidRepresentation

    out: list[Any] = [chunk_id]
    if _HEX24.match(chunk_id):
        out.append(ObjectId(chunk_id))
    elif _INT.match(chunk_id):
        n = int(chunk_id)
        if -(2**63) <= n < 2**63 and str(n) == chunk_id:
            out.append(n)
    else:
        try:
            u = uuid.UUID(chunk_id)
        except ValueError:
            pass
        else:
            if str(u) == chunk_id:
                out.append(Binary.from_uuid(u, UuidRepresentation.STANDARD))
    return out


def id_filter(field: str, ids: Iterable[str]) -> dict[str, Any]:
    """``{field: {"$in": [...every typed form...]}}`` for these string ids (chunk, episode, podcast)."""
    values: list[Any] = []
    for cid in ids:
        values.extend(id_candidates(cid))
    return {field: {"$in": values}}


# BSON types (``$type`` names) whose values may identify a chunk or an episode. They are
# the only values read from the data that a filter ever holds.
ID_TYPES = ["string", "int", "long", "objectId", "binData"]
# Strings that are the string form of an int, an ObjectId or a UUID (what id_to_str gives):
# only these can collide with a typed id. A constant pattern, never built from data.
TYPED_LOOKING = (
    r"^(?:-?[0-9]{1,19}|[0-9a-f]{24}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)


def is_id_value(value: Any) -> bool:
    """Whether ``value`` (decoded from BSON) is of :data:`ID_TYPES`: safe to match literally."""
    from bson import ObjectId
    from bson.binary import Binary

    if isinstance(value, bool):
        return False
    return isinstance(value, str | int | ObjectId | Binary | uuid.UUID)


def _type_in(path: str) -> dict[str, Any]:
    # Aggregation's $type sees the whole value (an array is "array"), unlike the query
    # operator $type, which also matches an array by the type of its elements.
    return {"$in": [{"$type": f"${path}"}, ID_TYPES]}


def has_id_type(path: str) -> dict[str, Any]:
    """Filter: the value at ``path`` is a single value of :data:`ID_TYPES` (not an array holding one)."""
    return {"$expr": _type_in(path)}


def lacks_id_type(path: str) -> dict[str, Any]:
    """Filter: the value at ``path`` is missing, null, or of any type outside :data:`ID_TYPES`."""
    return {"$expr": {"$not": [_type_in(path)]}}


def literal_in(path: str, values: Iterable[Any]) -> dict[str, Any]:
    """``{path: {"$in": values}}`` for values of :data:`ID_TYPES` only, matched as whole values.

    Raises :class:`ValueError` for any other value: it would be read as an operator,
    a pattern or an element match.
    """
    return {"$and": [{path: {"$in": literal_values(values)}}, has_id_type(path)]}


def literal_values(values: Iterable[Any]) -> list[Any]:
    """``values`` as a list, each checked to be of :data:`ID_TYPES` (safe inside ``$in``).

    Raises :class:`ValueError` for any other value: it would be read as an operator,
    a pattern or an element match.
    """
    kept = list(values)
    for v in kept:
        if not is_id_value(v):
            raise ValueError(f"{type(v).__name__} value {v!r:.80} cannot be matched literally")
    return kept


def one_id_filter(field: str, chunk_id: str) -> dict[str, Any]:
    """Match one chunk id in whatever BSON type it is stored as."""
    cands = id_candidates(chunk_id)
    return {field: cands[0]} if len(cands) == 1 else {field: {"$in": cands}}


def get_path(doc: dict[str, Any], path: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; ``None`` when any step is missing."""
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def pages(items: list[T], size: int) -> Iterable[list[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- extended JSON


def to_ejson(value: Any) -> Any:
    """A BSON value as plain JSON data that keeps its type (``{"$oid": ...}`` and so on)."""
    from bson import json_util

    return json.loads(json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS))


def from_ejson(data: Any) -> Any:
    """Inverse of :func:`to_ejson`."""
    from bson import json_util

    return json_util.loads(json.dumps(data), json_options=json_util.CANONICAL_JSON_OPTIONS)


def utcnow() -> datetime:
    """Local UTC time, millisecond precision (what BSON dates keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso_text(value: Any) -> str:
    """A stored date as ISO text (anything else as its string; missing as "")."""
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def and_filter(*parts: dict[str, Any]) -> dict[str, Any]:
    """The conjunction of the non-empty filters (``{}`` when none is left)."""
    kept = [p for p in parts if p]
    if not kept:
        return {}
    return kept[0] if len(kept) == 1 else {"$and": kept}


def typed_forms(chunk_id: str) -> list[Any]:
    """The non-string BSON values whose string form is ``chunk_id`` (both UUID layouts)."""
    from bson.binary import Binary, UuidRepresentation

    forms = id_candidates(chunk_id)[1:]
    for form in list(forms):
        if isinstance(form, Binary) and form.subtype == 4:
            forms.append(Binary.from_uuid(form.as_uuid(), UuidRepresentation.PYTHON_LEGACY))
    return forms


def encode_vector(vector: np.ndarray, fmt: str) -> Any:
    """A float32 vector as BSON: a binary vector (default) or a list of doubles."""
    from bson.binary import Binary, BinaryVectorDtype

    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if fmt == "array":
        return [float(x) for x in v]
    return Binary.from_vector(v, BinaryVectorDtype.FLOAT32)


def decode_vector(value: Any) -> np.ndarray:
    """A stored vector (binary vector or array) back as float32."""
    from bson.binary import Binary

    if isinstance(value, Binary) and value.subtype == 9:
        return np.asarray(value.as_vector().data, dtype=np.float32)
    return np.asarray(value, dtype=np.float32)
