"""The per-process model cache: the only global state in podembed.

Loading instructor-xl takes seconds to minutes; a process (a CLI run, a Modal
container) loads each model once and reuses it for every batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_models: dict[tuple[Any, ...], Any] = {}


def cached(key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """Return the model stored under ``key``, loading it with ``load`` the first time."""
    with _lock:
        if key not in _models:
            _models[key] = load()
        return _models[key]


def clear() -> None:
    """Drop every cached model (tests, and freeing GPU memory)."""
    with _lock:
        _models.clear()


def rekey(old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
    """Move a cached model to a new key (after it was moved to another device)."""
    with _lock:
        if old in _models:
            _models[new] = _models.pop(old)
