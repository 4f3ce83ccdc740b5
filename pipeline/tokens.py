"""Token counting for sorting, batching, truncation counts and cost estimates.

Counts are of what the model really sees: the instruction and the stripped text
concatenated (INSTRUCTOR adds no separator), with special tokens, capped at
``max_seq_length``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from pipeline.config import ModelConfig
from pipeline.fingerprint import resolve_model_location


@dataclass(slots=True)
class TokenCount:
    """Tokens the model will process for one text, and whether it was cut."""

    tokens: int
    truncated: bool


class TokenCounter:
    """Counts tokens with the model's own tokenizer (loaded alone: no weights)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Any | None = None) -> None:
        self.cfg = cfg
        if tokenizer is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from transformers import AutoTokenizer

            revision = {"revision": cfg.revision} if cfg.revision else {}
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_location(cfg), **revision)
        else:
            # A private copy: a fast tokenizer keeps its truncation setting in shared state that
            # every call rewrites, and the run's reader thread counts (no truncation) while the
            # model encodes (truncated at max_seq_length) on the main thread. Sharing one
            # object let an encode run untruncated (766-token rows at max_seq_length 32).
            tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer = tokenizer

    def count(self, texts: list[str]) -> list[TokenCount]:
        """Token counts for stripped ``texts`` prefixed with the instruction."""
        if not texts:
            return []
        prefix = self.cfg.instruction
        encoded = self.tokenizer(
            [prefix + t for t in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        limit = self.cfg.max_seq_length
        return [TokenCount(min(len(ids), limit), len(ids) > limit) for ids in encoded]
