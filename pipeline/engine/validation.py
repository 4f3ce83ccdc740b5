"""Turning raw source records into chunks, or into dead letters with a reason.

A bad record is never fatal: it becomes a :class:`DeadLetter` naming the record, the
field and what to fix, and the run goes on.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from pipeline.records import Chunk, DeadLetter, RawRecord, text_sha256


def _as_text(value: Any) -> tuple[str | None, str | None]:
    """(text, problem): decode bytes strictly and reject lone surrogates."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"invalid UTF-8 at byte {exc.start}: fix the encoding of the source text"
    if not isinstance(value, str):
        return None, f"text is {type(value).__name__}, not a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, (
            f"lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start}: "
            "the text is not valid Unicode"
        )
    return value, None


# Control (Cc: NUL, ...), format (Cf: zero-width space/joiners, BOM, soft hyphen) and separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(text: str) -> bool:
    """True when no character would show: the model would embed nothing (stops at the first visible)."""
    return all(unicodedata.category(ch) in _INVISIBLE for ch in text)


# Letters that draw nothing: Hangul fillers and the blank Braille pattern (used as padding).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _no_content(text: str) -> bool:
    """True when no character is a letter, a digit or a symbol (emoji, currency, math):
    punctuation, combining marks, controls, format characters and spaces alone say nothing
    the model could embed (stops at the first content character)."""
    return not any(unicodedata.category(ch)[0] in "LNS" and ch not in _BLANK_LETTERS for ch in text)


def _kind(value: Any) -> str:
    """What a value read from the data is, in words a user knows (for dead-letter reasons)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a floating-point number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    # A BSON regex decodes to bson.Regex (or re.Pattern); named here without importing bson.
    if isinstance(value, re.Pattern) or type(value).__name__ == "Regex":
        return "a regular expression"
    if isinstance(value, datetime):
        return "a date"
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary data"
    return f"a value of type {type(value).__name__}"


def _optional(value: Any, kind: type) -> Any:
    if value is None:
        return None
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is datetime and isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def validate(record: RawRecord, duplicates: dict[str, int]) -> Chunk | DeadLetter:
    """Check one record; return a :class:`Chunk` or the :class:`DeadLetter` explaining why not."""
    f = record.fields
    cid = f.get("chunk_id")
    if isinstance(cid, int) and not isinstance(cid, bool):
        cid = str(cid)
    if not isinstance(cid, str) or not cid.strip():
        reason = "chunk id is missing or empty: give every chunk a unique id"
        if cid is not None and not isinstance(cid, str):
            reason = f"chunk id is {_kind(cid)}, not a string or an integer: give every chunk a unique id"
        return DeadLetter(
            chunk_id=f"<no id: {record.position}>",
            field="chunk_id",
            reason=reason,
            position=record.position,
        )
    episode = f.get("episode_id")
    raw_text = f.get("text")
    sha = None
    if isinstance(raw_text, str):
        try:
            sha = text_sha256(raw_text)
        except UnicodeEncodeError:
            sha = None

    def dead(field: str, reason: str) -> DeadLetter:
        return DeadLetter(
            chunk_id=cid,
            field=field,
            reason=reason,
            episode_id=episode if isinstance(episode, str) else None,
            text_sha256=sha,
            position=record.position,
        )

    if cid in duplicates:
        return dead(
            "chunk_id",
            f"duplicate chunk id: {duplicates[cid]} records share it; make ids unique",
        )
    if isinstance(episode, int) and not isinstance(episode, bool):
        episode = str(episode)
    if episode is None:
        return dead(
            "episode_id", "episode id is missing (no such field, or null): give every chunk its episode"
        )
    if not isinstance(episode, str):
        return dead(
            "episode_id",
            f"episode id is {_kind(episode)}, not a string or an integer: store episode ids as strings",
        )
    if not episode.strip():
        return dead("episode_id", "episode id is empty: give every chunk its episode")
    if raw_text is None:
        return dead("text", "text is missing (null)")
    text, problem = _as_text(raw_text)
    if problem is not None or text is None:
        return dead("text", problem or "text is unreadable")
    if not text.strip():
        return dead("text", "text is empty or whitespace only")
    if _invisible(text):
        return dead(
            "text",
            "text is empty or whitespace only: it holds nothing but NUL, control or zero-width characters",
        )
    if _no_content(text):
        return dead(
            "text",
            "text has no letter, digit or symbol: only punctuation, combining marks, control, "
            "format or space characters, nothing to embed",
        )
    return Chunk(
        chunk_id=cid,
        episode_id=episode,
        text=text,
        podcast_id=_optional(f.get("podcast_id"), str),
        chunk_index=_optional(f.get("chunk_index"), int),
        start_s=_optional(f.get("start_s"), float),
        end_s=_optional(f.get("end_s"), float),
        published_at=_optional(f.get("published_at"), datetime),
        sha256=sha or text_sha256(text),
    )
