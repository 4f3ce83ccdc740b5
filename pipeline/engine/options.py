"""What the user asked a run for: the command, the selection and the flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.engine.selection import Selection


@dataclass(slots=True)
class RunOptions:
    """What the user asked for."""

    command: str = "backfill"  # backfill | reindex | ingest
    selection: Selection = field(default_factory=Selection)
    force: bool = False
    limit: int | None = None
    retry_failed: bool = False
    prune: bool = False
    full: bool = False  # a full sweep: read the whole source even if it says nothing changed
