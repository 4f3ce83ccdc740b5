"""Incremental work: only new, changed or other-model chunks are embedded; reindex and ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Config
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.selection import Selection
from pipeline.files.sink import read_vectors
from pipeline.parts import open_parts
from pipeline.reporting.status import Coverage, coverage
from tests.helpers import (
    MINILM,
    dataset_ids,
    make_config,
    raw_rows_in_files,
    sample_rows,
    vectors_by_id,
    write_rows,
)


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = sample_rows(episodes=3)  # ~80 chunks, 3 episodes
    return write_rows(tmp_path / "src" / "chunks.parquet", rows), rows


def test_change_three_texts_and_add_two_chunks_embeds_exactly_five(
    tmp_path: Path, corpus: tuple[Path, list[dict]]
) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    first = run(make_config(src, out), RunOptions())
    assert first.status == "completed" and first.counts.embedded == len(rows)
    before = vectors_by_id(out)

    changed = [rows[1]["chunk_id"], rows[20]["chunk_id"], rows[-1]["chunk_id"]]
    for r in rows:
        if r["chunk_id"] in changed:
            r["text"] = r["text"] + " And that is the new ending we recorded later."
    extra = [
        dict(
            rows[0],
            chunk_id=f"{rows[0]['episode_id']}-extra{i}",
            chunk_index=900 + i,
            text=f"A brand new chunk number {i} about proofing baskets.",
        )
        for i in range(2)
    ]
    write_rows(src, rows + extra)

    second = run(make_config(src, out), RunOptions())
    assert second.counts.embedded == 5
    assert second.counts.skipped == len(rows) - 3
    after = vectors_by_id(out)
    assert len(after) == len(rows) + 2
    for cid in changed:
        assert not np.allclose(before[cid], after[cid], atol=1e-4), f"{cid} was not re-embedded"
    untouched = rows[2]["chunk_id"]
    assert np.array_equal(before[untouched], after[untouched])


def test_changing_the_instruction_reembeds_everything(
    tmp_path: Path, corpus: tuple[Path, list[dict]]
) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    run(make_config(src, out), RunOptions())
    other = dict(MINILM, instruction="Represent the podcast segment for clustering:")
    report = run(make_config(src, out, model=other), RunOptions())
    assert report.counts.embedded == len(rows)
    assert report.counts.skipped == 0
    # And back to the first instruction: everything again (the fingerprint changed back).
    assert run(make_config(src, out), RunOptions()).counts.embedded == len(rows)


def test_reindex_episode_touches_only_that_episode(tmp_path: Path, corpus: tuple[Path, list[dict]]) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    run(make_config(src, out), RunOptions())
    from pipeline.files.sink import read_vectors

    runs_before = dict(zip(*[read_vectors(out)[c].to_pylist() for c in ("chunk_id", "run_id")], strict=True))
    episode = rows[-1]["episode_id"]
    report = run(
        make_config(src, out),
        RunOptions(command="reindex", selection=Selection(episode_ids=(episode,)), force=True),
    )
    in_episode = [r["chunk_id"] for r in rows if r["episode_id"] == episode]
    assert report.counts.embedded == len(in_episode) == report.counts.seen
    table = read_vectors(out)
    runs_after = dict(zip(table["chunk_id"].to_pylist(), table["run_id"].to_pylist(), strict=True))
    for cid, run_id in runs_after.items():
        expected = report.run_id if cid in in_episode else runs_before[cid]
        assert run_id == expected, cid


def test_since_and_ingest_select_by_date_and_episode(tmp_path: Path, corpus: tuple[Path, list[dict]]) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    dates = sorted({r["published_at"] for r in rows})
    cut = dates[-1]
    report = run(
        make_config(src, out), RunOptions(command="reindex", force=True, selection=Selection(since=cut))
    )
    assert report.counts.embedded == sum(r["published_at"] >= cut for r in rows)
    first_episode = rows[0]["episode_id"]
    ingest = run(
        make_config(src, out), RunOptions(command="ingest", selection=Selection(episode_ids=(first_episode,)))
    )
    assert ingest.counts.embedded == sum(r["episode_id"] == first_episode for r in rows)
    assert (
        run(
            make_config(src, out),
            RunOptions(command="ingest", selection=Selection(episode_ids=(first_episode,))),
        ).counts.embedded
        == 0
    )


def test_removed_chunks_are_reported_and_pruned(tmp_path: Path, corpus: tuple[Path, list[dict]]) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    run(make_config(src, out), RunOptions())
    gone = rows[:4]
    write_rows(src, rows[4:])
    report = run(make_config(src, out), RunOptions())
    assert report.counts.removed == 4 and report.counts.pruned == 0
    assert len(vectors_by_id(out)) == len(rows)
    pruned = run(make_config(src, out), RunOptions(prune=True))
    assert pruned.counts.pruned == 4
    remaining = vectors_by_id(out)
    assert len(remaining) == len(rows) - 4
    assert not {r["chunk_id"] for r in gone} & set(remaining)


def test_limit_defers_the_rest_and_the_next_run_finishes(
    tmp_path: Path, corpus: tuple[Path, list[dict]]
) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    first = run(make_config(src, out), RunOptions(limit=10))
    assert first.counts.embedded == 10
    assert first.counts.deferred == len(rows) - 10
    second = run(make_config(src, out), RunOptions())
    assert second.counts.embedded == len(rows) - 10
    assert len(vectors_by_id(out)) == len(rows)


def test_a_chunk_moved_to_another_episode_is_rehomed(tmp_path: Path, corpus: tuple[Path, list[dict]]) -> None:
    src, rows = corpus
    out = tmp_path / "out"
    run(make_config(src, out), RunOptions())
    moved = rows[5]["chunk_id"]
    old_episode, new_episode = rows[5]["episode_id"], rows[-1]["episode_id"]
    assert old_episode != new_episode
    rows[5] = dict(rows[5], episode_id=new_episode)  # same text
    write_rows(src, rows)

    cov = _coverage(make_config(src, out))
    assert cov.moved == 1 and cov.current == len(rows) - 1

    report = run(make_config(src, out), RunOptions())
    assert report.counts.embedded == 1
    table = read_vectors(out)
    episodes = dict(zip(table["chunk_id"].to_pylist(), table["episode_id"].to_pylist(), strict=True))
    assert episodes[moved] == new_episode
    assert raw_rows_in_files(out).count(moved) == 1, "the moved chunk has one row, in its new episode"
    assert sorted(dataset_ids(out)) == sorted(r["chunk_id"] for r in rows)
    assert run(make_config(src, out), RunOptions()).counts.embedded == 0


def _coverage(config: Config) -> Coverage:
    parts = open_parts(config)
    try:
        return coverage(config, parts)
    finally:
        parts.close()
