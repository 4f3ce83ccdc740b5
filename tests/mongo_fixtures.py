"""MongoDB test fixtures: a real wire-protocol server (SecantusDB), never a mock.

Import the fixtures into a test module with::

    from tests.mongo_fixtures import mongo, mongo_server, secantus_proc  # noqa: F401

- ``mongo_server``: one in-process SecantusDB (``:memory:``) for the session.
- ``mongo``: a fresh database on it per test, its URI exported in ``URI_ENV``.
- ``secantus_proc``: a ``secantusd-py`` subprocess on a free port with a data
  directory, which a test can stop, kill -9 and restart (same port, same data).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Config, parse_config
from pipeline.mongo.connection import IN_PAGE
from pipeline.mongo.retry import retrying
from pipeline.mongo.values import decode_vector, get_path, id_filter, id_to_str, pages
from tests.helpers import ROOT, sample_rows

URI_ENV = "PODEMBED_TEST_MONGO_URI"
TINY_DIM = 32  # tests.synthetic_model.TINY.out_dim


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[str]:
    """URI of an in-process SecantusDB server with in-memory storage."""
    from secantus import SecantusDBServer

    with SecantusDBServer(storage_path=":memory:") as server:
        yield server.uri


@dataclass
class MongoEnv:
    """One test's database on a server, and a client for assertions."""

    uri: str
    database: str
    client: Any
    uri_env: str = URI_ENV

    @property
    def db(self) -> Any:
        return self.client[self.database]


@pytest.fixture
def mongo(
    mongo_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[MongoEnv]:
    """A fresh database per test; ``URI_ENV`` holds the server's URI."""
    from pymongo import MongoClient

    name = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:40]
    database = f"t_{name}_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(URI_ENV, mongo_server)
    client = MongoClient(mongo_server, tz_aware=True, serverSelectionTimeoutMS=5000)
    try:
        yield MongoEnv(mongo_server, database, client)
    finally:
        client.drop_database(database)
        client.close()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SecantusProcess:
    """A ``secantusd-py`` subprocess that can be stopped and restarted on the same data."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 30.0) -> None:
        exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
        self.log_path = self.data_dir.parent / f"secantusd-{self.port}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.data_dir),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"secantusd-py did not open port {self.port} in {timeout} s")

    def stop(self, timeout: float = 20.0) -> None:
        """Clean shutdown (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """kill -9 (WiredTiger recovers on the next start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def secantus_proc(tmp_path: Path) -> Iterator[SecantusProcess]:
    """A started ``secantusd-py`` with a data directory under ``tmp_path``."""
    server = SecantusProcess(tmp_path / "secantus-data")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --------------------------------------------------------------------------- data and configs


def load_chunks(env: MongoEnv, rows: list[dict[str, Any]], collection: str = "chunks") -> list[str]:
    """Insert sample rows as chunk documents (``_id`` = chunk id); returns the ids."""
    docs = [{"_id": r["chunk_id"], **{k: v for k, v in r.items() if k != "chunk_id"}} for r in rows]
    if docs:
        env.db[collection].insert_many(docs)
    return [d["_id"] for d in docs]


def tiny_model(model_dir: str) -> dict[str, Any]:
    """``[model]`` for the random-weight tiny T5 (32 dims)."""
    return {"id": "tiny-t5", "path": model_dir, "dimension": TINY_DIM, "max_seq_length": 128, "device": "cpu"}


def mongo_raw(
    env: MongoEnv,
    model: dict[str, Any],
    out: Path,
    *,
    source: dict[str, Any] | None = None,
    sink: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A raw MongoDB -> MongoDB config dict (in place on ``chunks`` unless ``sink`` says otherwise)."""
    conn = {
        "uri_env": env.uri_env,
        "database": env.database,
        "server_selection_timeout_ms": 2000,
        "retry_s": 20.0,
    }
    return {
        "source": {
            "kind": "mongo",
            **conn,
            "collection": "chunks",
            "fields": {"chunk_id": "_id", **(fields or {})},
            **(source or {}),
        },
        "sink": {"kind": "mongo", **conn, "collection": "chunks", **(sink or {})},
        "checkpoint": {"kind": "mongo", "lease_ttl_s": 3.0, **(checkpoint or {})},
        "model": dict(model),
        "batching": {"window_chunks": 32, "token_budget": 4096, "max_batch_size": 32, **(batching or {})},
        "executor": {"kind": "local"},
        "cost": {"device": "cpu", "hourly_usd": 0.0},
        "report": {"dir": str(out / "runs")},
    }


def mongo_config(env: MongoEnv, model: dict[str, Any], out: Path, **kw: Any) -> Config:
    """:func:`mongo_raw` parsed into a :class:`Config`."""
    return parse_config(mongo_raw(env, model, out, **kw))


def to_toml(raw: dict[str, Any]) -> str:
    """A two-level config dict as TOML (enough for our configs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        subtables = {k: v for k, v in table.items() if isinstance(v, dict) and k == "fields"}
        for k, v in table.items():
            if k not in subtables:
                lines.append(f"{k} = {value(v)}")
        for k, v in subtables.items():
            lines.append(f"[{section}.{k}]")
            lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
        lines.append("")
    return "\n".join(lines)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a ``python -m jobs.cli`` subprocess."""
    env = dict(os.environ)
    env.pop("MODAL_TOKEN_ID", None)
    env.pop("MODAL_TOKEN_SECRET", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def stored(
    env: MongoEnv,
    collection: str = "chunks",
    vector_field: str = "embedding",
    meta_field: str = "embedding_meta",
    key: str = "_id",
) -> dict[str, dict[str, Any]]:
    """chunk id -> {"vector": float32 array, "meta": metadata} for every stored vector."""
    from pipeline.mongo.values import decode_vector

    out = {}
    for doc in env.db[collection].find({vector_field: {"$exists": True}}):
        out[str(doc[key])] = {"vector": decode_vector(doc[vector_field]), "meta": doc[meta_field], "doc": doc}
    return out


def subset(n_episodes: int) -> list[dict[str, Any]]:
    """The first ``n_episodes`` episodes of the sample corpus."""
    return sample_rows(episodes=n_episodes)


def assert_unit(vectors: list[np.ndarray], dim: int) -> None:
    """Every vector: float32, ``dim`` long, finite, unit norm."""
    for v in vectors:
        assert v.dtype == np.float32 and v.shape == (dim,)
        assert np.all(np.isfinite(v))
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


def mongo_vectors(sink: Any, chunk_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """A MongoDB sink's stored vectors as float32, by chunk id (for checks in tests)."""
    proj = {sink.key_field: 1, sink.options.vector_field: 1}
    has = {sink.options.vector_field: {"$exists": True}}
    filters = (
        [has]
        if chunk_ids is None
        else [{**has, **id_filter(sink.key_field, page)} for page in pages(list(chunk_ids), IN_PAGE)]
    )
    docs = [
        d
        for flt in filters
        for d in retrying(sink.conn, "reading vectors", lambda f=flt: list(sink.target.find(f, proj)))
    ]
    return {
        str(id_to_str(get_path(d, sink.key_field))): decode_vector(get_path(d, sink.options.vector_field))
        for d in docs
    }
