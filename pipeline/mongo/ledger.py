"""The MongoDB checkpoint store: run/shard ledger, a lease on the target, dead letters.

Collections (``collection_prefix`` defaults to ``podembed_``), all in ``database``::

    podembed_locks          _id = target; owner, acquired_at, heartbeat_at, expires_at
    podembed_runs           _id = run id; target, plan_key, command, status, meta, report, ...
    podembed_shards         _id = run id + shard id; run_id, shard_id, counts, done_at
    podembed_dead_letters   _id = target + chunk id; chunk_id, field, reason, run_id,
                            first_seen, last_seen, text_sha256, episode_id, position

The *target* is what the sink writes (``database.collection.vector_field``), so two
sinks in one database (two models, two vector fields) keep separate ledgers and locks.

**The lease.** ``acquire`` takes the lock document with one atomic
``find_one_and_update(upsert=True)`` whose filter matches only a free lock: one held
by this owner or expired. A held lock makes the upsert collide on ``_id``
(``DuplicateKeyError``): that is the "locked" answer, with no race between check and
take. Times come from the *server's* clock (``hello.localTime``), so hosts with skewed
clocks agree on expiry. A daemon thread renews the lease every ``heartbeat_s``
(default a third of ``lease_ttl_s``); the runner also renews after each shard. A
renewal that finds another owner means the lease was lost (this process stalled past
its expiry and another run took over): the next ``heartbeat``/``mark_shard_done``
raises :class:`~pipeline.errors.LockedError` and the run stops. A crashed run's lease
simply expires; the next run takes it over and resumes the crashed run's ledger.
With ``lock_wait_s`` a run waits that long for a busy target instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.checkpoint import CheckpointStore, SinkHome, StoredDeadLetter
from pipeline.errors import ConfigError, LockedError, TargetError
from pipeline.mongo.connection import IN_PAGE, Connection, ConnectionOptions, check_name, connect
from pipeline.mongo.retry import ensure_index, retrying, server_now
from pipeline.mongo.values import pages, utcnow
from pipeline.records import DeadLetter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MongoCheckpointOptions(ConnectionOptions):
    """``[checkpoint]`` options for ``kind = "mongo"`` (connection defaults to the sink's)."""

    # Empty: the sink's URI variable and database.
    uri_env: str = ""
    database: str = ""
    collection_prefix: str = "podembed_"
    # Empty: derived from the sink (database.collection.vector_field).
    target: str = ""
    # A lease not renewed for this long is free for another run to take.
    lease_ttl_s: float = 120.0
    # How often the background thread renews the lease (0: lease_ttl_s / 3).
    heartbeat_s: float = 0.0
    # How long a run waits for a busy target before failing (0: fail at once).
    lock_wait_s: float = 0.0

    def validate(self, prefix: str) -> None:
        """Times must be positive and consistent."""
        if self.database:
            check_name(self.database, f"{prefix}.database", "database name")
        if self.collection_prefix:
            check_name(self.collection_prefix, f"{prefix}.collection_prefix", "collection prefix")
        if self.lease_ttl_s <= 0:
            raise ConfigError(f"{prefix}.lease_ttl_s: must be positive")
        if self.heartbeat_s < 0 or (self.heartbeat_s and self.heartbeat_s >= self.lease_ttl_s):
            raise ConfigError(f"{prefix}.heartbeat_s: must be between 0 and lease_ttl_s")
        if self.lock_wait_s < 0:
            raise ConfigError(f"{prefix}.lock_wait_s: must not be negative")
        if self.server_selection_timeout_ms < 100:
            raise ConfigError(f"{prefix}.server_selection_timeout_ms: must be at least 100")
        if self.retry_s < 0:
            raise ConfigError(f"{prefix}.retry_s: must not be negative")


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


class MongoCheckpointStore(CheckpointStore):
    """Ledger, lease and dead letters in MongoDB (see the module docstring)."""

    Options = MongoCheckpointOptions

    def __init__(self, options: MongoCheckpointOptions, conn: Connection, database: str, target: str) -> None:
        self.options = options
        self.conn = conn
        self.target = target
        db = conn.client[database]
        p = options.collection_prefix
        self.locks = db[f"{p}locks"]
        self.runs = db[f"{p}runs"]
        self.shards = db[f"{p}shards"]
        self.dead = db[f"{p}dead_letters"]
        self.ttl = timedelta(seconds=options.lease_ttl_s)
        self.beat_every = options.heartbeat_s or options.lease_ttl_s / 3
        self._owner: str | None = None
        self._lost: str | None = None
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_lock = threading.Lock()

    @classmethod
    def open(cls, options: MongoCheckpointOptions, home: SinkHome) -> MongoCheckpointStore:
        """Connect (by default with the sink's URI variable and database) and create indexes."""
        import dataclasses

        database = options.database or home.database
        if not database:
            raise ConfigError("checkpoint.database: required (the sink has no database to share)")
        uri_env = options.uri_env or home.uri_env
        if not uri_env:
            raise ConfigError("checkpoint.uri_env: required (the sink has no MongoDB URI to share)")
        conn_opts = dataclasses.replace(options, uri_env=uri_env)
        target = options.target or home.target
        conn = connect(conn_opts, "checkpoint")
        try:
            store = cls(options, conn, database, target)
            store._indexes()
        except BaseException:
            conn.close()
            raise
        return store

    def _indexes(self) -> None:
        ensure_index(self.conn, self.runs, [("target", 1), ("plan_key", 1), ("started_at", -1)])
        ensure_index(self.conn, self.runs, [("target", 1), ("started_at", -1)])
        ensure_index(self.conn, self.shards, [("run_id", 1)])
        ensure_index(self.conn, self.dead, [("target", 1), ("last_seen", -1)])

    # ------------------------------------------------------------------ lease
    def _try_take(self, owner: str) -> dict[str, Any] | None:
        """Take the lock if free; ``None`` if someone else holds a live lease."""
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        now = server_now(self.conn)
        flt = {"_id": self.target, "$or": [{"owner": owner}, {"expires_at": {"$lt": now}}]}
        update = {
            "$set": {
                "owner": owner,
                "acquired_at": now,
                "heartbeat_at": now,
                "expires_at": now + self.ttl,
            }
        }

        def take() -> dict[str, Any] | None:
            try:
                before = self.locks.find_one_and_update(
                    flt, update, upsert=True, return_document=ReturnDocument.BEFORE
                )
            except DuplicateKeyError:
                return None
            return before or {}

        return retrying(self.conn, "taking the target's lease", take)

    def acquire(self, owner: str) -> None:
        """Take the target's lease or raise :class:`LockedError` naming the holder."""
        deadline = time.monotonic() + self.options.lock_wait_s
        while True:
            previous = self._try_take(owner)
            if previous is not None:
                break
            if time.monotonic() >= deadline:
                holder = retrying(
                    self.conn, "reading the lease", lambda: self.locks.find_one({"_id": self.target})
                )
                who = (holder or {}).get("owner", "another run")
                until = _iso((holder or {}).get("expires_at"))
                raise LockedError(
                    f"{self.target} is being written by another run ({who}; its lease runs "
                    f"until {until} unless renewed); wait for it to finish, or, if it "
                    f"crashed, for the lease to expire ({self.options.lease_ttl_s:g} s after "
                    "its last heartbeat)"
                )
            time.sleep(min(1.0, max(0.05, self.beat_every / 2)))
        if previous.get("owner") and previous.get("owner") != owner:
            log.warning(
                "took over the expired lease of %s (last heartbeat %s)",
                previous.get("owner"),
                _iso(previous.get("heartbeat_at")),
            )
        self._owner, self._lost = owner, None
        self._last_beat = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_loop, name="podembed-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        """Extend the lease; notes (does not raise) a lost lease."""
        owner = self._owner
        if owner is None:
            return
        with self._beat_lock:
            now = server_now(self.conn)
            res = retrying(
                self.conn,
                "renewing the lease",
                lambda: self.locks.update_one(
                    {"_id": self.target, "owner": owner},
                    {"$set": {"heartbeat_at": now, "expires_at": now + self.ttl}},
                ),
            )
            if res.matched_count == 0 and self._owner == owner:
                holder = self.locks.find_one({"_id": self.target}) or {}
                self._lost = str(holder.get("owner", "nobody"))
                log.error("lease on %s lost to %s", self.target, self._lost)
            self._last_beat = time.monotonic()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat_every):
            if self._lost is not None:
                return
            try:
                self._renew()
            except Exception as exc:  # the runner's own heartbeat surfaces lasting trouble
                log.warning("lease renewal failed: %s", self.conn.scrub(str(exc)))

    def _check_lease(self) -> None:
        if self._lost is not None:
            raise LockedError(
                f"lost the lease on {self.target} to {self._lost} (this run stalled longer "
                f"than lease_ttl_s = {self.options.lease_ttl_s:g} s); it stops here, and "
                "the other run carries on"
            )

    def heartbeat(self) -> None:
        """Renew now if due; raise :class:`LockedError` if the lease was lost."""
        self._check_lease()
        if time.monotonic() - self._last_beat >= self.beat_every / 2:
            self._renew()
            self._check_lease()

    def release(self) -> None:
        """Stop renewing and free the lock (only if this run still owns it)."""
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
                "releasing the lease",
                lambda: self.locks.delete_one({"_id": self.target, "owner": owner}),
            )
        except TargetError as exc:
            # Never mask the error that ended the run: an unreleased lease expires by itself.
            log.warning(
                "could not release the lease on %s (%s); it expires within %g s",
                self.target,
                exc,
                self.options.lease_ttl_s,
            )

    # ------------------------------------------------------------------ runs
    def find_resumable(self, plan_key: str) -> str | None:
        """The newest run of this target with this key, unless it completed."""
        doc = retrying(
            self.conn,
            "finding a resumable run",
            lambda: self.runs.find_one(
                {"target": self.target, "plan_key": plan_key},
                {"status": 1},
                sort=[("started_at", -1)],
            ),
        )
        if doc and doc.get("status") != "completed":
            return str(doc["_id"])
        return None

    def start_run(self, run_id: str, plan_key: str, command: str, meta: dict[str, Any]) -> None:
        """Insert the run, or mark a resumed one running again."""
        now = utcnow()
        retrying(
            self.conn,
            "recording the run",
            lambda: self.runs.update_one(
                {"_id": run_id},
                {
                    "$set": {
                        "target": self.target,
                        "plan_key": plan_key,
                        "command": command,
                        "status": "running",
                        "finished_at": None,
                        "owner": self._owner,
                        "resumed_at": now,
                    },
                    "$setOnInsert": {"started_at": now, "meta": _jsonable(meta)},
                    "$inc": {"attempts": 1},
                },
                upsert=True,
            ),
        )

    def done_shards(self, run_id: str) -> set[str]:
        """Shard ids marked done for this run."""
        docs = retrying(
            self.conn,
            "reading done shards",
            lambda: list(self.shards.find({"run_id": run_id}, {"shard_id": 1})),
        )
        return {str(d["shard_id"]) for d in docs}

    def mark_shard_done(self, run_id: str, shard_id: str, counts: dict[str, int]) -> None:
        """Durably record a finished shard (refused once the lease is lost)."""
        self._check_lease()
        key = hashlib.sha256(f"{run_id}\x1f{shard_id}".encode()).hexdigest()[:32]
        doc = {"run_id": run_id, "shard_id": shard_id, "counts": dict(counts), "done_at": utcnow()}
        retrying(
            self.conn,
            "marking a shard done",
            lambda: self.shards.update_one({"_id": key}, {"$set": doc}, upsert=True),
        )

    def finish_run(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        """Record how the run ended."""
        retrying(
            self.conn,
            "recording the end of the run",
            lambda: self.runs.update_one(
                {"_id": run_id},
                {"$set": {"status": status, "finished_at": utcnow(), "report": _jsonable(report)}},
            ),
        )

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        """Newest runs of this target first."""
        docs = retrying(
            self.conn,
            "listing runs",
            lambda: list(self.runs.find({"target": self.target}).sort("started_at", -1).limit(limit)),
        )
        return [
            {
                "run_id": str(d["_id"]),
                "command": d.get("command"),
                "status": d.get("status"),
                "started_at": _iso(d.get("started_at")),
                "finished_at": _iso(d.get("finished_at")) or None,
                "report": d.get("report"),
            }
            for d in docs
        ]

    # ------------------------------------------------------------------ dead letters
    def _dl_id(self, chunk_id: str) -> str:
        return f"{self.target}\x1f{chunk_id}"

    def add_dead_letters(self, run_id: str, letters: Iterable[DeadLetter]) -> None:
        """Upsert by chunk id, keeping the first time each chunk failed."""
        from pymongo import UpdateOne

        now = utcnow()
        unique = list({d.chunk_id: d for d in letters}.values())
        for page in pages(unique, IN_PAGE):
            ops = [
                UpdateOne(
                    {"_id": self._dl_id(d.chunk_id)},
                    {
                        "$set": {
                            "target": self.target,
                            "chunk_id": d.chunk_id,
                            "field": d.field,
                            "reason": d.reason,
                            "run_id": run_id,
                            "last_seen": now,
                            "text_sha256": d.text_sha256,
                            "episode_id": d.episode_id,
                            "position": d.position,
                        },
                        "$setOnInsert": {"first_seen": now},
                    },
                    upsert=True,
                )
                for d in page
            ]
            retrying(
                self.conn,
                "recording dead letters",
                lambda ops=ops: self.dead.bulk_write(ops, ordered=False),
            )

    @staticmethod
    def _letter(d: dict[str, Any]) -> StoredDeadLetter:
        return StoredDeadLetter(
            chunk_id=str(d["chunk_id"]),
            field=str(d.get("field", "")),
            reason=str(d.get("reason", "")),
            run_id=str(d.get("run_id", "")),
            first_seen=_iso(d.get("first_seen")),
            last_seen=_iso(d.get("last_seen")),
            text_sha256=d.get("text_sha256"),
            episode_id=d.get("episode_id"),
        )

    def dead_letters(self, chunk_ids: Iterable[str]) -> dict[str, StoredDeadLetter]:
        """Stored failures for these ids."""
        out: dict[str, StoredDeadLetter] = {}
        for page in pages(list(chunk_ids), IN_PAGE):
            keys = [self._dl_id(c) for c in page]
            docs = retrying(
                self.conn,
                "reading dead letters",
                lambda k=keys: list(self.dead.find({"_id": {"$in": k}})),
            )
            for d in docs:
                out[str(d["chunk_id"])] = self._letter(d)
        return out

    def clear_dead_letters(self, chunk_ids: Iterable[str]) -> None:
        """Forget failures that are now fixed."""
        for page in pages(list(chunk_ids), IN_PAGE):
            keys = [self._dl_id(c) for c in page]
            retrying(
                self.conn,
                "clearing dead letters",
                lambda k=keys: self.dead.delete_many({"_id": {"$in": k}}),
            )

    def list_dead_letters(self, limit: int | None = None) -> list[StoredDeadLetter]:
        """Newest failures first."""

        def fetch() -> list[dict[str, Any]]:
            cur = self.dead.find({"target": self.target}).sort([("last_seen", -1), ("chunk_id", 1)])
            if limit:
                cur = cur.limit(limit)
            return list(cur)

        return [self._letter(d) for d in retrying(self.conn, "listing dead letters", fetch)]

    def count_dead_letters(self) -> int:
        """How many chunks of this target are dead-lettered."""
        return int(
            retrying(
                self.conn,
                "counting dead letters",
                lambda: self.dead.count_documents({"target": self.target}),
            )
        )

    def close(self) -> None:
        """Release the lease (if still held) and the shared client."""
        try:
            self.release()
        finally:
            self.conn.close()


def _jsonable(value: Any) -> Any:
    """A report or meta dict as BSON-safe plain data (keys as strings, no odd types)."""
    return json.loads(json.dumps(value, default=str))
