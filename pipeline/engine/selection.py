"""Which part of the source a run covers (filters for reindex and ingest)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.errors import ConfigError


@dataclass(slots=True, frozen=True)
class Selection:
    """A filter over the source. Empty means everything.

    Sources turn it into a server-side query where they can (MongoDB) and into
    row-group pruning plus a row filter where they cannot (Parquet).
    """

    episode_ids: tuple[str, ...] = field(default_factory=tuple)
    podcast_ids: tuple[str, ...] = field(default_factory=tuple)
    since: datetime | None = None

    @property
    def is_everything(self) -> bool:
        """True when no filter is set (prune and removed-chunk reports need the whole source)."""
        return not (self.episode_ids or self.podcast_ids or self.since)

    def key(self) -> str:
        """A stable digest of the filter, part of a run's resume key."""
        doc = {
            "episodes": sorted(self.episode_ids),
            "podcasts": sorted(self.podcast_ids),
            "since": self.since.isoformat() if self.since else None,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """Human-readable summary for reports."""
        parts = []
        if self.episode_ids:
            parts.append("episode=" + ",".join(self.episode_ids))
        if self.podcast_ids:
            parts.append("podcast=" + ",".join(self.podcast_ids))
        if self.since:
            parts.append("since=" + self.since.isoformat())
        return " ".join(parts) or "all"


def parse_selection(
    episodes: tuple[str, ...] = (), podcasts: tuple[str, ...] = (), since: str | None = None
) -> Selection:
    """A :class:`Selection` from command-line values; an empty value is refused (exit 2).

    An empty selection means "everything", so an empty value (an unset shell variable in
    ``--since "$SINCE"``) must never quietly widen a reindex to the whole corpus.
    """
    for option, values in (("--episode", episodes), ("--podcast", podcasts)):
        for value in values:
            if not value.strip():
                raise ConfigError(
                    f"{option}: the value is empty (an unset variable?); name an id, or leave "
                    f"{option} out to select everything"
                )
    return Selection(episode_ids=tuple(episodes), podcast_ids=tuple(podcasts), since=parse_since(since))


def parse_episode_id(episode_id: str) -> str:
    """The id ``ingest`` was given; empty is refused (exit 2), as the trigger does."""
    if not episode_id.strip():
        raise ConfigError("EPISODE_ID: the value is empty (an unset variable?); name the episode to ingest")
    return episode_id


def parse_since(value: str | None) -> datetime | None:
    """``--since``: a date or ISO timestamp (UTC when no zone); ``None`` when not given."""
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(
            "--since: the value is empty (an unset variable?); give a date (YYYY-MM-DD), or "
            "leave --since out to select everything"
        )
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"--since: {value!r} is not a date (use YYYY-MM-DD or an ISO timestamp)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
