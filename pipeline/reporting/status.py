"""Coverage of a target: how many chunks have a current vector, which are stale or missing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.engine import incremental
from pipeline.engine.selection import Selection
from pipeline.engine.shard_work import Preparer, Rule
from pipeline.interfaces.source import unowned_ids
from pipeline.model.fingerprint import model_fingerprint
from pipeline.parts import Parts
from pipeline.records import StoredState
from pipeline.reporting.report import read_reports


@dataclass(slots=True)
class Coverage:
    """What ``podembed status`` shows."""

    source: str
    sink: str
    fingerprint: str
    total: int = 0  # records in the source
    valid: int = 0
    current: int = 0
    stale_text: int = 0  # vector stored, text changed since
    other_model: int = 0  # vector stored by another model/instruction
    moved: int = 0  # same text, now in another episode: the stored episode_id is old
    missing: int = 0  # valid chunk, no vector
    invalid: int = 0  # fails validation (would be dead-lettered)
    dead_lettered: int = 0  # stored dead letters
    removed: int = 0  # vectors whose chunk left the source
    # False: a quick status from metadata. Chunks in files/documents unchanged since
    # ``basis_run`` (``unchanged``) count as current without being read, and ``removed``
    # is what that run found; ``status --full`` reads and checks every chunk.
    exact: bool = True
    basis_run: str = ""
    unchanged: int = 0
    fingerprints: dict[str, int] = field(default_factory=dict)
    last_runs: list[dict[str, Any]] = field(default_factory=list)
    live_runs: list[dict[str, Any]] = field(default_factory=list)  # running now, with their claims

    @property
    def stale(self) -> int:
        """Vectors that exist but are out of date."""
        return self.stale_text + self.other_model + self.moved

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        from dataclasses import asdict

        d = asdict(self)
        d["stale"] = self.stale
        return d

    def summary(self) -> str:
        """Human-readable lines."""
        pct = (100.0 * self.current / self.valid) if self.valid else 100.0
        lines = [
            f"source: {self.source}",
            f"sink:   {self.sink}",
            f"model:  {self.fingerprint}",
            f"chunks: {self.total} in source, {self.valid} valid",
            f"  current:       {self.current} ({pct:.1f}%)",
            f"  stale:         {self.stale} ({self.stale_text} text changed, {self.other_model} other model"
            + (f", {self.moved} moved to another episode)" if self.moved else ")"),
            f"  missing:       {self.missing}",
            f"  invalid:       {self.invalid}",
            f"  dead-lettered: {self.dead_lettered}",
            f"  removed from source but still stored: {self.removed}"
            + ("" if self.exact else f" (as run {self.basis_run} found)"),
        ]
        if not self.exact:
            lines.append(
                f"quick status: {self.unchanged} chunks in files/documents unchanged since run "
                f"{self.basis_run} are counted current without reading them; "
                "`podembed status --full` checks every chunk"
            )
        if len(self.fingerprints) > 1 or (self.fingerprints and self.fingerprint not in self.fingerprints):
            lines.append("stored vectors by model fingerprint:")
            lines += [f"  {fp}: {n}" for fp, n in sorted(self.fingerprints.items())]
        if self.live_runs:
            lines.append("live runs (episodes each is embedding now):")
            for r in self.live_runs:
                claims = r.get("claims") or []
                shown = ", ".join(claims[:10]) + (f", ... ({len(claims)} in all)" if len(claims) > 10 else "")
                lines.append(
                    f"  {r.get('run_id') or '(starting)'} {r.get('command')} {r.get('selection')} "
                    f"owner={r.get('owner')} since={r.get('started_at')} claims: {shown or 'none'}"
                )
        if self.last_runs:
            lines.append("last runs:")
            for r in self.last_runs:
                rep = r.get("report") or r
                counts = rep.get("counts", {})
                lines.append(
                    f"  {r.get('run_id')} {r.get('command')} {r.get('status')} "
                    f"embedded={counts.get('embedded', '?')} dead={counts.get('dead_lettered', '?')} "
                    f"started={r.get('started_at')}"
                )
        return "\n".join(lines)


def coverage(config: Config, parts: Parts, runs: int = 5, *, full: bool = True) -> Coverage:
    """Classify every chunk of the source against the sink's state (no vectors, no model).

    ``full=False`` is the quick form: once a whole-source run has completed, only what
    changed since (by the source's own metadata) is read; the rest counts as current.
    """
    fp = model_fingerprint(config.model)
    cov = Coverage(source=parts.source.describe(), sink=parts.sink.describe(), fingerprint=fp)
    selection = Selection()
    last = None if full else incremental.usable_snapshot(config, parts.source, parts.checkpoint, fp)
    if last is not None:
        change = parts.source.plan_since(selection, last.state)
        shards = change.shards
        cov.exact, cov.basis_run, cov.unchanged = False, last.run_id, change.unchanged
    else:
        shards = parts.source.plan(selection)
    preparer = Preparer(config, parts, selection, Rule(fp, "status"))
    reasons: Counter[str] = Counter()
    for shard in shards:
        prepared = preparer.prepare(shard)
        reasons.update(prepared.reasons)
        cov.total += prepared.counts.seen
        cov.invalid += len(prepared.dead_letters)
    cov.total += cov.unchanged
    cov.valid = cov.total - cov.invalid
    cov.current = reasons["current"] + cov.unchanged
    cov.stale_text = reasons["changed"]
    cov.other_model = reasons["other_model"]
    cov.moved = reasons["moved"]
    cov.missing = reasons["new"] + reasons["failed_before"]
    cov.dead_lettered = parts.checkpoint.count_dead_letters()
    cov.last_runs = parts.checkpoint.last_runs(runs) or read_reports(config.report.dir, runs)
    cov.live_runs = [asdict(r) for r in parts.checkpoint.live_runs()]
    if last is not None:
        cov.removed = last.removed  # no id is read: that is status --full's job
        return cov
    fps: Counter[str] = Counter()

    def counted(states: Iterable[StoredState]) -> Iterator[StoredState]:
        for state in states:
            fps[state.model_fingerprint] += 1
            yield state

    cov.removed = sum(1 for _ in unowned_ids(parts.source, counted(parts.sink.iter_states())))
    cov.fingerprints = dict(fps)
    return cov
