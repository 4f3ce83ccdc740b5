"""Opt-in stress test: random SIGKILLs of Parquet runs, then a resume, many times.

Run it with ``python -m pytest -m stress -s`` (the default run leaves it out: it takes
minutes). Each trial starts ``podembed backfill --prune`` in a subprocess on the sample
corpus (841 chunks) with the tiny random T5 model, kills it with SIGKILL at a random
point (after a random number of embedded chunks, or in the write/prune phase at the
end), resumes it in-process, and checks:

- any Parquet reader (``pyarrow.dataset`` over ``vectors/``) sees exactly one row per
  chunk, the same rows :func:`read_vectors` returns, and the same vectors as an
  uninterrupted run;
- no temp file is left;
- the work lost to the kill (chunks the killed run embedded but did not keep) is at most
  one window, whatever the row-group layout.

Trials alternate between two layouts (the whole file in ONE row group, and the committed
file's 7 row groups) and two scenarios (a fresh output; an output from an earlier run
whose source then lost chunks, moved chunks to other episodes and changed texts, so the
killed run writes, moves and prunes). ``PODEMBED_STRESS_TRIALS`` and
``PODEMBED_STRESS_SEED`` change the number of trials and the seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.files.sink import read_vectors
from tests.gated_local import KIND, POLL_S, GatedRun
from tests.helpers import (
    config_dict,
    dataset_ids,
    make_config,
    sample_rows,
    temp_files,
    tiny_model,
    vectors_by_id,
    write_rows,
    write_toml,
)

pytestmark = pytest.mark.stress

TRIALS = int(os.environ.get("PODEMBED_STRESS_TRIALS", "20"))
SEED = int(os.environ.get("PODEMBED_STRESS_SEED", "20261128"))
BATCHING = {"window_chunks": 64, "token_budget": 4096, "max_batch_size": 32}


def _changed(rows: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The source after an edit: 10% of chunks gone, 5 moved to another episode, 5 texts changed."""
    rows = [dict(r) for r in rows]
    rng.shuffle(rows)
    kept = rows[len(rows) // 10 :]
    episodes = sorted({r["episode_id"] for r in kept})
    for r in kept[:5]:
        r["episode_id"] = next(e for e in episodes if e != r["episode_id"])
    for r in kept[5:10]:
        r["text"] = r["text"] + " (corrected in a later edit)"
    return sorted(kept, key=lambda r: (r["episode_id"], r["chunk_index"]))


def _write(path: Path, rows: list[dict[str, Any]], one_group: bool) -> Path:
    return write_rows(path, rows, row_group_size=len(rows) if one_group else 121)


def test_random_sigkill_then_resume_parquet(tmp_path: Path, tiny_model_dir: str) -> None:
    rng = random.Random(SEED)
    model = tiny_model(tiny_model_dir)
    rows = sample_rows()
    edited = _changed(rows, random.Random(SEED + 1))

    # Uninterrupted references, one per source version.
    references: dict[str, dict[str, np.ndarray]] = {}
    for name, version in (("full", rows), ("edited", edited)):
        src = _write(tmp_path / f"ref-{name}.parquet", version, one_group=False)
        run(make_config(src, tmp_path / f"ref-{name}", model=model, batching=BATCHING), RunOptions())
        references[name] = vectors_by_id(tmp_path / f"ref-{name}")
    # An output of the full corpus, the starting point of the "edited" scenario.
    base_src = _write(tmp_path / "base.parquet", rows, one_group=False)
    base = tmp_path / "base-out"
    run(make_config(base_src, base, model=model, batching=BATCHING), RunOptions())

    figures: list[dict[str, Any]] = []
    for trial in range(TRIALS):
        one_group = trial % 2 == 0
        scenario = "edited" if (trial // 2) % 2 else "fresh"
        version = edited if scenario == "edited" else rows
        work = tmp_path / f"trial-{trial}"
        work.mkdir()
        src = _write(work / "chunks.parquet", version, one_group)
        out = work / "out"
        if scenario == "edited":
            shutil.copytree(base, out)
            shutil.rmtree(out / "runs")
        before = len(read_vectors(out)) if scenario == "edited" else 0
        to_embed = len(version) if scenario == "fresh" else 10  # 5 changed texts, 5 moved
        gate = work / "gate"
        raw = config_dict(src, out, model, BATCHING, executor={"kind": KIND, "gate": str(gate)})
        config = write_toml(work / "c.toml", raw)

        late = rng.random() < 0.25  # in the write/prune phase, after the last batch
        target = to_embed if late else rng.randrange(0, to_embed)
        proc = GatedRun(config, gate, "--prune")
        proc.open()  # never blocks: the gate only logs what was embedded
        while proc.embedded() < target and proc.proc.poll() is None:
            time.sleep(POLL_S)
        time.sleep(rng.uniform(0, 0.3 if late else 0.05))
        killed = proc.proc.poll() is None
        embedded_before_kill = proc.embedded()
        if killed:
            proc.proc.send_signal(signal.SIGKILL)
        code, _, stderr = proc.finish()
        assert not killed or code == -signal.SIGKILL, stderr
        kept_after_kill = len(read_vectors(out)) if (out / "vectors.lance").exists() else 0

        resumed = run(make_config(src, out, model=model, batching=BATCHING), RunOptions(prune=True))
        assert resumed.status == "completed", resumed.error
        expected = references[scenario if scenario == "edited" else "full"]
        vectors = vectors_by_id(out)
        assert sorted(vectors) == sorted(expected), f"trial {trial}: wrong chunks"
        for cid, vec in vectors.items():
            assert float(np.abs(vec - expected[cid]).max()) <= 1e-5, (trial, cid)
        seen = dataset_ids(out)
        assert len(seen) == len(set(seen)) == len(expected), f"trial {trial}: a reader sees stale rows"
        assert sorted(seen) == sorted(read_vectors(out)["chunk_id"].to_pylist())
        assert not temp_files(out), f"trial {trial}: temp files left: {temp_files(out)}"
        table = read_vectors(out, columns=["episode_id"])
        homes = dict(zip(table["chunk_id"].to_pylist(), table["episode_id"].to_pylist(), strict=True))
        assert all(homes[r["chunk_id"]] == r["episode_id"] for r in version), f"trial {trial}: not re-homed"

        row = {
            "trial": trial,
            "layout": "1 row group" if one_group else "7 row groups",
            "scenario": scenario,
            "kill": ("late" if late else f"after {target} chunks") if killed else "finished first",
            "embedded_before_kill": embedded_before_kill,
            "resume_embedded": resumed.counts.embedded,
        }
        if scenario == "fresh":
            # Chunks the killed run embedded that the resume had to embed again.
            row["lost"] = embedded_before_kill - kept_after_kill
            assert resumed.counts.embedded == len(version) - kept_after_kill
            assert row["lost"] <= BATCHING["window_chunks"], row
        else:
            row["vectors_before"] = before
        figures.append(row)

    print("\nstress figures:\n" + "\n".join(json.dumps(f) for f in figures))
    fresh = [f for f in figures if "lost" in f]
    killed_runs = [f for f in figures if f["kill"] != "finished first"]
    print(
        f"{len(killed_runs)}/{len(figures)} runs killed; lost per kill (fresh outputs): "
        f"max {max((f['lost'] for f in fresh), default=0)}, "
        f"mean {np.mean([f['lost'] for f in fresh]) if fresh else 0:.1f} chunks "
        f"(window {BATCHING['window_chunks']})"
    )
    report = os.environ.get("PODEMBED_STRESS_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    assert len(killed_runs) >= TRIALS // 2, "most trials ended before their kill: nothing was tested"
