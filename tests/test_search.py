"""`podembed search` and `podembed index`: real MiniLM, real Parquet files, real SecantusDB.

The corpus is a part of the sample (``data/make_sample.py``): the first
``CHUNKS_PER_EPISODE`` chunks of two episodes of each of the five podcasts, plus a
history episode about bread in Egypt that competes with the sourdough question (132
chunks: the whole sample would take 30-40 s to embed here). It is embedded once for the
module, through the CLI's backfill.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.config import FieldMap, load_config
from pipeline.engine.selection import Selection
from pipeline.files import search as files_search
from pipeline.files.sink import ParquetSink, ParquetSinkOptions, read_vectors
from pipeline.interfaces.sink import VectorQuery
from pipeline.records import VectorRecord
from pipeline.reporting.search import Searcher, search
from tests.helpers import MINILM, ROOT, SAMPLE, Question, retrieval_check, sample_rows
from tests.mongo_fixtures import load_chunks, mongo, mongo_raw, mongo_server, to_toml  # noqa: F401

EPISODES = [
    "pc-kitchen-ep06",  # Keeping a Sourdough Starter Alive
    "pc-kitchen-ep04",  # Cast Iron Without Fear
    "pc-astro-ep05",  # Finding Exoplanets by Their Shadows
    "pc-astro-ep06",  # The Solar Cycle and Chasing Auroras
    "pc-biz-ep01",  # Cash Flow Is Oxygen
    "pc-biz-ep05",  # Pricing Without Apologizing
    "pc-history-ep05",  # Roads and Aqueducts of Rome
    "pc-history-ep03",  # Merchants of the Silk Road
    "pc-history-ep06",  # Bread and Grain in Ancient Egypt (a distractor for bread questions)
    "pc-run-ep01",  # Zone 2 and the Aerobic Base
    "pc-run-ep04",  # Shin Splints and Plantar Fasciitis
]

CHUNKS_PER_EPISODE = 12
QUESTIONS = [
    Question(**q) for q in json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
]


def parquet_raw(source: Path, out: Path, **model: Any) -> dict[str, Any]:
    """A Parquet -> Parquet config as a dict (MiniLM with the shipped instructions)."""
    return {
        "source": {"kind": "parquet", "path": str(source)},
        "sink": {"kind": "parquet", "path": str(out)},
        "model": {**MINILM, **model},
        "batching": {"window_chunks": 512, "token_budget": 16384, "max_batch_size": 64},
        "executor": {"kind": "local"},
        "cost": {"device": "cpu", "hourly_usd": 0.0},
        "report": {"dir": str(out / "runs")},
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(to_toml(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sub-corpus, embedded once (CLI backfill), and its source rows by chunk id."""
    root = tmp_path_factory.mktemp("search")
    rows = [r for r in sample_rows() if r["episode_id"] in EPISODES and r["chunk_index"] < CHUNKS_PER_EPISODE]
    source = root / "chunks.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(SAMPLE)), source, row_group_size=64)
    toml = write_config(root / "local.toml", parquet_raw(source, root / "out"))
    result = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    assert result.exit_code == 0, result.output
    return {
        "root": root,
        "toml": toml,
        "out": root / "out",
        "source": source,
        "rows": {r["chunk_id"]: r for r in rows},
    }


def run_search(toml: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["search", "--config", str(toml), *args])


def json_hits(toml: Path, *args: str) -> dict[str, Any]:
    result = run_search(toml, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the CLI


def test_search_prints_ranked_passages_with_timestamps(corpus: dict[str, Any]) -> None:
    result = run_search(corpus["toml"], "how long should sourdough ferment")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    heads = [ln for ln in lines if re.match(r"^\s*\d+\. ", ln)]
    assert len(heads) == 10  # --k defaults to 10
    first = re.match(
        r"^ 1\. (0\.\d{3})  (\S+)  episode (\S+)  podcast (\S+)  (\d\d):(\d\d)–(\d\d):(\d\d)$", heads[0]
    )
    assert first, heads[0]
    chunk = corpus["rows"][first.group(2)]
    assert first.group(3) == "pc-kitchen-ep06" and first.group(4) == "pc-kitchen"
    # mm:ss of the source's start and end times, and the snippet is the chunk's text.
    assert int(first.group(5)) * 60 + int(first.group(6)) == round(chunk["start_s"])
    assert int(first.group(7)) * 60 + int(first.group(8)) == round(chunk["end_s"])
    snippet = lines[lines.index(heads[0]) + 1].strip().removesuffix(" …")
    assert " ".join(chunk["text"].split()).startswith(snippet)
    scores = [float(h.split()[1]) for h in heads]
    assert scores == sorted(scores, reverse=True)
    n = len(corpus["rows"])
    assert re.search(rf"10 hits in [0-9.]+ s \(exact, {n} vectors scanned", result.stderr)


def test_search_json_matches_source(corpus: dict[str, Any]) -> None:
    doc = json_hits(corpus["toml"], "when is the best chance to see the northern lights", "--k", "3")
    assert doc["method"] == "exact" and len(doc["hits"]) == 3
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3]
    for h in doc["hits"]:
        row = corpus["rows"][h["chunk_id"]]
        assert (h["episode_id"], h["podcast_id"]) == (row["episode_id"], row["podcast_id"])
        assert (h["start_s"], h["end_s"]) == (row["start_s"], row["end_s"])
        assert " ".join(row["text"].split()).startswith(h["snippet"].removesuffix(" …"))
    assert doc["hits"][0]["podcast_id"] == "pc-astro"


