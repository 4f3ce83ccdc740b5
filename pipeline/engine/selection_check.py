"""Is a selection's id a typo? ``--episode``/``--podcast`` values the source does not hold.

An id that matches nothing is told (exit 2) with the nearest ids the source does hold,
the way an unknown config key is told with the allowed ones, instead of a run that
"succeeds" on 0 chunks or a search that loads the model to find 0 hits.
"""

from __future__ import annotations

import difflib

from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError
from pipeline.interfaces.source import Source

SUGGESTIONS = 3


class NothingSelected(ConfigError):
    """The selection names ids the source does not hold, or matches no chunk (exit 2)."""


def near(wanted: str, known: set[str], n: int = SUGGESTIONS) -> list[str]:
    """Up to ``n`` ids of ``known`` that look like ``wanted`` (difflib's ratio >= 0.6)."""
    return difflib.get_close_matches(wanted, sorted(known), n=n)


def unknown_ids(source: Source, name: str, wanted: tuple[str, ...]) -> dict[str, list[str]]:
    """The ids of ``wanted`` that no chunk of ``source`` carries in field ``name``, each with
    its near matches; empty when all exist or the source cannot tell."""
    if not wanted:
        return {}
    found = source.distinct_values(name, wanted)
    if found is None:
        return {}
    missing = [w for w in dict.fromkeys(wanted) if w not in found]
    if not missing:
        return {}
    everything = source.distinct_values(name) or set()
    return {w: near(w, everything) for w in missing}


def _describe(flag: str, missing: dict[str, list[str]]) -> str:
    parts = []
    for wanted, close in missing.items():
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        parts.append(f"{flag} {wanted}: no chunk in the source has this id{hint}")
    return "; ".join(parts)


def check_selection(source: Source, selection: Selection, *, what: str, require_match: bool = False) -> None:
    """Raise :class:`NothingSelected` when ``selection`` names an episode or podcast the
    source does not hold, or (``require_match``) when together its filters match no chunk.

    ``what`` names the command for the message (``ingest``, ``reindex``, ``search``).
    The empty selection (everything) is never checked. ``require_match`` reads the
    selection up to its first chunk: worth it before a model load (search), not before a
    run, which reads the selection anyway and reports what it found.
    """
    if selection.is_everything:
        return
    problems = [
        _describe(flag, unknown_ids(source, name, ids))
        for flag, name, ids in (
            ("--episode" if what != "ingest" else "episode", "episode_id", selection.episode_ids),
            ("--podcast", "podcast_id", selection.podcast_ids),
        )
    ]
    problems = [p for p in problems if p]
    if problems:
        raise NothingSelected(f"{what}: {'; '.join(problems)}")
    if require_match and not _any_chunk(source, selection):
        raise NothingSelected(f"{what}: no chunk in the source matches {selection.describe()}; nothing to do")


def _any_chunk(source: Source, selection: Selection) -> bool:
    """Whether at least one record matches (reads until the first one)."""
    for shard in source.plan(selection):
        for _ in source.read(shard, selection):
            return True
    return False
