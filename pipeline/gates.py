"""A test hook that holds a run at a named point until a test lets it go.

Tests of overlapping runs must know that one run is *inside* its work while another
starts; sleeping would make them slow and flaky. With ``PODEMBED_TEST_GATE`` set to a
folder, a run reaching point ``P`` (e.g. ``claimed-1``: the first shard's episodes are
claimed) checks for ``<folder>/hold-P``. If it exists, the run writes ``at-P`` (plus
``.pid``) and waits until the test deletes ``hold-P``. Unset (always, outside tests),
a gate costs one environment lookup.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

ENV = "PODEMBED_TEST_GATE"
POLL_S = 0.01
MAX_HOLD_S = 600.0  # a forgotten hold must not hang a test run for ever

log = logging.getLogger(__name__)


def gate(point: str) -> None:
    """Wait at ``point`` while the test's ``hold-<point>`` file exists."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    hold = Path(folder) / f"hold-{point}"
    if not hold.exists():
        return
    at = Path(folder) / f"at-{point}"
    at.write_text(f"{os.getpid()}\n", encoding="ascii")
    log.warning("test gate: holding at %s", point)
    deadline = time.monotonic() + MAX_HOLD_S
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)
