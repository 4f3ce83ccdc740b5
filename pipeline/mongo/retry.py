"""Transient MongoDB faults: retried with backoff, everything else a clean error.

Network errors, step-downs and "not primary" answers are retried with exponential
backoff by :func:`retrying` (tenacity), only around reads and idempotent writes, for at
most ``retry_s`` seconds; anything else, or a fault that outlasts the budget, becomes a
``TargetError`` with a message that holds no secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from pipeline.errors import PodembedError, TargetError
from pipeline.mongo.connection import Connection, short_message

log = logging.getLogger(__name__)

T = TypeVar("T")


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
            conn.scrub(short_message(str(exc))),
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
            f"MongoDB {kind} while {what} at {conn.safe}: {conn.scrub(short_message(str(exc)))}"
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
            f"MongoDB failed while {what} at {conn.safe}: {conn.scrub(short_message(str(exc)))}"
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
                    keys,
                    collection.full_name,
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
