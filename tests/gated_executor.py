"""A test-only executor that answers each batch only when the test lets it.

It embeds nothing (every vector is the same unit vector) and needs no model: its
tokenizer counts words. Each batch waits for one byte on ``gate_fd`` (a pipe the test
writes to), so a test can look at the progress after every batch without any timing;
``before_answer`` (in-process tests) runs before each answer, e.g. to move a fake clock.

It is registered as executor kind ``gated`` only by :func:`register` (tests call it; a
CLI subprocess runs ``python -c "from tests.gated_executor import main; main()" ...``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import registry
from pipeline.config import ModelConfig
from pipeline.interfaces.executor import Executor
from pipeline.model.fingerprint import model_fingerprint
from pipeline.records import Batch, BatchResult

KIND = "gated"
# A model section the gated executor accepts: no weights anywhere, 8 dimensions.
MODEL = {"id": "gated-test-model", "dimension": 8, "max_seq_length": 64, "device": "cpu"}


@dataclass(slots=True)
class GatedOptions:
    """``[executor]`` options for ``kind = "gated"``."""

    # Read one byte per batch before answering; -1: answer at once (a signed setting).
    gate_fd: int = field(default=-1, metadata={"signed": True})


class WordTokenizer:
    """Enough of a Hugging Face tokenizer for :class:`~pipeline.model.tokens.TokenCounter`."""

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(range(len(t.split()) + 2)) for t in texts]}


class GatedExecutor(Executor):
    """Answers batch after batch, each once the gate lets it through."""

    Options = GatedOptions

    def __init__(
        self, options: GatedOptions, model: ModelConfig, before_answer: Callable[[Batch], None] | None = None
    ) -> None:
        self.options = options
        self.model_cfg = model
        self.before_answer = before_answer
        self.answered = 0

    @classmethod
    def open(cls, options: GatedOptions, model: ModelConfig) -> GatedExecutor:
        """Nothing to load."""
        return cls(options, model)

    def fingerprint(self) -> str:
        """From the config, as for a real model."""
        return model_fingerprint(self.model_cfg)

    def tokenizer(self) -> WordTokenizer:
        """Words, not model tokens: no model files needed."""
        return WordTokenizer()

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """One unit vector per chunk, once the gate opens for the batch."""
        for batch in batches:
            if self.options.gate_fd >= 0 and not os.read(self.options.gate_fd, 1):
                raise RuntimeError("gate closed: the test stopped feeding batches")
            if self.before_answer is not None:
                self.before_answer(batch)
            vectors = np.zeros((len(batch.chunk_ids), self.model_cfg.dimension), np.float32)
            vectors[:, 0] = 1.0
            self.answered += 1
            yield BatchResult(batch_id=batch.batch_id, chunk_ids=batch.chunk_ids, vectors=vectors)


def register() -> None:
    """Make ``[executor] kind = "gated"`` loadable (tests only)."""
    registry.EXECUTORS[KIND] = f"{__name__}:GatedExecutor"


def main() -> None:
    """The podembed CLI with the gated executor registered."""
    register()
    from jobs.cli import main as cli_main

    cli_main()
