"""Opening the configured source, sink, checkpoint store and executor."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import registry
from pipeline.checkpoint.base import CheckpointStore
from pipeline.config import Config
from pipeline.executors.base import Executor
from pipeline.sinks.base import Sink
from pipeline.sources.base import Source


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
    cls = registry.resolve("source", config.source.kind)
    return cls.open(config.source.options, config.fields, config.batching.window_chunks)


def open_parts(config: Config) -> Parts:
    """Open source, sink and checkpoint store; closes what was opened if a later one fails."""
    source = open_source(config)
    try:
        sink_cls = registry.resolve("sink", config.sink.kind)
        sink = sink_cls.open(config.sink.options, config.model.dimension)
        try:
            cp_cls = registry.resolve("checkpoint", config.checkpoint.kind)
            checkpoint = cp_cls.open(config.checkpoint.options, config.sink.options)
        except BaseException:
            sink.close()
            raise
    except BaseException:
        source.close()
        raise
    return Parts(source=source, sink=sink, checkpoint=checkpoint)


def open_executor(config: Config) -> Executor:
    """The configured executor (the model is loaded lazily, on the first batch)."""
    cls = registry.resolve("executor", config.executor.kind)
    return cls.open(config.executor.options, config.model)
