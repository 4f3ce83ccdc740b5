"""Keeping the client's native memory flat as the corpus grows.

A run's memory is mostly native: Lance (the sink's table), Arrow and the tokenizer allocate
from many threads (Lance's and the tokenizer's thread pools). glibc gives each thread that
contends for the heap its own arena, up to 8 per core, and memory freed into one arena is
not reused by another: measured on the scale benchmark, resident memory then climbs with
every write even though live Python memory stayed at ~5 MiB and Arrow's at ~3 MiB. Capping
the arenas (the well-known ``MALLOC_ARENA_MAX`` for native-heavy services) keeps freed
memory reusable; ``malloc_trim`` hands freed pages back after a large phase (compaction).

Both are no-ops where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas the client allows: enough for the reader, writer and main threads not to queue.
DEFAULT_ARENAS = 2


@cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim")):
        return None  # not glibc
    return lib


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; ``True`` when applied.

    Call it early (before thread pools start): arenas already made stay. A
    ``MALLOC_ARENA_MAX`` set in the environment wins (glibc read it at start).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Return freed heap pages to the system (after a phase that allocated a lot)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
