"""Search what was embedded: a question in, the nearest transcript passages out.

The question is embedded by the same :class:`~pipeline.model.embedder.InstructorEmbedder`
that embedded the documents, with ``[model].query_instruction`` (INSTRUCTOR pairs a
query instruction with the documents' one). Only vectors whose model fingerprint is the
configured model's are compared: vectors of another model or instruction live in
another space, so a sink that holds none refuses with exit code 2.

The sink finds the nearest vectors (exactly, or with Atlas Vector Search) and applies
the filters it can; the source supplies what the sink does not store: the text for the
snippet, the podcast, the start and end times. Filters a sink cannot apply itself
(``--podcast``/``--since`` on a Parquet sink) are resolved through the source into the
episodes they select.

``search(config, question)`` is the one-call form; :class:`Searcher` keeps the source,
sink and model open across questions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError, ModelError
from pipeline.interfaces.sink import EPISODE, PODCAST, SINCE, SearchOutcome, Sink, VectorHit, VectorQuery
from pipeline.interfaces.source import Source
from pipeline.model.embedder import InstructorEmbedder
from pipeline.model.fingerprint import model_fingerprint
from pipeline.parts import open_sink, open_source

SNIPPET_CHARS = 240


@dataclass(slots=True)
class Hit:
    """One passage found, best first (``rank`` 1); ``score`` is the cosine similarity."""

    rank: int
    score: float
    chunk_id: str
    episode_id: str | None
    podcast_id: str | None
    start_s: float | None
    end_s: float | None
    snippet: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(slots=True)
class SearchStats:
    """How the last search went (for the CLI's summary line and ``--json``)."""

    method: str = ""
    scanned: int = 0
    embed_s: float = 0.0
    search_s: float = 0.0
    fetch_s: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Seconds from question to hits, the model already loaded."""
        return self.embed_s + self.search_s + self.fetch_s


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The text on one line, cut at a word boundary near ``limit`` characters."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0]
    return cut + " …"


def check_fingerprint(counts: dict[str, int], fingerprint: str, where: str) -> list[str]:
    """Refuse when no stored vector has ``fingerprint``; notices for vectors left out."""
    total = sum(counts.values())
    if total == 0:
        raise ConfigError(f"search: {where} holds no vectors yet; run `podembed backfill` first")
    if fingerprint not in counts:
        stored = ", ".join(f"{fp} ({n})" for fp, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        raise ModelError(
            f"search: the vectors in {where} were embedded with another model or instruction "
            f"({stored}), not the configured one ({fingerprint}); questions must be embedded "
            "the same way as the passages. Search with the config that embedded them, or run "
            "`podembed backfill` to re-embed with this one."
        )
    others = total - counts[fingerprint]
    if not others:
        return []
    return [
        f"{others} of {total} stored vectors were embedded by another model or instruction and are "
        "left out of the search; `podembed backfill` re-embeds them"
    ]


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class Searcher:
    """An open source, sink and (lazily loaded) model, ready for questions."""

    def __init__(self, config: Config, embedder: Any = None) -> None:
        self.config = config
        self.fingerprint = model_fingerprint(config.model)
        self._embedder = embedder
        self.source: Source = open_source(config)
        try:
            # Searching changes nothing: the sink must exist and is opened read-only.
            self.sink: Sink = open_sink(config, read_only=True)
        except BaseException:
            self.source.close()
            raise
        try:
            self.notices = check_fingerprint(
                self.sink.fingerprint_counts(), self.fingerprint, self.sink.describe()
            )
        except BaseException:
            self.close()
            raise
        self.stats = SearchStats()

    @property
    def embedder(self) -> Any:
        """The model, loaded on first use (sentence-transformers costs seconds to import)."""
        if self._embedder is None:
            self._embedder = InstructorEmbedder(self.config.model)
        return self._embedder

    def embed_question(self, question: str, instruction: str | None = None) -> np.ndarray:
        """The question's vector, embedded with the query instruction.

        ``instruction`` replaces it (``""``: none), only to measure what it is worth.
        """
        if not question.strip():
            raise ConfigError("search: the question is empty")
        return self.embedder.embed_queries([question], instruction)[0]

    def search(self, question: str, k: int = 10, filters: Selection | None = None) -> list[Hit]:
        """The ``k`` passages nearest to ``question``, best first."""
        start = time.perf_counter()
        vector = self.embed_question(question)
        embed_s = time.perf_counter() - start
        hits = self.search_vector(vector, k, filters)
        self.stats.embed_s = embed_s
        return hits

    def search_vector(self, vector: np.ndarray, k: int = 10, filters: Selection | None = None) -> list[Hit]:
        """The ``k`` passages nearest to an already embedded query vector."""
        if k < 1:
            raise ConfigError("search: k must be at least 1")
        filters = filters or Selection()
        self.stats = SearchStats(notices=list(self.notices))
        start = time.perf_counter()
        query = self._query(vector, k, filters)
        outcome = SearchOutcome(hits=[], method="none") if query is None else self.sink.search(query)
        self.stats.search_s = time.perf_counter() - start
        self.stats.method, self.stats.scanned = outcome.method, outcome.scanned
        self.stats.notices += outcome.notices
        start = time.perf_counter()
        hits = self._hits(outcome.hits)
        self.stats.fetch_s = time.perf_counter() - start
        return hits

    def _query(self, vector: np.ndarray, k: int, filters: Selection) -> VectorQuery | None:
        """The sink's query; ``None`` when the filters select nothing at all."""
        native = self.sink.search_filters(self.config.fields)
        episodes = tuple(filters.episode_ids)
        podcasts = tuple(filters.podcast_ids) if PODCAST in native else ()
        since = filters.since if SINCE in native else None
        resolve_podcasts = bool(filters.podcast_ids) and PODCAST not in native
        resolve_since = filters.since is not None and SINCE not in native
        if resolve_podcasts or resolve_since or (episodes and EPISODE not in native):
            # The sink does not store these fields: the source says which episodes match.
            wanted = Selection(
                episode_ids=episodes,
                podcast_ids=tuple(filters.podcast_ids) if resolve_podcasts else (),
                since=filters.since if resolve_since else None,
            )
            episodes = tuple(sorted(self._episodes(wanted)))
            if not episodes:
                return None
        return VectorQuery(
            vector=np.asarray(vector, dtype=np.float32),
            k=k,
            fingerprint=self.fingerprint,
            fields=self.config.fields,
            episode_ids=episodes,
            podcast_ids=podcasts,
            since=since,
            unit_vectors=self.config.model.normalize,  # part of the fingerprint: true for every vector
        )

    def _episodes(self, selection: Selection) -> set[str]:
        # Streams the selected part of the source once; only its episode ids are kept.
        found: set[str] = set()
        for shard in self.source.plan(selection):
            for record in self.source.read(shard, selection):
                episode = record.fields.get("episode_id")
                if episode is not None:
                    found.add(str(episode))
        return found

    def _records(self, hits: list[VectorHit]) -> dict[str, dict[str, Any]]:
        """The source's fields of the hit chunks, read by episode (the sinks store it)."""
        wanted = {h.chunk_id for h in hits}
        episodes = sorted({h.episode_id for h in hits if h.episode_id})
        if not wanted or not episodes:
            return {}
        selection = Selection(episode_ids=tuple(episodes))
        found: dict[str, dict[str, Any]] = {}
        for shard in self.source.plan(selection):
            for record in self.source.read(shard, selection):
                cid = record.fields.get("chunk_id")
                if cid is not None and str(cid) in wanted:
                    found[str(cid)] = record.fields
        return found

    def _hits(self, found: list[VectorHit]) -> list[Hit]:
        records = self._records(found)
        hits: list[Hit] = []
        for rank, h in enumerate(found, start=1):
            rec = records.get(h.chunk_id, {})
            meta = {**h.metadata, **{k: v for k, v in rec.items() if v is not None}}
            episode = meta.get("episode_id", h.episode_id)
            podcast = meta.get("podcast_id")
            hits.append(
                Hit(
                    rank=rank,
                    score=round(float(h.score), 6),
                    chunk_id=h.chunk_id,
                    episode_id=None if episode is None else str(episode),
                    podcast_id=None if podcast is None else str(podcast),
                    start_s=_float(meta.get("start_s")),
                    end_s=_float(meta.get("end_s")),
                    snippet=snippet(_text(rec.get("text"))) if rec else "(chunk no longer in the source)",
                )
            )
        return hits

    def close(self) -> None:
        """Release the sink and the source (the model stays in the process cache)."""
        try:
            self.sink.close()
        finally:
            self.source.close()


def search(config: Config, question: str, k: int = 10, filters: Selection | None = None) -> list[Hit]:
    """The ``k`` passages of the configured sink nearest to ``question``, best first.

    Example::

        from pipeline.config import load_config
        from pipeline.reporting.search import search
        from pipeline.engine.selection import Selection

        for hit in search(load_config("configs/local.toml"), "how long should sourdough ferment?",
                          k=5, filters=Selection(podcast_ids=("pc-kitchen",))):
            print(hit.rank, round(hit.score, 3), hit.episode_id, hit.start_s, hit.snippet)
    """
    searcher = Searcher(config)
    try:
        return searcher.search(question, k, filters)
    finally:
        searcher.close()