def test_filters(corpus: dict[str, Any]) -> None:
    toml, rows = corpus["toml"], corpus["rows"]
    question = "how long should sourdough ferment"
    by_podcast = json_hits(toml, question, "--podcast", "pc-run", "--k", "5")["hits"]
    assert len(by_podcast) == 5 and {h["podcast_id"] for h in by_podcast} == {"pc-run"}
    two = json_hits(toml, question, "--episode", "pc-biz-ep01", "--episode", "pc-astro-ep06", "--k", "60")
    assert {h["episode_id"] for h in two["hits"]} == {"pc-biz-ep01", "pc-astro-ep06"}
    assert two["scanned"] == sum(
        1 for r in rows.values() if r["episode_id"] in {"pc-biz-ep01", "pc-astro-ep06"}
    )
    since = datetime(2026, 1, 1, tzinfo=UTC)
    recent = json_hits(toml, question, "--since", "2026-01-01", "--k", "400")["hits"]
    expected = {cid for cid, r in rows.items() if r["published_at"] >= since}
    assert {h["chunk_id"] for h in recent} == expected and expected
    both = json_hits(toml, question, "--since", "2026-01-01", "--podcast", "pc-history", "--k", "5")["hits"]
    assert both and all(rows[h["chunk_id"]]["published_at"] >= since for h in both)
    assert {h["podcast_id"] for h in both} == {"pc-history"}
    # A filter that matches nothing is told (exit 2) before the model loads, not "0 hits".
    none = run_search(toml, question, "--podcast", "no-such-podcast")
    assert none.exit_code == 2
    assert "--podcast no-such-podcast: no chunk in the source has this id" in none.stderr


def test_index_on_a_small_local_sink_builds_only_the_exact_matrix(corpus: dict[str, Any]) -> None:
    before = json_hits(corpus["toml"], "how long should sourdough ferment", "--k", "5")
    result = CliRunner().invoke(cli, ["index", "--config", str(corpus["toml"])])
    assert result.exit_code == 0 and "exact search is as fast as an index" in result.stderr
    assert result.stdout == ""
    after = json_hits(corpus["toml"], "how long should sourdough ferment", "--k", "5")
    assert before["method"] == "exact" and after["method"] == "exact (matrix)"
    assert [h["chunk_id"] for h in after["hits"]] == [h["chunk_id"] for h in before["hits"]]
    scores = [h["score"] for h in before["hits"]]
    assert [h["score"] for h in after["hits"]] == pytest.approx(scores, abs=1e-5)
    shutil.rmtree(corpus["out"] / "search")  # the module's other tests search the table itself


