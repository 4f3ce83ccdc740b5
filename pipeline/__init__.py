"""podembed: offline batch embedding of podcast transcript chunks with INSTRUCTOR models.

The public face of the library::

    import pipeline

    config = pipeline.load_config("podembed.toml")
    print(pipeline.plan(config).summary())
    report = pipeline.run(config, pipeline.RunOptions(limit=1000))
    print(pipeline.status(config).summary())
    hits = pipeline.search(config, "interviews about sleep", k=5)

Layout (see ARCHITECTURE.md): the four interfaces a technology implements
(``interfaces/``), the plain data between stages (``records``), the configuration
(``config``, ``toml_schema``, ``registry``), the model stack (``model/``), the run
(``engine/``), and what the pipeline tells you (``reporting/``). Each technology lives in
its own package (``files``, ``mongo``, ``modal``) and is registered with one line in
``registry``. The core knows no technology.

The names below are loaded on first use: ``import pipeline`` stays instant (the CLI's
``--help`` must not pay for numpy, pyarrow or torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "run": "pipeline.engine.runner",
    "RunOptions": "pipeline.engine.options",
    "Selection": "pipeline.engine.selection",
    "plan": "pipeline.api",
    "status": "pipeline.api",
    "search": "pipeline.reporting.search",
    "load_config": "pipeline.config",
    "parse_config": "pipeline.config",
    "Config": "pipeline.config",
    "RunReport": "pipeline.reporting.report",
    "Plan": "pipeline.reporting.planning",
    "Coverage": "pipeline.reporting.status",
    "Hit": "pipeline.reporting.search",
    "Chunk": "pipeline.records",
    "RawRecord": "pipeline.records",
    "DeadLetter": "pipeline.records",
    "Batch": "pipeline.records",
    "BatchResult": "pipeline.records",
    "VectorRecord": "pipeline.records",
    "PodembedError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "SourceError": "pipeline.errors",
    "TargetError": "pipeline.errors",
    "ModelError": "pipeline.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
