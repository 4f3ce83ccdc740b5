"""``python -m tests.gated_cli ...``: the CLI, held at named points until a test lets it go.

Tests of overlapping runs must know that one run is *inside* its work while another
starts; sleeping would make them slow and flaky. With ``PODEMBED_TEST_GATE`` set to a
folder, a run reaching point ``P`` (e.g. ``claimed-1``: the first shard's episodes are
claimed) checks for ``<folder>/hold-P``. If it exists, the run writes ``at-P`` (plus
``.pid``) and waits until the test deletes ``hold-P``. Unset (always, outside tests),
a gate costs one environment lookup.

The hook lives here, not in the library: this module wraps ``Claims.take`` (point
``claimed-N`` after the run's N-th claim) and then runs the real CLI.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

from pipeline.interfaces.checkpoint import Holder

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


def _gated_take() -> None:
    from pipeline.engine.claims import Claims

    take = Claims.take
    counts: dict[int, int] = {}

    def gated(self: Claims, units: Collection[str]) -> dict[str, Holder]:
        others = take(self, units)
        if set(units):  # an empty claim is no step of the run
            counts[id(self)] = counts.get(id(self), 0) + 1
            gate(f"claimed-{counts[id(self)]}")
        return others

    Claims.take = gated  # type: ignore[method-assign]


if __name__ == "__main__":
    _gated_take()
    from jobs.cli import main

    main()
