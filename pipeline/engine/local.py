"""The in-process executor: the model runs in this process (CPU, or a local GPU)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.config import ModelConfig
from pipeline.engine.split_retry import embed_with_split_retry
from pipeline.interfaces.executor import Executor
from pipeline.model.compile_cache import decide
from pipeline.model.embedder import EmbedOutput, InstructorEmbedder, Launched, Prepared
from pipeline.model.fingerprint import model_fingerprint
from pipeline.model.overlap import overlapped
from pipeline.records import Batch, BatchResult
from pipeline.reporting.cost import Usage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LocalOptions:
    """``[executor]`` options for ``kind = "local"``."""

    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (all cores)


class LocalExecutor(Executor):
    """Embeds batches one after another in the calling thread."""

    Options = LocalOptions

    def __init__(self, options: LocalOptions, model: ModelConfig) -> None:
        self.options = options
        self.model_cfg = model
        self._embedder: InstructorEmbedder | None = None
        self._pending_load_s = 0.0
        self._served = 0
        self._planned_chunks: int | None = None
        self.device_label = "cpu" if model.device in ("cpu", "auto") else model.device

    @classmethod
    def open(cls, options: LocalOptions, model: ModelConfig) -> LocalExecutor:
        """No work until the first batch (or the tokenizer) is needed."""
        return cls(options, model)

    @property
    def embedder(self) -> InstructorEmbedder:
        """The loaded model (loaded once per process, see ``model_cache``)."""
        if self._embedder is None:
            if self.options.threads > 0:
                import torch

                torch.set_num_threads(self.options.threads)
            cfg = self.model_cfg
            compile = decide(cfg.compile, self._planned_chunks, cfg.compile_min_chunks)
            if compile != cfg.compile:
                log.info(
                    "model.compile: off for this run (%s chunks planned, fewer than "
                    "model.compile_min_chunks = %d)",
                    self._planned_chunks,
                    cfg.compile_min_chunks,
                )
                cfg = replace(cfg, compile=False)
            self._embedder = InstructorEmbedder(cfg)
            self._pending_load_s = self._embedder.load_s
            self.device_label = self._embedder.device
        return self._embedder

    def expect(self, chunks: int) -> None:
        """Compile only for a run big enough to repay it (before the model loads)."""
        self._planned_chunks = chunks

    def fingerprint(self) -> str:
        """Computed from the config alone; equal to the loaded embedder's."""
        return model_fingerprint(self.model_cfg)

    def tokenizer(self) -> Any:
        """The model's own tokenizer (loads the model: it is needed right after anyway)."""
        return self.embedder.tokenizer

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """Embed each batch in order; failures become results, never exceptions.

        The next batch is tokenized (and copied to the GPU) on a worker thread while this
        one runs, and its forward pass is queued before this one's vectors are read back
        (``pipeline.model.overlap``). A batch whose overlapped steps fail runs again on the
        synchronous path, with its split retry.
        """
        items = iter(batches)
        first = next(items, None)
        if first is None:
            return  # nothing to embed: the model is not even loaded
        embedder = self.embedder  # loaded here, on the caller's thread, before any overlap

        def launch(batch: Batch, prepared: Prepared) -> Launched:
            return embedder.launch(prepared)

        def finish(batch: Batch, launched: Launched) -> BatchResult:
            return self._result(batch, embedder.finish(launched))

        def fallback(batch: Batch) -> BatchResult:
            return embed_with_split_retry(batch, self._embed_once, self.model_cfg.dimension)

        def prepare(batch: Batch) -> Prepared:
            return embedder.prepare(batch.texts)

        # On a GPU, launch only queues work: read batch n back after queueing batch n+1.
        queued = embedder.device.startswith("cuda")
        chained = itertools.chain([first], items)
        for result in overlapped(chained, prepare, launch, finish, fallback, defer_finish=queued):
            result.load_s, self._pending_load_s = self._pending_load_s, 0.0
            self._served += 1
            yield result
        embedder.save_compiled()

    def usage(self) -> Usage:
        """This process answered every batch, on its own device."""
        return Usage(devices={self.device_label: self._served} if self._served else {}, containers=0)

    def _embed_once(self, batch: Batch) -> BatchResult:
        embedder = self.embedder
        try:
            out = embedder.embed(batch.texts)
        except Exception as exc:  # an OOM or a tokenizer crash must not stop the run
            return BatchResult(
                batch_id=batch.batch_id,
                chunk_ids=batch.chunk_ids,
                vectors=np.zeros((len(batch.chunk_ids), self.model_cfg.dimension), np.float32),
                error=f"embedding failed: {type(exc).__name__}: {exc}",
            )
        return self._result(batch, out)

    def _result(self, batch: Batch, out: EmbedOutput) -> BatchResult:
        embedder = self.embedder
        return BatchResult(
            batch_id=batch.batch_id,
            chunk_ids=batch.chunk_ids,
            vectors=out.vectors,
            failed={batch.chunk_ids[i]: reason for i, reason in out.failed.items()},
            compute_s=out.compute_s,
            fp32_retries=out.fp32_retries,
            precision=embedder.precision.label,
            precision_reason=embedder.precision.describe(),
        )
