"""How runs end when something else ends them: a holder killed hard, an interrupt, SIGTERM.

Runs here use the gated test executor (no model; every vector the same unit vector).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.files.ledger import SqliteCheckpointStore
from tests.gated_executor import MODEL, GatedExecutor, GatedOptions, register
from tests.helpers import make_config, sample_rows, vectors_by_id, write_rows


@pytest.fixture()
def gated_config(tmp_path: Path):
    register()
    rows = sample_rows(episodes=3)
    src = write_rows(tmp_path / "chunks.parquet", rows, row_group_size=8)
    config = make_config(src, tmp_path / "out", model=MODEL, executor={"kind": "gated"})
    return config, rows, tmp_path / "out"


def test_a_backfill_takes_back_at_its_end_what_it_left_to_a_run_killed_since(gated_config) -> None:
    """Before: episodes left to a run that was killed hard waited a whole night."""
    config, rows, out = gated_config
    episode = rows[-1]["episode_id"]
    ledger = out / "state.sqlite"
    out.mkdir(parents=True, exist_ok=True)
    other = SqliteCheckpointStore(ledger)
    other.register("elsewhere:1:dead", "ingest", "1 episode")
    assert other.claim([episode]) == {}

    def kill_other_after_its_first_refusal(parts) -> None:
        claim = parts.checkpoint.claim

        def claim_then_kill(units):
            held = claim(units)
            if episode in held and other._owner_file is not None:
                other._owner_file.close()  # kill -9: the flock goes, its claims stay behind
                other._owner_file = None
            return held

        parts.checkpoint.claim = claim_then_kill

    report = run(
        config,
        RunOptions(command="backfill"),
        executor=GatedExecutor(GatedOptions(), config.model),
        on_parts=kill_other_after_its_first_refusal,
    )
    assert report.status == "completed", report.error
    assert set(vectors_by_id(out)) == {r["chunk_id"] for r in rows}  # the episode too
    assert report.left_to_other_runs == {}
    assert report.counts.claimed_elsewhere == 0 and report.counts.seen == len(rows)
    assert report.counts.embedded == len(rows)
