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
from pipeline.errors import ModelError
from pipeline.model.fingerprint import resolve_model_location


def missing_model_files(cfg: ModelConfig, location: str, what: str, exc: BaseException) -> str:
    """What to do when the model's files are not where they are looked for (one line)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    at = f" at revision {cfg.revision}" if cfg.revision else ""
    if cfg.package or cfg.path:
        return f"model: cannot load the {what} of {location!r}: {first}"
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"model: the {what} of {cfg.id}{at} is not in the Hugging Face cache ({cache}) and the hub "
        f"cannot be reached ({first}). On Modal, fill the weights Volume once: `modal run "
        "jobs/modal_app.py::download_weights`; elsewhere, download the model or set model.path."
    )


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
            location = resolve_model_location(cfg)
            try:
                tokenizer = AutoTokenizer.from_pretrained(location, **revision)
            except (OSError, ValueError) as exc:
                raise ModelError(missing_model_files(cfg, location, "tokenizer", exc)) from None
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
