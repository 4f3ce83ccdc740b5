"""Ranges of ``_id`` values that may span BSON types, for cutting a collection into shards.

Range operators only compare values of one type ("type bracketing"), so a range whose
ends are of one type would miss documents whose ``_id`` is of another. These filters say
"after this value within its type, or any type that sorts after it".
"""

from __future__ import annotations

from typing import Any

# BSON comparison order of _id types, as $type codes. Range operators only compare
# values of one type ("type bracketing"), so an _id range that may span types is
# written as "greater within this type, or any type that sorts after it".
_BRACKETS: list[list[int]] = [
    [-1],  # minKey
    [10],  # null
    [1, 16, 18, 19],  # numbers
    [2, 14],  # string, symbol
    [3],  # object
    [4],  # array
    [5],  # binData
    [7],  # objectId
    [8],  # bool
    [9],  # date
    [17],  # timestamp
    [11],  # regex
    [127],  # maxKey
]


def _bracket(value: Any) -> int:
    """Index in :data:`_BRACKETS` of a Python value decoded from BSON."""
    import datetime as _dt
    import re as _re
    import uuid as _uuid

    from bson import Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

    if isinstance(value, MinKey):
        return 0
    if value is None:
        return 1
    if isinstance(value, bool):
        return 8
    if isinstance(value, int | float | Int64 | Decimal128):
        return 2
    if isinstance(value, str):
        return 3
    if isinstance(value, dict):
        return 4
    if isinstance(value, list | tuple):
        return 5
    if isinstance(value, bytes | _uuid.UUID):
        return 6
    if isinstance(value, ObjectId):
        return 7
    if isinstance(value, Timestamp):
        return 10
    if isinstance(value, _dt.datetime):
        return 9
    if isinstance(value, Regex | _re.Pattern):
        return 11
    if isinstance(value, MaxKey):
        return 12
    return 6  # Binary and other binary-like values


def _types(brackets: range) -> list[int]:
    return [code for i in brackets for code in _BRACKETS[i]]


def _typed_cmp(op: str, value: Any, others: list[int]) -> dict[str, Any]:
    if not others:
        return {"_id": {op: value}}
    return {"$or": [{"_id": {op: value}}, {"_id": {"$type": others}}]}


def after(value: Any) -> dict[str, Any]:
    """``_id`` sorts strictly after ``value`` (across types)."""
    return _typed_cmp("$gt", value, _types(range(_bracket(value) + 1, len(_BRACKETS))))


def at_or_after(value: Any) -> dict[str, Any]:
    """``_id`` sorts at or after ``value`` (across types)."""
    return _typed_cmp("$gte", value, _types(range(_bracket(value) + 1, len(_BRACKETS))))


def before(value: Any) -> dict[str, Any]:
    """``_id`` sorts strictly before ``value`` (across types)."""
    return _typed_cmp("$lt", value, _types(range(0, _bracket(value))))
