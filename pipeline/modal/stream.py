"""A thread-fed async iterator: how batches from the runner's thread reach Modal's event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)


_END = object()

MapFn = Callable[..., Iterable[Any]]


class InputStream:
    """Batches from the runner (or halves of failed ones), turned into payloads by
    ``register`` as they are pulled, handed to Modal's input pump.

    A feeder thread pulls from the runner (which may block on its reader) and stops
    pulling while ``window`` batches are unanswered. Modal iterates the stream with
    ``async for`` on its own event loop, which this never blocks; plain ``for`` (used by
    stand-ins in tests) works too.
    """

    def __init__(
        self, batches: Iterable[Any], register: Callable[[Any], dict[str, Any]], window: int
    ) -> None:
        self._batches = batches
        self._register = register
        self._permits = threading.Semaphore(window)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def release(self) -> None:
        """A batch was answered (result, error or exception): room for one more."""
        self._permits.release()

    def close(self) -> None:
        """Stop pulling from the runner."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._feed, name="podembed-modal-feed", daemon=True)
                self._thread.start()

    def _feed(self) -> None:
        try:
            source = iter(self._batches)
            while not self._closed.is_set():
                while not self._permits.acquire(timeout=0.2):
                    if self._closed.is_set():
                        return
                try:
                    batch = next(source)
                except StopIteration:
                    return
                self._queue.put(self._register(batch))
        except BaseException as exc:  # surfaced by the consumer after the stream ends
            self.error = exc
        finally:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    async def _aiter(self) -> AsyncIterator[dict[str, Any]]:
        self._start()
        while True:
            try:
                item = await asyncio.to_thread(self._queue.get, True, 0.5)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._aiter()
