"""A NaN is never written: reduced precision falls back to fp32, still-bad chunks are dead-lettered.

The models here are real T5 encoders (tiny, random weights) whose Dense layer is scaled
so that fp16 overflows while fp32 does not, or so that even fp32 produces NaN or zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.files.ledger import SqliteCheckpointOptions, SqliteCheckpointStore
from pipeline.files.sink import ParquetSink
from pipeline.model.embedder import InstructorEmbedder
from tests.helpers import make_config, sample_rows, vectors_by_id, write_rows
from tests.synthetic_model import TINY


def _scaled_model(tiny_model_dir: str, dest: Path, scale: float) -> str:
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:
        from sentence_transformers.models import Dense

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    dense = next(m for m in model if isinstance(m, Dense))
    with torch.no_grad():
        dense.linear.weight.mul_(scale)
    model.save(str(dest))
    return str(dest)


def _cfg(path: str, precision: str) -> ModelConfig:
    return ModelConfig(
        id=f"tiny-{Path(path).name}",
        path=path,
        dimension=TINY.out_dim,
        max_seq_length=128,
        precision=precision,
        device="cpu",
    )


def test_fp16_overflow_is_rerun_in_fp32(tiny_model_dir: str, tmp_path: Path) -> None:
    path = _scaled_model(tiny_model_dir, tmp_path / "overflow", 1e6)
    texts = ["a short line about bread", "another line, a bit longer, about telescopes and stars"]
    fp32 = InstructorEmbedder(_cfg(path, "fp32")).embed(texts)
    assert np.isfinite(fp32.vectors).all() and not fp32.failed
    half = InstructorEmbedder(_cfg(path, "fp16"))
    raw = half._encode(half.model, texts)
    assert not np.isfinite(raw).all(), "the test model must overflow in fp16"
    out = half.embed(texts)
    assert out.fp32_retries == 1 and not out.failed
    assert np.abs(out.vectors - fp32.vectors).max() <= 1e-6


@pytest.mark.parametrize(("scale", "reason"), [(float("inf"), "non-finite"), (0.0, "zero vector")])
def test_chunks_still_bad_in_fp32_are_dead_lettered_never_written(
    tiny_model_dir: str, tmp_path: Path, scale: float, reason: str
) -> None:
    path = _scaled_model(tiny_model_dir, tmp_path / "broken", scale)
    rows = sample_rows(n=6)
    src = write_rows(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    model = {
        "id": "tiny-broken",
        "path": path,
        "dimension": TINY.out_dim,
        "max_seq_length": 128,
        "precision": "bf16",
        "device": "cpu",
    }
    config = make_config(src, out, model=model)
    report = run(config, RunOptions())
    assert report.status == "completed"
    assert report.counts.embedded == 0 and report.counts.dead_lettered == len(rows)
    assert report.fp32_retries >= 1
    assert vectors_by_id(out) == {}
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), ParquetSink.home(config.sink.options))
    try:
        letters = store.list_dead_letters()
    finally:
        store.close()
    assert len(letters) == len(rows)
    assert all(d.field == "embedding" and reason in d.reason for d in letters)
    # Unchanged text: not retried next run (counted; a full sweep reads it), unless asked to.
    again = run(config, RunOptions(full=True))
    assert again.counts.skipped_failed == len(rows) and again.counts.embedded == 0
    retried = run(config, RunOptions(retry_failed=True))
    assert retried.counts.dead_lettered == len(rows)
