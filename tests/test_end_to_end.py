"""End to end through the real CLI on the real MiniLM over the whole sample corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.files.sink import read_vectors
from pipeline.model.fingerprint import model_fingerprint
from tests.helpers import ROOT, SAMPLE, make_config, raw_rows_in_files, vectors_by_id


def _config_file(tmp_path: Path) -> Path:
    text = (ROOT / "configs" / "local.toml").read_text()
    text = text.replace('"data/sample_chunks.parquet"', json.dumps(str(SAMPLE)))
    text = text.replace('path = "data/out"', f"path = {json.dumps(str(tmp_path / 'out'))}")
    text = text.replace('dir = "data/out/runs"', f"dir = {json.dumps(str(tmp_path / 'out' / 'runs'))}")
    path = tmp_path / "local.toml"
    path.write_text(text)
    return path


def _podembed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def test_backfill_sample_corpus_then_rerun_skips_everything(tmp_path: Path) -> None:
    config_path = _config_file(tmp_path)
    out = tmp_path / "out"

    first = _podembed("backfill", "--config", str(config_path), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    source_ids = pq.read_table(SAMPLE, columns=["chunk_id"])["chunk_id"].to_pylist()
    assert report["status"] == "completed"
    assert report["counts"]["embedded"] == len(source_ids) == report["counts"]["seen"]
    assert report["counts"]["dead_lettered"] == 0
    assert 1.0 <= report["padding_ratio"] < 1.25, "length-sorted batches should barely pad"
    assert report["tokens_per_s"] > 0 and report["device_s"] > 0
    assert (out / "runs" / f"{report['run_id']}.json").exists()
    assert "embedded" in first.stderr  # the summary goes to stderr

    vectors = vectors_by_id(out)
    assert sorted(vectors) == sorted(source_ids)
    assert sorted(raw_rows_in_files(out)) == sorted(source_ids), "no stray rows on disk"
    matrix = np.stack(list(vectors.values()))
    assert matrix.shape == (len(source_ids), 384)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)

    table = read_vectors(out)
    assert table.schema.field("embedding").type.list_size == 384
    config = make_config(SAMPLE, out)
    assert set(table["model_fingerprint"].to_pylist()) == {model_fingerprint(config.model)}
    assert set(table["instruction"].to_pylist()) == {"Represent the podcast transcript for retrieval:"}

    # Retrieval sanity on the real model: a sourdough question finds the kitchen podcast.
    from pipeline.model.embedder import InstructorEmbedder

    q_cfg = make_config(SAMPLE, out).model
    q_cfg.instruction = q_cfg.query_instruction
    query = InstructorEmbedder(q_cfg).embed(["how long should a sourdough starter ferment?"]).vectors[0]
    ids = list(vectors)
    best = ids[int(np.argmax(matrix @ query))]
    assert best.startswith("pc-kitchen"), best

    second = _podembed("backfill", "--config", str(config_path), "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["counts"]["embedded"] == 0
    # Nothing changed: the night reads no chunk (the source files are unchanged since the first run).
    assert again["counts"]["skipped"] + again["counts"]["unchanged"] == len(source_ids)

    status = _podembed("status", "--config", str(config_path), "--json")
    assert status.returncode == 0, status.stderr
    cov = json.loads(status.stdout)
    assert cov["current"] == len(source_ids) and cov["missing"] == 0 and cov["stale"] == 0
    assert [r["run_id"] for r in cov["last_runs"][:2]] == [again["run_id"], report["run_id"]]
