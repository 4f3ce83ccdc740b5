"""What the MongoDB source, sink and checkpoint store share.

- **Secrets.** The URI comes from an environment variable and may hold a password.
  :func:`redact_uri` and :func:`scrub` are used on every string that can leave the
  process (descriptions, errors, logs, reports), so the password never does.
- **Connecting.** One :class:`~pymongo.MongoClient` per URI per process, shared by
  the parts of a run (pymongo clients are thread-safe) and closed with the last
  user. A server that is down at start-up fails within ``server_selection_timeout_ms``
  with a :class:`~pipeline.errors.TargetError` (exit 1), never a hang.
- **Transient faults.** Network errors, step-downs and "not primary" answers are
  retried with exponential backoff by :func:`retrying` (tenacity), only around
  reads and idempotent writes, for at most ``retry_s`` seconds; anything else, or
  a fault that outlasts the budget, becomes a ``TargetError`` with a clean message.
- **Typed ids.** Chunk ids are strings in the pipeline; MongoDB ids may be
  ObjectIds, integers or UUIDs. :func:`id_candidates` turns a string id back into
  every BSON value it may have come from, so writes and lookups match the original
  document with ``{"_id": {"$in": candidates}}`` (an index lookup of one to three keys).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote

from pipeline.config import secret_from_env
from pipeline.errors import ConfigError, PodembedError, TargetError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URI_ENV = "PODEMBED_MONGO_URI"

# Ids per ``$in`` query. Small pages cost a few more round trips on MongoDB (~1 ms each),
# but SecantusDB's ``$in`` grows super-linearly (measured: 100 ids 15 ms, 1000 ids 1 s).
IN_PAGE = 200

# Query parameters whose values are secret (lower-cased names).
_SECRET_PARAMS = {
    "password",
    "authmechanismproperties",
    "tlscertificatekeyfilepassword",
    "sslpemkeypassword",
    "aws_session_token",
    "awssessiontoken",
}
_SCHEME = re.compile(r"^(mongodb(?:\+srv)?://)", re.IGNORECASE)
_URI_IN_TEXT = re.compile(r"mongodb(?:\+srv)?://[^\s'\"<>]+", re.IGNORECASE)


# --------------------------------------------------------------------------- secrets


def _split_uri(uri: str) -> tuple[str, str, str, str]:
    """(scheme, userinfo, hosts_and_path, query) of a MongoDB URI, without validation."""
    m = _SCHEME.match(uri)
    scheme = m.group(1) if m else ""
    rest = uri[len(scheme):]
    rest, sep, query = rest.partition("?")
    query = sep + query
    # userinfo ends at the last "@" before the query: a password may hold "@" or "/".
    at = rest.rfind("@")
    userinfo, hosts = (rest[: at + 1], rest[at + 1:]) if at >= 0 else ("", rest)
    return scheme, userinfo, hosts, query


def redact_uri(uri: str) -> str:
    """The URI with its password (and secret query options) replaced by ``***``.

    ``mongodb://app:s3cret@db1:27017/?authSource=admin`` becomes
    ``mongodb://app:***@db1:27017/?authSource=admin``.
    """
    scheme, userinfo, hosts, query = _split_uri(uri)
    if userinfo:
        user, colon, _ = userinfo[:-1].partition(":")
        userinfo = f"{user}:***@" if colon else f"{user}@"
    if query:
        parts = []
        for item in query[1:].split("&"):
            key, eq, _ = item.partition("=")
            parts.append(f"{key}=***" if eq and key.lower() in _SECRET_PARAMS else item)
        query = "?" + "&".join(parts)
    return scheme + userinfo + hosts + query


def uri_secrets(uri: str) -> list[str]:
    """The secret substrings of ``uri`` (password raw and decoded, secret option values)."""
    _, userinfo, _, query = _split_uri(uri)
    found: list[str] = []
    if userinfo:
        _, colon, password = userinfo[:-1].partition(":")
        if colon and password:
            found += [password, unquote(password)]
    for item in query[1:].split("&") if query else []:
        key, eq, value = item.partition("=")
        if eq and value and key.lower() in _SECRET_PARAMS:
            found += [value, unquote(value)]
    # Longest first, so a decoded form that contains the raw one is replaced whole.
    return sorted({s for s in found if len(s) >= 1}, key=len, reverse=True)


def scrub(text: str, uri: str | None = None) -> str:
    """``text`` with any MongoDB URI in it redacted and the secrets of ``uri`` masked."""
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    if uri:
        for secret in uri_secrets(uri):
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs URIs and the registered secrets from every record."""

    def __init__(self) -> None:
        super().__init__()
        self.uris: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not our problem here
            return True
        clean = scrub(message)
        for uri in list(self.uris):
            clean = scrub(clean, uri)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_log_filter = RedactingFilter()


def protect_logs(uri: str) -> None:
    """Scrub ``uri``'s secrets from every log record that reaches the root logger's handlers
    (pymongo's own debug logs included)."""
    _log_filter.uris.add(uri)
    for handler in logging.getLogger().handlers:
        if _log_filter not in handler.filters:
            handler.addFilter(_log_filter)


