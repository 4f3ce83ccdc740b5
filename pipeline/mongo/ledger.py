"""The MongoDB checkpoint store: run/shard ledger, live runs and their claims, dead letters.

Collections (``collection_prefix`` defaults to ``podembed_``), all in ``database``::

    podembed_owners         _id = owner (one per live run); target, run_id, command,
                            selection, started_at, heartbeat_at, expires_at, process
    podembed_claims         _id = target + episode id; unit, owner, run_id, command,
                            claimed_at, expires_at, process
    podembed_runs           _id = run id; target, plan_key, command, status, owner, meta, ...
    podembed_shards         _id = run id + shard id; run_id, shard_id, counts, done_at
    podembed_dead_letters   _id = target + chunk id; chunk_id, field, reason, run_id,
                            first_seen, last_seen, text_sha256, episode_id, position
    podembed_source_snapshots  _id = target + source key; the last completed whole-source
                            run's snapshot of the source (``state`` as JSON text: file paths
                            and cursor values are data, never BSON keys)

The *target* is what the sink writes (``database.collection.vector_field``), so two
sinks in one database (two models, two vector fields) keep separate ledgers and claims.

Live runs and their claims on episodes: :mod:`pipeline.mongo.claims`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pipeline.errors import ConfigError
from pipeline.interfaces.checkpoint import (
    CLAIM_WAIT_S,
    CheckpointStore,
    SinkHome,
    SourceSnapshot,
    StoredDeadLetter,
    check_claim_wait,
)
from pipeline.mongo.claims import MongoRunClaims
from pipeline.mongo.connection import IN_PAGE, Connection, ConnectionOptions, check_name, connected
from pipeline.mongo.retry import ensure_index, retrying, server_now
from pipeline.mongo.values import iso_text, pages, utcnow
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
    # A claim not renewed for this long is free for another run to take (a crashed run on
    # another machine; one on this machine is detected dead at once).
    lease_ttl_s: float = 30.0
    # How often the background thread renews the run's claims (0: lease_ttl_s / 3).
    heartbeat_s: float = 0.0
    # How long an ingest or reindex waits for an episode another live run is embedding.
    claim_wait_s: float = CLAIM_WAIT_S

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
        check_claim_wait(self.claim_wait_s, f"{prefix}.claim_wait_s")
        self.validate_connection(prefix, uri_required=False)  # empty: the sink's uri_env


class MongoCheckpointStore(MongoRunClaims, CheckpointStore):
    """Ledger, claims and dead letters in MongoDB (see the module docstring)."""

    Options = MongoCheckpointOptions

    def __init__(self, options: MongoCheckpointOptions, conn: Connection, database: str, target: str) -> None:
        self.options = options
        self.conn = conn
        self.target = target
        db = conn.client[database]
        p = options.collection_prefix
        self.owners = db[f"{p}owners"]
        self.claim_docs = db[f"{p}claims"]
        self.runs = db[f"{p}runs"]
        self.shards = db[f"{p}shards"]
        self.dead = db[f"{p}dead_letters"]
        self.snapshots = db[f"{p}source_snapshots"]
        self.ttl = timedelta(seconds=options.lease_ttl_s)
        self.beat_every = options.heartbeat_s or options.lease_ttl_s / 3
        self.claim_wait_s = options.claim_wait_s
        self.claim_poll_s = min(1.0, max(0.05, self.beat_every / 4))
        self._owner: str | None = None
        self._run_id = ""
        self._command = ""
        self._owner_doc: dict[str, Any] = {}
        self._mine: set[str] = set()  # units this run holds
        self._lost: set[str] = set()
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        options: MongoCheckpointOptions,
        home: SinkHome,
        read_only: bool = False,
        missing_ok: bool = False,
    ) -> MongoCheckpointStore:
        """Connect (by default with the sink's URI and database); create indexes unless ``read_only``."""
        database = options.database or home.where.get("database", "")
        if not database:
            raise ConfigError("checkpoint.database: required (the sink has no database to share)")
        uri_env = options.uri_env or home.where.get("uri_env", "")
        if not uri_env:
            raise ConfigError("checkpoint.uri_env: required (the sink has no MongoDB URI to share)")
        conn_opts = dataclasses.replace(options, uri_env=uri_env)
        target = options.target or home.target

        def build(conn: Connection) -> MongoCheckpointStore:
            store = cls(options, conn, database, target)
            if not read_only:
                store._indexes()
            return store

        return connected(conn_opts, "checkpoint", build)

    def _indexes(self) -> None:
        ensure_index(self.conn, self.runs, [("target", 1), ("plan_key", 1), ("started_at", -1)])
        ensure_index(self.conn, self.runs, [("target", 1), ("started_at", -1)])
        ensure_index(self.conn, self.shards, [("run_id", 1)])
        ensure_index(self.conn, self.dead, [("target", 1), ("last_seen", -1)])
        ensure_index(self.conn, self.claim_docs, [("target", 1), ("owner", 1)])
        ensure_index(self.conn, self.owners, [("target", 1)])

    # ------------------------------------------------------------------ runs
    def find_resumable(self, plan_key: str) -> str | None:
        """Take over the newest unfinished run of this target with this key whose owner is gone."""
        docs = retrying(
            self.conn,
            "finding a resumable run",
            lambda: list(
                self.runs.find({"target": self.target, "plan_key": plan_key}, {"status": 1, "owner": 1}).sort(
                    "started_at", -1
                )
            ),
        )
        now = server_now(self.conn)
        for doc in docs:
            owner = doc.get("owner")
            if doc.get("status") == "running" and owner and self._owner_alive(str(owner), now):
                continue  # a live run of the same work: this one starts its own
            if doc.get("status") == "completed":
                return None
            taken = retrying(
                self.conn,
                "taking over a run",
                lambda doc=doc: self.runs.find_one_and_update(
                    {"_id": doc["_id"], "owner": doc.get("owner")}, {"$set": {"owner": self._owner}}
                ),
            )
            if taken is not None:
                return str(doc["_id"])
        return None

    def start_run(self, run_id: str, plan_key: str, command: str, meta: dict[str, Any]) -> None:
        """Insert the run, or mark a resumed one running again."""
        now = utcnow()
        self._run_id = run_id
        if self._owner is not None:
            owner = self._owner
            retrying(
                self.conn,
                "recording the run's id",
                lambda: self.owners.update_one({"_id": owner}, {"$set": {"run_id": run_id}}),
            )
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
        """Durably record a finished shard."""
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
                "started_at": iso_text(d.get("started_at")),
                "finished_at": iso_text(d.get("finished_at")) or None,
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
            first_seen=iso_text(d.get("first_seen")),
            last_seen=iso_text(d.get("last_seen")),
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

    def _snapshot_id(self, source_key: str) -> str:
        return hashlib.sha256(f"{self.target}|{source_key}".encode()).hexdigest()[:32]

    def source_snapshot(self, source_key: str) -> SourceSnapshot | None:
        """The last completed whole-source run's snapshot of this source."""
        doc = retrying(
            self.conn,
            "reading the source snapshot",
            lambda: self.snapshots.find_one({"_id": self._snapshot_id(source_key)}),
        )
        if doc is None:
            return None
        return SourceSnapshot(
            source_key=doc["source_key"],
            run_id=doc["run_id"],
            basis=doc["basis"],
            state=json.loads(doc["state"]),
            full_sweep=bool(doc["full_sweep"]),
            nights_since_full=int(doc["nights_since_full"]),
            removed=int(doc["removed"]),
            taken_at=doc["taken_at"],
        )

    def save_source_snapshot(self, snapshot: SourceSnapshot) -> None:
        """Replace this source's snapshot (one document per target and source)."""
        s = snapshot
        doc = {
            "target": self.target,
            "source_key": s.source_key,
            "run_id": s.run_id,
            "basis": s.basis,
            "state": json.dumps(s.state),
            "full_sweep": s.full_sweep,
            "nights_since_full": s.nights_since_full,
            "removed": s.removed,
            "taken_at": s.taken_at,
        }
        key = self._snapshot_id(s.source_key)
        retrying(
            self.conn,
            "recording the source snapshot",
            lambda: self.snapshots.replace_one({"_id": key}, doc, upsert=True),
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
        """Unregister (if still registered) and release the shared client."""
        try:
            self.unregister()
        finally:
            self.conn.close()


def _jsonable(value: Any) -> Any:
    """A report or meta dict as BSON-safe plain data (keys as strings, no odd types)."""
    return json.loads(json.dumps(value, default=str))
