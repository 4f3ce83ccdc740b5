"""Live runs and their claims on episodes, in MongoDB (the ledger's part that lets runs overlap).

**Claims.** Runs on one target overlap; each claims the episodes it is about to embed.
A claim is one document per episode, taken atomically: free ones in one unordered
``insert_many`` (a duplicate ``_id`` means someone holds it), others with
``find_one_and_update`` whose filter matches only a claim that is ours, expired, or
owned by a process known to be dead. Times come from the *server's* clock
(``hello.localTime``), so hosts with skewed clocks agree on expiry.

**Liveness.** A daemon thread renews the run's owner document and every claim it holds
every ``heartbeat_s`` (default a third of ``lease_ttl_s``). A run that dies stops
renewing: its claims expire ``lease_ttl_s`` later. A run on the *same machine* does not
wait for that: each claim records its owner's process identity (host, boot id, PID
namespace, PID and start time, see :mod:`pipeline.engine.liveness`), and a claimer that finds
that process gone takes the claim over at once (after ``kill -9`` too). A resumed run
is taken over the same way (``find_resumable``), so two runs never resume one run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from pipeline.engine.liveness import ProcessIdentity, current, is_dead
from pipeline.errors import TargetError
from pipeline.interfaces.checkpoint import Holder, LiveRun
from pipeline.mongo.connection import Connection
from pipeline.mongo.retry import retrying, server_now
from pipeline.mongo.values import iso_text

log = logging.getLogger(__name__)


class MongoRunClaims:
    """The live-run and claim half of :class:`~pipeline.mongo.ledger.MongoCheckpointStore`.

    A mixin: the store's ``__init__`` sets what it uses (``conn``, ``target``, the
    ``owners`` and ``claim_docs`` (claims) collections, ``ttl``, ``beat_every``, and the run's own
    ``_owner``/``_mine``/``_lost`` state and heartbeat thread).
    """

    conn: Connection
    target: str
    owners: Any
    claim_docs: Any  # the claims collection (the core's Claims is the run's view of them)
    ttl: timedelta
    beat_every: float

    def register(self, owner: str, command: str, selection: str) -> None:
        """Write this run's owner document and start renewing it (and its claims)."""
        now = server_now(self.conn)
        doc = {
            "target": self.target,
            "run_id": "",
            "command": command,
            "selection": selection,
            "started_at": now,
            "heartbeat_at": now,
            "expires_at": now + self.ttl,
            "process": current().to_dict(),
        }
        retrying(
            self.conn,
            "registering the run",
            lambda: self.owners.update_one({"_id": owner}, {"$set": doc}, upsert=True),
        )
        self._owner, self._command, self._run_id = owner, command, ""
        self._owner_doc = doc
        self._mine, self._lost = set(), set()
        self._last_beat = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_loop, name="podembed-heartbeat", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        """Extend this run's owner document and claims; notes (does not raise) lost claims."""
        owner = self._owner
        if owner is None:
            return
        with self._beat_lock:
            now = server_now(self.conn)
            # The whole document, upserted: a run that stalled past its expiry and was
            # cleaned up as dead shows up again as live.
            doc = {
                **self._owner_doc,
                "run_id": self._run_id,
                "heartbeat_at": now,
                "expires_at": now + self.ttl,
            }
            retrying(
                self.conn,
                "renewing the run's heartbeat",
                lambda: self.owners.update_one({"_id": owner}, {"$set": doc}, upsert=True),
            )
            if self._mine:
                mine = sorted(self._mine)
                keys = [self._key(u) for u in mine]
                res = retrying(
                    self.conn,
                    "renewing claims",
                    lambda: self.claim_docs.update_many(
                        {"_id": {"$in": keys}, "owner": owner},
                        {"$set": {"expires_at": now + self.ttl}},
                    ),
                )
                if res.matched_count < len(mine):
                    kept = {
                        d["unit"]
                        for d in retrying(
                            self.conn,
                            "reading which claims this run still holds",
                            lambda: list(
                                self.claim_docs.find(
                                    {"_id": {"$in": keys}, "owner": owner},
                                    {"unit": 1},
                                )
                            ),
                        )
                    }
                    lost = set(mine) - kept - self._lost
                    if lost:
                        # This run stalled past lease_ttl_s; sink writes are idempotent, so
                        # the worst case is the same chunk embedded by both runs.
                        log.error(
                            "claims on %s expired and were taken by another run (this run stalled "
                            "longer than lease_ttl_s = %g s)",
                            ", ".join(sorted(lost)),
                            self.options.lease_ttl_s,
                        )
                        self._lost |= lost
            self._last_beat = time.monotonic()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat_every):
            try:
                self._renew()
            except Exception as exc:  # the runner's own heartbeat surfaces lasting trouble
                log.warning("heartbeat failed: %s", self.conn.scrub(str(exc)))

    def heartbeat(self) -> None:
        """Renew now if due."""
        if time.monotonic() - self._last_beat >= self.beat_every / 2:
            self._renew()

    def unregister(self) -> None:
        """Stop renewing; delete this run's claims and owner document."""
        owner, self._owner = self._owner, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if owner is None:
            return
        try:
            retrying(
                self.conn,
                "releasing claims",
                lambda: self.claim_docs.delete_many({"target": self.target, "owner": owner}),
            )
            retrying(self.conn, "unregistering the run", lambda: self.owners.delete_one({"_id": owner}))
        except TargetError as exc:
            # Never mask the error that ended the run: unrenewed claims expire by themselves.
            log.warning(
                "could not release this run's claims on %s (%s); they expire within %g s",
                self.target,
                exc,
                self.options.lease_ttl_s,
            )
        self._mine = set()

    def _owner_alive(self, owner: str, now: datetime) -> bool:
        if owner == self._owner:
            return True
        doc = retrying(self.conn, "reading a run's heartbeat", lambda: self.owners.find_one({"_id": owner}))
        return (
            bool(doc)
            and _later(doc.get("expires_at"), now)
            and not is_dead(ProcessIdentity.from_dict(doc.get("process")))
        )

    def live_runs(self) -> list[LiveRun]:
        """Live runs of this target and their claims (dead ones' documents are removed)."""
        now = server_now(self.conn)
        docs = retrying(
            self.conn, "listing live runs", lambda: list(self.owners.find({"target": self.target}))
        )
        live = []
        for d in docs:
            if _later(d.get("expires_at"), now) and not is_dead(ProcessIdentity.from_dict(d.get("process"))):
                live.append(d)
            else:
                retrying(self.conn, "removing a dead run", lambda d=d: self._forget(d["_id"]))
        claims: dict[str, list[str]] = {}
        for c in retrying(
            self.conn,
            "listing claims",
            lambda: list(
                self.claim_docs.find({"target": self.target}, {"unit": 1, "owner": 1}).sort("unit", 1)
            ),
        ):
            claims.setdefault(str(c.get("owner")), []).append(str(c.get("unit")))
        return [
            LiveRun(
                owner=str(d["_id"]),
                run_id=str(d.get("run_id", "")),
                command=str(d.get("command", "")),
                selection=str(d.get("selection", "")),
                started_at=iso_text(d.get("started_at")),
                claims=claims.get(str(d["_id"]), []),
            )
            for d in live
        ]

    def _forget(self, owner: str) -> None:
        self.claim_docs.delete_many({"target": self.target, "owner": owner})
        self.owners.delete_one({"_id": owner})

    # ------------------------------------------------------------------ claims
    def _key(self, unit: str) -> str:
        return f"{self.target}\x1f{unit}"

    def _claim_doc(self, unit: str, now: datetime) -> dict[str, Any]:
        return {
            "target": self.target,
            "unit": unit,
            "owner": self._owner,
            "run_id": self._run_id,
            "command": self._command,
            "claimed_at": now,
            "expires_at": now + self.ttl,
            "process": current().to_dict(),
        }

    def _insert_free(self, units: list[str], now: datetime) -> list[str]:
        """Insert claims for ``units``; returns those that already had a claim document."""
        from pymongo.errors import BulkWriteError

        docs = [{"_id": self._key(u), **self._claim_doc(u, now)} for u in units]

        def insert() -> list[str]:
            try:
                self.claim_docs.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                return [units[e["index"]] for e in errors]
            return []

        return retrying(self.conn, "claiming episodes", insert)

    def _take_over(self, unit: str, now: datetime) -> Holder | None:
        """Take one held claim if it is ours, expired or its owner is dead; else its holder."""
        from pymongo.errors import DuplicateKeyError

        key = self._key(unit)
        for _ in range(3):
            doc = retrying(self.conn, "reading a claim", lambda: self.claim_docs.find_one({"_id": key}))
            if doc is None:
                flt: dict[str, Any] = {"_id": key}  # released meanwhile: take it fresh
            elif doc.get("owner") == self._owner or not _later(doc.get("expires_at"), now):
                flt = {"_id": key, "owner": doc.get("owner"), "expires_at": doc.get("expires_at")}
            elif is_dead(ProcessIdentity.from_dict(doc.get("process"))):
                flt = {"_id": key, "owner": doc.get("owner")}
            else:
                return Holder(str(doc.get("owner")), str(doc.get("run_id", "")), str(doc.get("command", "")))

            def take(flt: dict[str, Any] = flt, doc: dict[str, Any] | None = doc) -> bool:
                try:
                    got = self.claim_docs.find_one_and_update(
                        flt, {"$set": self._claim_doc(unit, now)}, upsert=doc is None
                    )
                except DuplicateKeyError:
                    return False
                return got is not None or doc is None

            if retrying(self.conn, "taking over a claim", take):
                if doc is not None and doc.get("owner") != self._owner:
                    log.warning(
                        "took over the claim on %s of %s (its run is gone)",
                        unit,
                        doc.get("run_id") or doc.get("owner"),
                    )
                return None
        doc = (
            retrying(self.conn, "reading a claim's holder", lambda: self.claim_docs.find_one({"_id": key}))
            or {}
        )
        return Holder(str(doc.get("owner", "?")), str(doc.get("run_id", "")), str(doc.get("command", "")))

    def claim(self, units: Collection[str]) -> dict[str, Holder]:
        """Take what is free, ours or a dead run's; return the units live runs hold."""
        if self._owner is None:
            raise TargetError("claim before register: a run must register first")
        wanted = sorted(set(units))
        if not wanted:
            return {}
        now = server_now(self.conn)
        held: dict[str, Holder] = {}
        for unit in self._insert_free(wanted, now):
            holder = self._take_over(unit, now)
            if holder is not None:
                held[unit] = holder
        self._mine |= set(wanted) - held.keys()
        self._lost -= set(wanted) - held.keys()
        return held

    def release_claims(self, units: Collection[str]) -> None:
        """Delete this run's claims on ``units``."""
        if self._owner is None or not units:
            return
        keys = [self._key(u) for u in units]
        owner = self._owner
        retrying(
            self.conn,
            "releasing claims",
            lambda: self.claim_docs.delete_many({"_id": {"$in": keys}, "owner": owner}),
        )
        self._mine -= set(units)


def _later(value: Any, now: datetime) -> bool:
    """Whether a stored expiry is still in the future (a missing one is not)."""
    if not isinstance(value, datetime):
        return False
    if value.tzinfo is None:
        value = value.replace(tzinfo=now.tzinfo)
    return value >= now
