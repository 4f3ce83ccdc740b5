"""Change-proportional nights: which backfill reads only what changed, and when it may say so.

A backfill over the whole source compares the source with the snapshot the last
*completed* whole-source run recorded (``Source.snapshot`` / ``Source.plan_since``):
unchanged Parquet files are not decoded, and a MongoDB source reads only documents whose
cursor field moved. Everything else is a *full sweep* that reads the whole selection:
``--full``, every ``incremental.full_sweep_every`` nights, the first run, a changed model
or source setting, ``--force``, ``--retry-failed``, ``--limit``, reindex and ingest.

The snapshot is taken when the run starts and recorded only when it completes with every
shard done, so a crashed or partial run never marks anything as seen. See
docs/incremental.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.config import Config
from pipeline.interfaces.checkpoint import CheckpointStore, SourceSnapshot
from pipeline.interfaces.source import ChangePlan, Source


@dataclass(slots=True)
class Sweep:
    """How a run reads its source, and what it records when it completes."""

    full: bool
    reason: str  # why full, or "changes since run <id>"
    source_key: str = ""
    basis: str = ""
    state: dict[str, Any] | None = None  # the source's snapshot at start; recorded on completion
    since: SourceSnapshot | None = None  # the snapshot an incremental run compares with
    record: bool = False  # whether a completed run may record ``state``

    def describe(self) -> str:
        """``full (reason)`` or ``incremental (changes since run X)`` for reports."""
        return f"{'full' if self.full else 'incremental'} ({self.reason})"


def source_key(config: Config, source: Source) -> str:
    """Which source a snapshot belongs to (one ledger may serve several sources)."""
    return hashlib.sha256(f"{config.source.kind}|{source.describe()}".encode()).hexdigest()[:24]


def basis(config: Config, fingerprint: str) -> str:
    """What else decides the stored vectors: a snapshot taken under another basis is unusable."""
    options = config.source.options
    opts = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else repr(options)
    doc = {
        "fingerprint": fingerprint,
        "fields": config.fields.mapped(),
        "source": opts,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def choose(
    config: Config,
    source: Source,
    checkpoint: CheckpointStore,
    fingerprint: str,
    *,
    command: str,
    whole_source: bool,
    full: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
) -> Sweep:
    """Decide full or incremental for one run; take the source's snapshot now (at start)."""
    key = source_key(config, source)
    base = basis(config, fingerprint)
    # Only a run that reads the whole source may vouch for it afterwards.
    may_record = whole_source and limit is None
    state = source.snapshot() if may_record else None

    def sweep_full(reason: str) -> Sweep:
        return Sweep(True, reason, key, base, state, None, record=may_record and state is not None)

    if command != "backfill":
        return sweep_full(f"{command} reads its whole selection")
    if not whole_source:
        return sweep_full("a filtered selection")
    if full:
        return sweep_full("--full")
    if force or retry_failed or limit is not None:
        return sweep_full("--force" if force else "--retry-failed" if retry_failed else "--limit")
    if not config.incremental.enabled:
        return sweep_full("incremental.enabled = false")
    if state is None:
        return sweep_full("the source cannot tell what changed")
    last = checkpoint.source_snapshot(key)
    if last is None:
        return sweep_full("no completed run recorded yet")
    if last.basis != base:
        return sweep_full("the model or the source settings changed since the last completed run")
    every = config.incremental.full_sweep_every
    if every and last.nights_since_full + 1 >= every:
        return sweep_full(f"incremental.full_sweep_every = {every}")
    return Sweep(False, f"changes since run {last.run_id}", key, base, state, last, record=True)


def usable_snapshot(
    config: Config, source: Source, checkpoint: CheckpointStore, fingerprint: str
) -> SourceSnapshot | None:
    """The last completed run's snapshot, if it was taken under today's model and settings."""
    if not config.incremental.enabled:
        return None
    last = checkpoint.source_snapshot(source_key(config, source))
    if last is None or last.basis != basis(config, fingerprint):
        return None
    return last


def plan(source: Source, sweep: Sweep, selection: Any) -> ChangePlan:
    """The run's shards: everything for a full sweep, only what changed otherwise."""
    if sweep.full or sweep.since is None:
        return ChangePlan(shards=source.plan(selection), may_have_removed=True)
    return source.plan_since(selection, sweep.since.state)


def record(checkpoint: CheckpointStore, sweep: Sweep, run_id: str, removed_pending: int) -> None:
    """Store the run's start-time snapshot: call only once the run has completed."""
    if not sweep.record or sweep.state is None:
        return
    nights = 0 if sweep.full or sweep.since is None else sweep.since.nights_since_full + 1
    checkpoint.save_source_snapshot(
        SourceSnapshot(
            source_key=sweep.source_key,
            run_id=run_id,
            basis=sweep.basis,
            state=sweep.state,
            full_sweep=sweep.full,
            nights_since_full=nights,
            removed=removed_pending,
            taken_at=datetime.now(UTC).isoformat(),
        )
    )
