"""Opening what a config names: source, sink and checkpoint store together, and the executor."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Config
from pipeline.interfaces.checkpoint import CheckpointStore
from pipeline.interfaces.executor import Executor
from pipeline.interfaces.sink import Sink
from pipeline.interfaces.source import Source
from pipeline.registry import resolve


@dataclass(slots=True)
class Parts:
    """The storage side of a run (the executor is opened separately: plan and status need none)."""

    source: Source
    sink: Sink
    checkpoint: CheckpointStore

    def close(self) -> None:
        """Close everything, ignoring nothing: a failing close is a real error."""
        self.checkpoint.close()
        self.sink.close()
        self.source.close()


def open_source(config: Config) -> Source:
    """The configured source, opened and checked."""
    cls = resolve("source", config.source.kind)
    return cls.open(config.source.options, config.fields, config.batching.window_chunks)


def open_sink(config: Config, read_only: bool = False, missing_ok: bool = False) -> Sink:
    """The configured sink; ``read_only`` opens it without creating or changing anything.

    A read-only local sink that does not exist is an error naming the path, unless
    ``missing_ok`` (``plan`` before the first run): then it reads as empty.
    """
    sink_cls = resolve("sink", config.sink.kind)
    if read_only:
        extra = {"missing_ok": True} if missing_ok else {}
        return sink_cls.open(config.sink.options, config.model.dimension, read_only=True, **extra)
    return sink_cls.open(config.sink.options, config.model.dimension)


def open_parts(config: Config, read_only: bool = False, missing_ok: bool = False) -> Parts:
    """Open source, sink and checkpoint store; closes what was opened if a later one fails.

    ``read_only`` (status, plan): the sink and the ledger must exist and are opened without
    creating or changing anything (SQLite ``mode=ro``, no lock files, no tables).
    """
    source = open_source(config)
    try:
        sink_cls = resolve("sink", config.sink.kind)
        sink = open_sink(config, read_only, missing_ok)
        try:
            cp_cls = resolve("checkpoint", config.checkpoint.kind)
            home = sink_cls.home(config.sink.options)
            if read_only:
                extra = {"missing_ok": True} if missing_ok else {}
                checkpoint = cp_cls.open(config.checkpoint.options, home, read_only=True, **extra)
            else:
                checkpoint = cp_cls.open(config.checkpoint.options, home)
        except BaseException:
            sink.close()
            raise
    except BaseException:
        source.close()
        raise
    return Parts(source=source, sink=sink, checkpoint=checkpoint)


def open_executor(config: Config) -> Executor:
    """The configured executor (the model is loaded lazily, on the first batch)."""
    cls = resolve("executor", config.executor.kind)
    return cls.open(config.executor.options, config.model)
