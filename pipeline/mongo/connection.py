"""Reaching MongoDB: the URI and its secrets, connection options, one shared client per URI.

The URI comes from an environment variable and may hold a password. :func:`redact_uri`
and :func:`scrub` are used on every string that can leave the process (descriptions,
errors, logs, reports), so the password never does. One :class:`~pymongo.MongoClient`
per URI per process is shared by the parts of a run (pymongo clients are thread-safe)
and closed with the last user. A server that is down at start-up fails within
``server_selection_timeout_ms`` with a :class:`~pipeline.errors.TargetError` (exit 1).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from pipeline.config import secret_from_env
from pipeline.errors import ConfigError, TargetError

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
    rest = uri[len(scheme) :]
    rest, sep, query = rest.partition("?")
    query = sep + query
    # userinfo ends at the last "@" before the query: a password may hold "@" or "/".
    at = rest.rfind("@")
    userinfo, hosts = (rest[: at + 1], rest[at + 1 :]) if at >= 0 else ("", rest)
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

    def validate_connection(self, prefix: str, uri_required: bool = True) -> None:
        """Check the shared keys (``uri_required=False``: an empty ``uri_env`` borrows another's)."""
        if uri_required and not self.uri_env.strip():
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


# URI options that name a file the driver reads at start-up (pymongo spells them in any case).
TLS_FILE_OPTIONS = ("tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile")


def check_tls_files(uri: str, key: str, env: str) -> None:
    """Each TLS file the URI names must be a readable PEM file; else a :class:`ConfigError` that
    names the option and the path (pymongo says neither, or raises a bare ``ssl.SSLError``)."""
    try:
        query = parse_qsl(urlsplit(uri).query, keep_blank_values=True)
    except ValueError:
        return  # a malformed URI is reported by the driver, with its own message
    names = {o.lower(): o for o in TLS_FILE_OPTIONS}
    for name, value in query:
        option = names.get(name.lower())
        if option is None:
            continue
        path = Path(value).expanduser()
        problem = ""
        if not path.exists():
            problem = "does not exist"
        elif not path.is_file():
            problem = "is not a regular file"
        else:
            try:
                with path.open("rb") as fh:
                    head = fh.read(1 << 20)
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror})"
            else:
                if b"-----BEGIN " not in head:
                    problem = "is not a PEM file (no -----BEGIN line)"
        if problem:
            raise ConfigError(
                f"{key}: the MongoDB URI in ${env} sets {option}={value}, which {problem}; "
                f"fix the path in ${env} (a PEM file this user can read)"
            )


def connected(options: ConnectionOptions, what: str, build: Callable[[Connection], T]) -> T:
    """``build(connection)`` on a fresh checked connection, closed again if ``build`` fails
    (the shape of every MongoDB part's ``open``: connect, construct and check, index)."""
    conn = connect(options, what)
    try:
        return build(conn)
    except BaseException:
        conn.close()
        raise


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
    check_tls_files(uri, f"{what}.uri_env", options.uri_env)
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
            except (InvalidURI, ConfigurationError, ValueError, TypeError, OSError) as exc:
                # pymongo raises a plain ValueError for some malformed URIs (a port that
                # is not a number); all are the user's to fix in the variable.
                raise ConfigError(
                    f"{what}.uri_env: the MongoDB URI in ${options.uri_env} is invalid "
                    f"({scrub(str(exc), uri)}): {safe}; fix ${options.uri_env} "
                    f"(or point {what}.uri_env at another variable)"
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
            f"({short_message(conn.scrub(str(exc)))}); check that the server is up and "
            f"${options.uri_env} is right"
        ) from None
    return conn


def short_message(message: str, limit: int = 300) -> str:
    message = message.split(", Timeout:")[0].split(", full error:")[0]
    return message if len(message) <= limit else message[: limit - 3] + "..."


def hosts_of(safe_uri: str) -> str:
    """``host1,host2`` part of a (redacted) URI."""
    rest = safe_uri.split("://", 1)[-1]
    rest = rest.rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0]
