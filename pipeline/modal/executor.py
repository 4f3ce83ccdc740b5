"""The Modal executor: batches fan out to up to ten GPU containers with ``.map()``.

The containers run the very same :class:`~pipeline.model.embedder.InstructorEmbedder` as the
local executor (see ``jobs/modal_app.py``); this module is the client side plus the
wire format both sides share:

- one ``.map()`` input per batch (chunk ids and texts, a few hundred KB, well under
  Modal's 2 MiB argument limit), results in any order (``order_outputs=False``) and
  failures in the stream (``return_exceptions=True``);
- results are matched to batches by id. An exception in the stream carries no id, so
  a batch is known to have failed when the stream ends without its result;
- a failed batch is split in halves and retried once; chunks of a half that fails
  again are dead-lettered with the reason. A deployment that fails every batch (no
  weights in the Volume, a crash at start-up) stops the run instead of dead-lettering
  the corpus;
- Modal's input pump drains an iterator as fast as it can and runs it on its own event
  loop, so batches are pulled from the runner by a feeder thread and handed over through
  an async iterator, with at most ``max_containers * inflight_per_container`` batches
  in flight: memory stays flat and the containers never wait on the reader;
- every result carries the container's timings (model load and start-up once per
  container, compute per batch) and the name of its GPU: a result from another device
  than ``executor.gpu`` is refused and its batch sent again (another container serves
  it; refused twice, the run stops), and reports hold real device-seconds, the devices
  that served and the billed estimate (:meth:`ModalExecutor.usage`).

``modal`` is imported lazily: loading a config must not pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.interfaces.executor import Executor
from pipeline.modal import trigger
from pipeline.modal.credentials import require_modal_credentials
from pipeline.modal.fanout import Fanout
from pipeline.modal.gpu import same_gpu_type
from pipeline.modal.options import APP_MODULE, EMBEDDER_CLASS, ModalOptions, roster_name
from pipeline.modal.stream import MapFn
from pipeline.model.fingerprint import model_fingerprint
from pipeline.model.precision import Resolved, for_gpu_name
from pipeline.records import Batch, BatchResult
from pipeline.reporting.cost import Footprint, Usage

log = logging.getLogger(__name__)


class ModalExecutor(Executor):
    """Embeds batches on Modal: the deployed ``Embedder`` class, or an ephemeral app run.

    ``map_fn`` stands in for ``Embedder().embed.map`` (tests, and the app's scheduled
    functions, which hold the class already).
    """

    Options = ModalOptions
    remote = True

    @classmethod
    def planned_precision(cls, options: ModalOptions, model: ModelConfig) -> Resolved:
        """Decided for the configured GPU (each container decides again on the real one)."""
        return for_gpu_name(model.precision, options.gpu)

    @classmethod
    def check_cost(cls, options: ModalOptions, cost: Any) -> None:
        """``[cost].device`` must name the GPU the containers run on: reports and plans price
        ``executor.gpu``'s seconds at ``[cost].hourly_usd``."""
        if not same_gpu_type(options.gpu, cost.device):
            raise ConfigError(
                f"cost.device: {cost.device!r} is not executor.gpu {options.gpu!r}; reports price "
                f"the GPU's seconds at cost.hourly_usd: set [cost] device = {options.gpu!r} and its "
                "hourly price"
            )

    @classmethod
    def footprint(cls, options: ModalOptions) -> Footprint:
        """GPU containers' reservations and idle tails, plus the job container that runs the client."""
        return options.footprint()

    def __init__(
        self,
        options: ModalOptions,
        model: ModelConfig,
        *,
        map_fn: MapFn | None = None,
        job_container: bool = False,
        roster: Any = None,
    ) -> None:
        self.options = options
        self.model_cfg = model
        self.device_label = options.gpu
        self._map_fn = map_fn
        self._fingerprint: str | None = None
        self.containers: set[str] = set()  # Modal task ids that answered (for logs and tests)
        self._spans: dict[str, list[float]] = {}  # container -> [ready-to-last-answer s, compute s]
        # job_container: this process is itself a Modal job container (billed as well).
        self._usage = Usage(footprint=options.footprint(job_container=job_container))
        # Where the GPU containers record themselves when they start (jobs/modal_app.py):
        # containers that never answered are billed from it. None: not read (tests, ephemeral).
        self._roster = roster
        self._since = time.time()
        self._app_run: contextlib.ExitStack | None = None  # a temporary app started by open()

    @classmethod
    def open(cls, options: ModalOptions, model: ModelConfig) -> ModalExecutor:
        """Check what can be checked offline (a Modal token) and fail at once; then obtain the
        map: the deployed app's (looked up on the first batch), or a temporary copy of the app
        (``executor.deployed = false``), started here and stopped by :meth:`close`."""
        require_modal_credentials()
        executor = cls(options, model)
        if not options.deployed:
            executor._start_ephemeral()
        return executor

    def _start_ephemeral(self) -> None:
        # The deployment file defines the app; its containers read the config named by
        # PODEMBED_CONFIG (default configs/production.toml), as a deployment does.
        app_module = importlib.import_module(APP_MODULE)
        stack = contextlib.ExitStack()
        try:
            self._map_fn = stack.enter_context(app_module.ephemeral_map(self.options))
        except BaseException:
            stack.close()
            raise
        self._app_run = stack
        self._roster = app_module.ROSTER

    def fingerprint(self) -> str:
        """From the config; every result's fingerprint is checked against it."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model_cfg)
        return self._fingerprint

    def tokenizer(self) -> Any:
        """None: the runner loads the model's tokenizer alone (no weights) to count tokens."""
        return None

    def close(self) -> None:
        """Stop the temporary app started by :meth:`open` (a deployed app stays)."""
        app_run, self._app_run = self._app_run, None
        if app_run is not None:
            app_run.close()

    @classmethod
    def submit_ingest(cls, config: Any, episode_id: str, limit: int | None) -> tuple[dict[str, str], str]:
        """Start the deployed ``ingest_episode`` and return at once (see :class:`Executor`)."""
        if limit is not None:
            raise ConfigError("--limit: not supported when the ingest runs on Modal")
        app = config.executor.options.app_name
        call_id = trigger.trigger_ingest(config, episode_id)
        message = (
            f"ingest of {episode_id} started on Modal (app {app}); its report: `podembed status` "
            "once it is done"
        )
        return {"episode_id": episode_id, "call_id": call_id, "app": app}, message

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """Fan batches out; yield one result per batch as soon as it is complete."""
        fanout = Fanout(
            self._remote_map(),
            self.options,
            self.fingerprint(),
            self.model_cfg.dimension,
            self.containers,
            self._usage,
            spans=self._spans,
        )
        return fanout.run(batches)

    def usage(self) -> Usage:
        """Every GPU container started for the run (those that never answered too, from the
        roster), start-up, time around batches, failed attempts, devices, footprint."""
        usage = dataclasses.replace(self._usage, devices=dict(self._usage.devices))
        usage.overhead_s = sum(max(0.0, alive - compute) for alive, compute in self._spans.values())
        for _task_id, entry in self._silent_containers():
            usage.containers += 1
            usage.boot_s += float(entry.get("boot_s") or 0.0) + float(entry.get("load_s") or 0.0)
            if entry.get("failed"):
                usage.failed_starts += 1
        return usage

    def _silent_containers(self) -> list[tuple[str, dict[str, Any]]]:
        """Containers that started (or failed to) during this run and answered no batch."""
        if self._roster is None:
            return []
        try:
            entries = list(self._roster.items())
        except Exception as exc:  # the bill is an estimate; never fail a run over it
            log.warning(
                "Modal: could not read the container roster (%s); the bill counts only "
                "containers that answered",
                exc,
            )
            return []
        return [
            (str(task_id), entry)
            for task_id, entry in entries
            if isinstance(entry, dict)
            and str(task_id) not in self.containers
            and float(entry.get("at") or 0.0) >= self._since
        ]

    def _remote_map(self) -> MapFn:
        if self._map_fn is not None:
            return self._map_fn
        if not self.options.deployed:
            raise ConfigError(
                "executor.deployed = false: open the executor with ModalExecutor.open (it starts "
                "a temporary copy of the app), or pass map_fn= to ModalExecutor"
            )
        require_modal_credentials()
        import modal

        env = self.options.environment or None
        cls = modal.Cls.from_name(self.options.app_name, EMBEDDER_CLASS, environment_name=env)
        self._map_fn = cls().embed.map
        if self._roster is None:
            self._roster = modal.Dict.from_name(roster_name(self.options.app_name), environment_name=env)
        return self._map_fn