def test_index_on_real_minilm_vectors_agrees_with_exact(
    corpus: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faiss index over the sample's MiniLM vectors: recall@10 of the sample questions."""
    from pipeline.files import ann

    monkeypatch.setattr(ann, "MIN_ROWS", 50)  # 132 vectors: index them anyway
    monkeypatch.setattr(ann, "NPROBE", 3)  # 3 of 11 lists: the probe has to be right
    result = CliRunner().invoke(cli, ["index", "--config", str(corpus["toml"])])
    assert result.exit_code == 0 and "IVF11,SQ8" in result.output, result.output
    table = read_vectors(corpus["out"])
    matrix = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    ids = table["chunk_id"].to_pylist()
    searcher = Searcher(load_config(corpus["toml"]))
    try:
        recalls = []
        for question in QUESTIONS:
            q = searcher.embed_question(question.question)
            hits = searcher.search_vector(q, k=10)
            assert searcher.stats.method.startswith("ann (faiss IVF11,SQ8")
            scores = matrix @ q
            exact = {ids[i] for i in np.argsort(-scores)[:10]}
            recalls.append(len(exact & {h.chunk_id for h in hits}) / 10)
    finally:
        searcher.close()
        shutil.rmtree(corpus["out"] / "search")  # the module's other tests search the table itself
    assert np.mean(recalls) >= 0.95


# --------------------------------------------------------------------------- refusals


def test_other_fingerprint_is_refused(corpus: dict[str, Any], tmp_path: Path) -> None:
    # Another document instruction: the stored vectors are not this config's.
    raw = parquet_raw(corpus["source"], corpus["out"], instruction="Represent the recipe for retrieval:")
    result = run_search(write_config(tmp_path / "other.toml", raw), "sourdough")
    assert result.exit_code == 2
    assert "embedded with another model or instruction" in result.stderr
    assert "all-MiniLM-L6-v2/" in result.stderr and "Traceback" not in result.output


def test_empty_sink_is_refused(corpus: dict[str, Any], tmp_path: Path) -> None:
    raw = parquet_raw(corpus["source"], tmp_path / "empty")
    result = run_search(write_config(tmp_path / "empty.toml", raw), "sourdough")
    assert result.exit_code == 2 and "empty does not exist" in result.stderr  # a typo'd path is named
    assert not (tmp_path / "empty").exists()
    (tmp_path / "empty").mkdir()  # the folder exists but holds no vectors yet
    result = run_search(write_config(tmp_path / "empty.toml", raw), "sourdough")
    assert result.exit_code == 2 and "run `podembed backfill` first" in result.stderr


def test_vectors_of_another_model_and_unowned_rows_are_never_returned(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    """Plant the query's own vector under another fingerprint and as an unowned row: neither may surface."""
    out = tmp_path / "out"
    shutil.copytree(corpus["out"], out)
    config = load_config(write_config(tmp_path / "c.toml", parquet_raw(corpus["source"], out)))
    searcher = Searcher(config)
    try:
        query = searcher.embed_question("how long should sourdough ferment")
        honest = searcher.search_vector(query, k=3)
        sink = ParquetSink(ParquetSinkOptions(str(out)), 384)
        victims = [cid for cid in sorted(corpus["rows"]) if cid.startswith("pc-run-ep04")][:4]
        sink.write(
            [
                VectorRecord(
                    cid, "pc-run-ep04", query, "x" * 64, "other-model/0000", "other", datetime.now(UTC), "r"
                )
                for cid in victims
            ]
        )
        sink.close()
    finally:
        searcher.close()
    searcher = Searcher(config)
    try:
        n = len(corpus["rows"])
        assert searcher.notices == [
            f"4 of {n} stored vectors were embedded by another model or instruction and are left out of "
            "the search; `podembed backfill` re-embeds them"
        ]
        again = searcher.search_vector(query, k=3)
    finally:
        searcher.close()
    assert [h.chunk_id for h in again] == [h.chunk_id for h in honest]
    assert [h.score for h in again] == pytest.approx([h.score for h in honest], abs=1e-6)
    assert searcher.stats.scanned == len(corpus["rows"]) - 4


def test_blocked_exact_search_equals_brute_force(
    corpus: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(corpus["toml"])
    table = read_vectors(corpus["out"])
    matrix = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    ids = table["chunk_id"].to_pylist()
    rng = np.random.default_rng(3)
    monkeypatch.setattr(files_search, "BLOCK_ROWS", 7)  # many blocks, files split across them
    searcher = Searcher(config)
    try:
        for _ in range(3):
            q = rng.standard_normal(384).astype(np.float32)
            q /= np.linalg.norm(q)
            scores = matrix @ q
            best = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:12]
            hits = searcher.search_vector(q, k=12)
            assert [h.chunk_id for h in hits] == [ids[i] for i in best]
            assert [h.score for h in hits] == pytest.approx([float(scores[i]) for i in best], abs=1e-5)
    finally:
        searcher.close()


# --------------------------------------------------------------------------- retrieval quality


def test_retrieval_right_podcast_in_top5(corpus: dict[str, Any], record_property: Any) -> None:
    """≥ 9 of 10 questions find their podcast in the top 5; the instruction's worth is measured."""
    config = load_config(corpus["toml"])
    instruction = config.model.instruction
    searcher = Searcher(config)
    try:
        figures = {
            "query_instruction": retrieval_check(searcher, QUESTIONS),
            "no_instruction": retrieval_check(searcher, QUESTIONS, instruction=""),
            "document_instruction": retrieval_check(searcher, QUESTIONS, instruction=instruction),
        }
        # The library function is the same search, in one call.
        one = search(config, QUESTIONS[0].question, k=5, filters=Selection(podcast_ids=("pc-kitchen",)))
    finally:
        searcher.close()
    print("\nretrieval (top 5):", json.dumps(figures))
    record_property("retrieval", figures)
    assert figures["query_instruction"]["podcast_in_top"] >= 9
    assert config.model.instruction == instruction  # the config is never mutated to embed a query
    assert one and one[0].episode_id == "pc-kitchen-ep06" and {h.podcast_id for h in one} == {"pc-kitchen"}


# --------------------------------------------------------------------------- MongoDB (SecantusDB)

MONGO_EPISODES = ("pc-biz-ep05", "pc-history-ep03")


def test_mongo_search_scans_exactly_and_index_prints_definition(
    mongo: Any,  # noqa: F811
    corpus: dict[str, Any],
    tmp_path: Path,
) -> None:
    rows = [r for r in corpus["rows"].values() if r["episode_id"] in MONGO_EPISODES]
    load_chunks(mongo, rows)
    toml = write_config(tmp_path / "mongo.toml", mongo_raw(mongo, MINILM, tmp_path))
    assert CliRunner().invoke(cli, ["backfill", "--config", str(toml)]).exit_code == 0
    question = "should I raise the prices of my products"
    result = run_search(toml, question, "--json", "--k", "5")
    assert result.exit_code == 0, result.output
    n = len(rows)
    assert re.search(rf"this server has no Atlas Vector Search: scanning {n} vectors exactly", result.stderr)
    doc = json.loads(result.stdout)
    assert doc["method"] == "exact" and doc["scanned"] == n == 2 * CHUNKS_PER_EPISODE
    # The same chunks and scores as the Parquet sink, which embedded the same texts.
    parquet = json_hits(
        corpus["toml"], question, "--k", "5", *[a for e in MONGO_EPISODES for a in ("--episode", e)]
    )
    assert [h["chunk_id"] for h in doc["hits"]] == [h["chunk_id"] for h in parquet["hits"]]
    assert [h["score"] for h in doc["hits"]] == pytest.approx([h["score"] for h in parquet["hits"]], abs=1e-4)
    assert [(h["start_s"], h["podcast_id"]) for h in doc["hits"]] == [
        (h["start_s"], h["podcast_id"]) for h in parquet["hits"]
    ]
    # Filters are applied by the server on the chunk documents (in place).
    hist = json_hits(toml, question, "--podcast", "pc-history", "--since", "2025-08-01", "--k", "50")
    assert hist["scanned"] == CHUNKS_PER_EPISODE and {h["episode_id"] for h in hist["hits"]} == {
        "pc-history-ep03"
    }
    # `podembed index`: no Atlas Search here, so the definition is printed (exit 0).
    index = CliRunner().invoke(cli, ["index", "--config", str(toml)])
    assert index.exit_code == 0, index.output
    assert "no Atlas Vector Search" in index.stderr and "createSearchIndex" in index.stderr
    definition = json.loads(index.stdout)
    assert definition["name"] == "podembed_embedding" and definition["type"] == "vectorSearch"
    fields = definition["definition"]["fields"]
    assert fields[0] == {"type": "vector", "path": "embedding", "numDimensions": 384, "similarity": "cosine"}
    assert [f["path"] for f in fields[1:]] == [
        "embedding_meta.model_fingerprint",
        "episode_id",
        "podcast_id",
        "published_at",
    ]


def test_unnormalized_vectors_are_ranked_by_cosine(tmp_path: Path) -> None:
    """With ``model.normalize = false`` stored vectors vary in length: the score is still the cosine."""
    sink = ParquetSink(ParquetSinkOptions(str(tmp_path / "out")), 2)
    now = datetime.now(UTC)
    vectors = {"long-off-axis": [10.0, 10.0], "short-on-axis": [0.5, 0.0], "opposite": [-3.0, 0.0]}
    sink.write(
        [
            VectorRecord(cid, "ep", np.asarray(v, np.float32), "0" * 64, "m/1", "i", now, "r")
            for cid, v in vectors.items()
        ]
    )
    query = VectorQuery(np.asarray([2.0, 0.0], np.float32), 3, "m/1", FieldMap())
    try:
        hits = sink.search(query).hits
    finally:
        sink.close()
    assert [h.chunk_id for h in hits] == ["short-on-axis", "long-off-axis", "opposite"]
    assert [h.score for h in hits] == pytest.approx([1.0, 2**-0.5, -1.0], abs=1e-6)
