"""Which class implements each kind of source, sink, checkpoint store and executor.

Adding a source means one new module and one line here (opening them: ``parts``).
This module imports nothing of the project but ``errors``: ``config`` resolves each
kind's options through it. Entries are import strings
so that loading a config never imports torch, modal or pymongo it does not use.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.errors import ConfigError

SOURCES: dict[str, str] = {
    "parquet": "pipeline.files.source:ParquetSource",
    "mongo": "pipeline.mongo.source:MongoSource",
}
SINKS: dict[str, str] = {
    "parquet": "pipeline.files.sink:ParquetSink",
    "mongo": "pipeline.mongo.sink:MongoSink",
}
CHECKPOINTS: dict[str, str] = {
    "sqlite": "pipeline.files.ledger:SqliteCheckpointStore",
    "mongo": "pipeline.mongo.ledger:MongoCheckpointStore",
}
EXECUTORS: dict[str, str] = {
    "local": "pipeline.engine.local:LocalExecutor",
    "modal": "pipeline.modal.executor:ModalExecutor",
}

ROLES: dict[str, dict[str, str]] = {
    "source": SOURCES,
    "sink": SINKS,
    "checkpoint": CHECKPOINTS,
    "executor": EXECUTORS,
}


def resolve(role: str, kind: str) -> Any:
    """Import and return the class registered for ``role``/``kind``."""
    table = ROLES[role]
    if kind not in table:
        choices = ", ".join(sorted(table))
        raise ConfigError(f"{role}.kind: unknown kind {kind!r} (choose one of: {choices})")
    module_name, _, attr = table[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)
