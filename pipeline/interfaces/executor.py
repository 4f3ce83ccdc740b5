"""The executor interface: a stream of batches in, a stream of results out (any order)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from pipeline.config import ModelConfig
from pipeline.model.embedder import resolve_device
from pipeline.model.precision import Resolved, detect
from pipeline.records import Batch, BatchResult
from pipeline.reporting.cost import Footprint, Usage


class Executor(ABC):
    """Runs the embedder on batches.

    ``embed`` pulls batches lazily from the iterable (so the runner can keep reading
    while results flow) and yields exactly one :class:`BatchResult` per batch, in any
    order. A batch that fails entirely yields a result with ``error`` set rather than
    raising, so one bad batch never stops a run.
    """

    Options: ClassVar[type]
    #: What the device-seconds in reports are seconds of ("cpu", "A10G", ...).
    device_label: str = "cpu"
    #: Whether batches run in containers of their own (billed per container, with cold starts).
    remote: ClassVar[bool] = False

    @classmethod
    def planned_precision(cls, options: Any, model: ModelConfig) -> Resolved:
        """The precision a run would compute in, decided without loading the model (for ``plan``):
        in-process, for this machine's device."""
        return detect(model.precision, resolve_device(model.device))

    @classmethod
    def footprint(cls, options: Any) -> Footprint:
        """What this executor's containers reserve and how long they idle (for bills and plans)."""
        return Footprint()

    @classmethod
    def check_cost(cls, options: Any, cost: Any) -> None:
        """Refuse (``ConfigError``) a ``[cost]`` section that prices another device than this
        executor runs on; called when a config is loaded. Nothing to check by default."""
        return None

    @classmethod
    def submit_ingest(
        cls, config: Any, episode_id: str, limit: int | None
    ) -> tuple[dict[str, str], str] | None:
        """Start an ingest of ``episode_id`` where this executor runs jobs and return at once:
        ``(what to print as JSON, a line for the user)``; ``None`` (the default): the ingest
        runs here, in this process."""
        return None

    @classmethod
    @abstractmethod
    def open(cls, options: Any, model: ModelConfig) -> Executor:
        """Prepare (but do not necessarily load the model yet)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """The model fingerprint vectors from this executor carry."""

    @abstractmethod
    def tokenizer(self) -> Any:
        """The model's tokenizer if this executor holds the model in-process, else ``None``
        (the runner then loads the tokenizer alone, without weights, to count tokens)."""

    @abstractmethod
    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """Embed every batch; yield one result per batch, in any order."""

    def usage(self) -> Usage:
        """What served the batches so far: devices, containers, start-up and failed
        attempts (billed but not in any batch's timings). Read after ``embed``."""
        return Usage()

    def expect(self, chunks: int) -> None:  # noqa: B027 - optional hook
        """The run's planned size, before its first batch (an executor that can compile
        decides by it: ``pipeline.model.compile_cache.decide``)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release devices and remote handles."""
