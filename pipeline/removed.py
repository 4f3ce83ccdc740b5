"""Finding chunks whose vector is stored but which the source no longer has."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipeline.records import StoredState
from pipeline.sources.base import Source

PAGE = 10_000  # ids asked of the source at once: bounded memory, few round trips


def removed_ids(source: Source, states: Iterable[StoredState]) -> Iterator[str]:
    """Yield the ids of ``states`` that do not exist in ``source``, paging the lookups."""
    page: list[str] = []
    for state in states:
        page.append(state.chunk_id)
        if len(page) >= PAGE:
            existing = source.existing_ids(page)
            yield from (cid for cid in page if cid not in existing)
            page = []
    if page:
        existing = source.existing_ids(page)
        yield from (cid for cid in page if cid not in existing)