# --------------------------------------------------------------------------- options


@dataclass(slots=True)
class ConnectionOptions:
    """How to reach the server (shared by source, sink and checkpoint options)."""

    # Name of the environment variable holding the URI (the URI itself never goes in a file).
    uri_env: str = DEFAULT_URI_ENV
    # How long to wait for a reachable server before an operation fails (then retried).
    server_selection_timeout_ms: int = 5000
    # Total time transient faults (network, step-down) are retried before the run fails.
    retry_s: float = 60.0

    def validate_connection(self, prefix: str) -> None:
        """Check the shared keys."""
        if not self.uri_env.strip():
            raise ConfigError(f"{prefix}.uri_env: must name an environment variable")
        if self.server_selection_timeout_ms < 100:
            raise ConfigError(f"{prefix}.server_selection_timeout_ms: must be at least 100")
        if self.retry_s < 0:
            raise ConfigError(f"{prefix}.retry_s: must not be negative")


def check_name(value: str, key: str, what: str = "name") -> None:
    """Database and collection names: non-empty, no spaces, dollars or NULs."""
    if not value or not value.strip():
        raise ConfigError(f"{key}: must not be empty")
    if any(ch in value for ch in " $\x00"):
        raise ConfigError(f"{key}: {value!r} is not a valid MongoDB {what}")


def check_field(value: str, key: str) -> None:
    """Field paths: non-empty, no leading ``$``, no empty path segments."""
    if not value or value.startswith("$") or "" in value.split("."):
        raise ConfigError(f"{key}: {value!r} is not a valid field path")


# --------------------------------------------------------------------------- clients


class _Shared:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.users = 0


_clients: dict[tuple[str, int], _Shared] = {}
_clients_lock = threading.Lock()


@dataclass(slots=True)
class Connection:
    """A shared client and what may be printed about it."""

    client: Any
    uri: str  # the real URI: never print it; use ``safe``
    safe: str  # the redacted URI
    retry_s: float
    _key: tuple[str, int]
    _closed: bool = False

    def scrub(self, text: str) -> str:
        """Text with this connection's secrets masked."""
        return scrub(text, self.uri)

    def close(self) -> None:
        """Give the client back; the last user closes it."""
        if self._closed:
            return
        self._closed = True
        with _clients_lock:
            shared = _clients.get(self._key)
            if shared is None:
                return
            shared.users -= 1
            if shared.users <= 0:
                _clients.pop(self._key, None)
                shared.client.close()


def connect(options: ConnectionOptions, what: str) -> Connection:
    """A checked connection for ``what`` (e.g. ``"source"``); fails fast when the server is down.

    Raises :class:`ConfigError` when the variable is unset or the URI malformed, and
    :class:`TargetError` when no server answers within the selection timeout.
    """
    from pymongo import MongoClient
    from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

    uri = secret_from_env(options.uri_env, f"{what}.uri_env")
    safe = redact_uri(uri)
    protect_logs(uri)
    timeout = options.server_selection_timeout_ms
    key = (uri, timeout)
    with _clients_lock:
        shared = _clients.get(key)
        if shared is None:
            try:
                client = MongoClient(
                    uri,
                    serverSelectionTimeoutMS=timeout,
                    connectTimeoutMS=min(timeout, 10_000),
                    tz_aware=True,
                    appname="podembed",
                    retryWrites=True,
                    retryReads=True,
                )
            except (InvalidURI, ConfigurationError) as exc:
                raise ConfigError(
                    f"{what}: the MongoDB URI in ${options.uri_env} is invalid "
                    f"({scrub(str(exc), uri)}): {safe}"
                ) from None
            shared = _clients[key] = _Shared(client)
        shared.users += 1
    conn = Connection(client=shared.client, uri=uri, safe=safe, retry_s=options.retry_s, _key=key)
    try:
        conn.client.admin.command("ping")
    except PyMongoError as exc:
        conn.close()
        raise TargetError(
            f"{what}: cannot reach MongoDB at {safe} within {timeout / 1000:g} s "
            f"({_short(conn.scrub(str(exc)))}); check that the server is up and "
            f"${options.uri_env} is right"
        ) from None
    return conn


def _short(message: str, limit: int = 300) -> str:
    message = message.split(", Timeout:")[0].split(", full error:")[0]
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --------------------------------------------------------------------------- retries

# Server error codes that mean "try again elsewhere or later" (step-down, shutdown, ...).
_TRANSIENT_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


def is_transient(exc: BaseException) -> bool:
    """Network errors, timeouts, step-downs and not-primary answers."""
    from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, NetworkTimeout...
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", []) if exc.details else []
        return bool(errors) and all(e.get("code") in _TRANSIENT_CODES for e in errors)
    if isinstance(exc, OperationFailure):
        return exc.code in _TRANSIENT_CODES or exc.has_error_label("RetryableWriteError")
    return False


