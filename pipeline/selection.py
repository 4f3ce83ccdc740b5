"""Which part of the source a run covers (filters for reindex and ingest)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime


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
