"""One run's claims on episodes: taken before deciding what to embed, given back once written.

Overlapping runs cooperate through the checkpoint store's claims: a run claims the
episodes of a shard *before* it looks up what the sink already holds, and gives them
back only *after* the shard's vectors are written. Whoever holds an episode is the
only run embedding it, and the next one to claim it sees its vectors as current.

- A backfill leaves an episode another live run holds to that run (it writes it) and
  counts it in its report.
- An ingest or reindex waits for the episode, then does what is still needed; after the
  wait it leaves the episode to its holder, like a backfill. ``claim_wait_s`` is one
  budget for the whole run, not per shard: a run of N shards never waits N times over.

An episode can span several shards of one run (row groups of a Parquet file): claims
are counted, and an episode is given back when its last shard in flight is written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Collection

from pipeline.interfaces.checkpoint import CheckpointStore, Holder

log = logging.getLogger(__name__)


class Claims:
    """Takes and gives back one run's claims (thread-safe: reader takes, writer gives back)."""

    def __init__(self, store: CheckpointStore, *, wait: bool, stop: threading.Event | None = None) -> None:
        self.store = store
        self.wait = wait
        self.stop = stop or threading.Event()
        self.waited_s = 0.0
        # Set at the first wait: every later wait of this run shares what is left of it.
        self._deadline: float | None = None
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _take_now(self, units: Collection[str]) -> dict[str, Holder]:
        with self._lock:
            others = self.store.claim(units)
            self._held.update(u for u in units if u not in others)
        return others

    def take(self, units: Collection[str]) -> dict[str, Holder]:
        """Claim ``units``; returns those left to other live runs, with their holders."""
        wanted = sorted(set(units))
        if not wanted:
            return {}
        others = self._take_now(wanted)
        if others and self.wait:
            others = self._wait_for(others)
        return others

    def _wait_for(self, others: dict[str, Holder]) -> dict[str, Holder]:
        started = time.monotonic()
        if self._deadline is None:
            self._deadline = started + self.store.claim_wait_s
        deadline = self._deadline
        names = ", ".join(f"{u} ({h.describe()})" for u, h in sorted(others.items()))
        log.warning(
            "waiting up to %.0f s (what is left of this run's claim_wait_s) for episodes another "
            "run is embedding: %s",
            max(0.0, deadline - started),
            names,
        )
        while others and time.monotonic() < deadline and not self.stop.is_set():
            self.stop.wait(min(self.store.claim_poll_s, max(0.0, deadline - time.monotonic())))
            self.store.heartbeat()
            others = {**self._take_now(list(others))}
        self.waited_s += time.monotonic() - started
        if others:
            log.warning(
                "still held after %.0f s, left to their runs: %s",
                time.monotonic() - started,
                ", ".join(f"{u} ({h.describe()})" for u, h in sorted(others.items())),
            )
        return others

    def release(self, units: Collection[str]) -> None:
        """Give back one hold on each of ``units``; the store frees those no shard holds any more."""
        free: list[str] = []
        with self._lock:
            for u in units:
                if self._held[u] <= 0:
                    continue
                self._held[u] -= 1
                if self._held[u] == 0:
                    del self._held[u]
                    free.append(u)
            if free:
                self.store.release_claims(free)
