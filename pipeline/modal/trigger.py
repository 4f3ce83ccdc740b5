"""Starting per-episode ingests: from the CLI, and the web trigger's guards.

The web trigger (``jobs/modal_app.py``) answers the outside world, so it checks what it
is given (:func:`check_episode_id`), how often (:class:`RateLimit`) and whether the
episode is already on its way (:class:`PendingEpisodes`) before it spawns a job.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.config import Config
from pipeline.errors import ConfigError, PodembedError, TargetError
from pipeline.modal.credentials import modal_error, require_modal_credentials
from pipeline.modal.options import INGEST_FUNCTION, ModalOptions

log = logging.getLogger(__name__)


def trigger_ingest(
    config: Config, episode_id: str, *, lookup: Callable[[str, str, str | None], Any] | None = None
) -> str:
    """Start the deployed ``ingest_episode(episode_id)``; returns the Modal call id at once.

    ``lookup(app_name, function_name, environment)`` replaces ``modal.Function.from_name``
    (tests). Follow the call with ``modal.FunctionCall.from_id(call_id).get()``.
    """
    options = config.executor.options if config.executor.kind == "modal" else ModalOptions()
    episode_id = check_episode_id(episode_id)
    env = options.environment or None
    try:
        if lookup is None:
            require_modal_credentials()
            import modal

            fn = modal.Function.from_name(options.app_name, INGEST_FUNCTION, environment_name=env)
        else:
            fn = lookup(options.app_name, INGEST_FUNCTION, env)
        call = fn.spawn(episode_id)
    except PodembedError:
        raise
    except Exception as exc:
        mapped = modal_error(exc, options, f"function {INGEST_FUNCTION}")
        if mapped is not None:
            raise mapped from None
        raise TargetError(f"Modal: could not start {INGEST_FUNCTION}: {type(exc).__name__}: {exc}") from exc
    return str(call.object_id)


# ------------------------------------------------------------------ the web trigger's guards
EPISODE_ID_MAX = 128
_EPISODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=/-]*")


def check_episode_id(value: Any) -> str:
    """The episode id, stripped; :class:`ConfigError` unless it is 1-128 characters of
    letters, digits and ``. _ : @ + = / -`` (no spaces, control characters or NUL)."""
    if not isinstance(value, str):
        raise ConfigError(f"episode id: expected a string, got {type(value).__name__}")
    episode_id = value.strip()
    if not episode_id:
        raise ConfigError("episode id: must not be empty")
    if len(episode_id) > EPISODE_ID_MAX:
        raise ConfigError(f"episode id: {len(episode_id)} characters, at most {EPISODE_ID_MAX} allowed")
    if not _EPISODE_ID.fullmatch(episode_id):
        bad = next((c for c in episode_id if not re.fullmatch(r"[A-Za-z0-9._:@+=/-]", c)), episode_id[0])
        raise ConfigError(
            f"episode id: character {bad!r} not allowed (letters, digits and . _ : @ + = / - only, "
            "starting with a letter or digit)"
        )
    return episode_id


class RateLimit:
    """At most ``per_minute`` requests in any 60-second window (thread-safe)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """0 and counts the request if it is allowed; else the seconds until one is."""
        with self._lock:
            now = self.clock()
            while self._times and now - self._times[0] >= 60.0:
                self._times.popleft()
            if len(self._times) >= self.per_minute:
                return max(0.001, 60.0 - (now - self._times[0]))
            self._times.append(now)
            return 0.0


class Store(Protocol):
    """The part of ``modal.Dict`` that :class:`PendingEpisodes` uses."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def pop(self, key: Any, default: Any = None) -> Any: ...


def modal_call_done(call_id: str) -> bool:
    """Whether the Modal call ``call_id`` has ended (returned, failed or timed out)."""
    import modal
    from modal import exception as mexc

    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
    except mexc.FunctionTimeoutError:
        return True  # the call itself ran out of time
    except mexc.TimeoutError:
        return False  # no output yet: still pending or running
    except Exception:  # it failed (its exception comes back here), or it is gone
        return True
    return True


class PendingEpisodes:
    """Episodes with an ingest pending or running, and its call id.

    Kept in a ``modal.Dict`` shared by the trigger's containers and the ingest jobs:

    - a request first *reserves* the episode with ``put(..., skip_if_exists=True)``, the
      store's one atomic step, then spawns the ingest and records its call id. Of two
      requests (in one container or two, during a redeploy) exactly one spawns; the other
      answers with the call on its way;
    - an entry whose call has ended (``call_done``: returned, failed, timed out), whose
      reservation was never completed within ``reserve_s`` (the request died before
      spawning), or older than ``ttl_s`` no longer counts: the next request spawns again.
      Exactly one request replaces a stale entry (it reserves the replacement first);
    - the job frees its episode when it ends (:meth:`finish`).

    No lock is held around the store or Modal: requests for different episodes never
    wait on each other.
    """

    def __init__(
        self,
        store: Store,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        *,
        call_done: Callable[[str], bool] = modal_call_done,
        reserve_s: float = 120.0,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.call_done = call_done
        self.reserve_s = reserve_s

    def start(self, episode_id: str, spawn: Callable[[str], str]) -> tuple[str, bool]:
        """``(call id, True)`` after spawning an ingest, or ``(call id on its way, False)``;
        the call id is ``""`` while another request is still spawning it."""
        for _ in range(3):
            now = self.clock()
            mine = {"call_id": "", "at": now, "by": uuid.uuid4().hex}
            if self.store.put(episode_id, mine, skip_if_exists=True):
                return self._spawn(episode_id, spawn, mine), True
            current = self.store.get(episode_id)
            if current is None:
                continue  # freed meanwhile: reserve again
            if self._on_its_way(current, now):
                return str(current.get("call_id") or ""), False
            # Stale: the first request to reserve its replacement replaces it.
            old = current if isinstance(current, dict) else {}
            generation = f"{old.get('by', '')}/{old.get('call_id', '')}/{old.get('at', '')}"
            if not self.store.put(f"{episode_id}\x1freplaces\x1f{generation}", now, skip_if_exists=True):
                latest = self.store.get(episode_id)
                return str(latest.get("call_id") or "") if isinstance(latest, dict) else "", False
            log.info(
                "trigger: episode %s: its earlier ingest %s has ended or expired; starting again",
                episode_id,
                old.get("call_id") or "(never spawned)",
            )
            self.store.put(episode_id, mine)
            return self._spawn(episode_id, spawn, mine), True
        raise TargetError(f"episode {episode_id}: its pending entry keeps changing; retry")

    def _on_its_way(self, entry: Any, now: float) -> bool:
        if not isinstance(entry, dict):
            return False
        age = now - float(entry.get("at") or 0.0)
        call_id = str(entry.get("call_id") or "")
        if not call_id:
            return age < self.reserve_s  # another request is spawning it
        return age < self.ttl_s and not self.call_done(call_id)

    def _spawn(self, episode_id: str, spawn: Callable[[str], str], mine: dict[str, Any]) -> str:
        try:
            call_id = spawn(episode_id)
        except BaseException:
            current = self.store.get(episode_id)
            if isinstance(current, dict) and current.get("by") == mine["by"]:
                self.store.pop(episode_id, None)  # free it for the next request
            raise
        self.store.put(episode_id, {**mine, "call_id": call_id})
        return call_id

    def finish(self, episode_id: str, call_id: str | None) -> None:
        """The ingest ``call_id`` ended: the episode is free again (unless a newer call holds it)."""
        current = self.store.get(episode_id)
        if isinstance(current, dict) and current.get("call_id") == call_id:
            self.store.pop(episode_id, None)