def retrying(conn: Connection, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a read or an idempotent write), retrying transient faults with backoff.

    Gives up after ``retry_s`` seconds; every failure leaves as a :class:`TargetError`
    whose message names ``what`` and holds no secret.
    """
    from pymongo.errors import PyMongoError
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception,
        stop_after_delay,
        wait_exponential_jitter,
    )

    def note(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "MongoDB %s failed (%s); retrying in %.1f s",
            what,
            conn.scrub(_short(str(exc))),
            state.next_action.sleep if state.next_action else 0.0,
        )

    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(conn.retry_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
            before_sleep=note,
            reraise=True,
        ):
            with attempt:
                return fn()
    except PodembedError:
        raise
    except PyMongoError as exc:
        kind = "unreachable" if is_transient(exc) else "failed"
        raise TargetError(
            f"MongoDB {kind} while {what} at {conn.safe}: {conn.scrub(_short(str(exc)))}"
            + (f" (retried for {conn.retry_s:g} s)" if is_transient(exc) else "")
        ) from None
    except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
        raise TargetError(f"MongoDB {what} failed at {conn.safe}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def guarded(conn: Connection, what: str) -> Any:
    """Turn any pymongo error inside the block into a clean :class:`TargetError` (no retry)."""
    from pymongo.errors import PyMongoError

    try:
        yield
    except PyMongoError as exc:
        raise TargetError(
            f"MongoDB failed while {what} at {conn.safe}: {conn.scrub(_short(str(exc)))}"
        ) from None


def ensure_index(conn: Connection, collection: Any, keys: list[tuple[str, int]], **kw: Any) -> None:
    """Create an index if missing (idempotent; an equal index is a no-op on the server)."""
    from pymongo.errors import OperationFailure

    def create() -> None:
        try:
            collection.create_index(keys, **kw)
        except OperationFailure as exc:
            # 85/86: an index with these keys exists under another name or options: keep it.
            if exc.code in (85, 86):
                return
            # 13: this user may read and write but not build indexes: work without it.
            if exc.code == 13:
                log.warning(
                    "no permission to create index %s on %s; continuing without it (slower reads)",
                    keys, collection.full_name,
                )
                return
            raise

    retrying(conn, f"creating index {keys} on {collection.full_name}", create)


def server_now(conn: Connection) -> datetime:
    """The server's clock (leases are compared against one clock, whoever holds them)."""

    def ask() -> datetime:
        reply = conn.client.admin.command("hello")
        now = reply.get("localTime")
        if not isinstance(now, datetime):
            return datetime.now(UTC)
        return now if now.tzinfo else now.replace(tzinfo=UTC)

    return retrying(conn, "reading the server clock", ask)


# --------------------------------------------------------------------------- ids

_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")
_INT = re.compile(r"^-?[0-9]{1,19}$")


def id_to_str(value: Any) -> Any:
    """A chunk id as the pipeline sees it: ObjectIds and UUIDs become strings.

    Strings and integers pass through (validation turns integers into strings);
    anything else is returned unchanged, and validation dead-letters it.
    """
    from bson import ObjectId
    from bson.binary import Binary

    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype in (3, 4):
        try:
            return str(value.as_uuid(value.subtype))
        except ValueError:
            return value
    return value


def id_candidates(chunk_id: str) -> list[Any]:
    """Every BSON value whose string form is ``chunk_id`` (string first)."""
    from bson import ObjectId
    from bson.binary import Binary, UuidRepresentation

    out: list[Any] = [chunk_id]
    if _HEX24.match(chunk_id):
        out.append(ObjectId(chunk_id))
    elif _INT.match(chunk_id):
        n = int(chunk_id)
        if -(2**63) <= n < 2**63 and str(n) == chunk_id:
            out.append(n)
    else:
        try:
            u = uuid.UUID(chunk_id)
        except ValueError:
            pass
        else:
            if str(u) == chunk_id:
                out.append(Binary.from_uuid(u, UuidRepresentation.STANDARD))
    return out


def id_filter(field: str, chunk_ids: Iterable[str]) -> dict[str, Any]:
    """``{field: {"$in": [...every typed form...]}}`` for these chunk ids."""
    values: list[Any] = []
    for cid in chunk_ids:
        values.extend(id_candidates(cid))
    return {field: {"$in": values}}


def one_id_filter(field: str, chunk_id: str) -> dict[str, Any]:
    """Match one chunk id in whatever BSON type it is stored as."""
    cands = id_candidates(chunk_id)
    return {field: cands[0]} if len(cands) == 1 else {field: {"$in": cands}}


def get_path(doc: dict[str, Any], path: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``; ``None`` when any step is missing."""
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def pages(items: list[T], size: int) -> Iterable[list[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- extended JSON


def to_ejson(value: Any) -> Any:
    """A BSON value as plain JSON data that keeps its type (``{"$oid": ...}`` and so on)."""
    from bson import json_util

    return json.loads(json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS))


def from_ejson(data: Any) -> Any:
    """Inverse of :func:`to_ejson`."""
    from bson import json_util

    return json_util.loads(json.dumps(data), json_options=json_util.CANONICAL_JSON_OPTIONS)


def utcnow() -> datetime:
    """Local UTC time, millisecond precision (what BSON dates keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def sleep(seconds: float) -> None:
    """Indirection for tests that shorten waits."""
    time.sleep(seconds)
