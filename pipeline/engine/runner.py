"""A run, start to end: plan shards, then read, embed and write in overlapping stages.

Three threads, joined by bounded queues so memory stays flat:

- the *reader* prepares shards (read, validate, decide, count tokens, batch);
- the *main thread* feeds batches to the executor and routes results back to shards;
- the *writer* writes each finished shard's vectors and dead letters, then marks the
  shard done in the checkpoint store.

The executor never waits on disk, and a shard is marked done only after its vectors
are durably written. A crash at any point leaves either a done shard or one that the
next run redoes; sink writes are keyed upserts, so redoing never duplicates.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pipeline.config import Config
from pipeline.engine import incremental
from pipeline.engine.claims import Claims
from pipeline.engine.in_flight import InFlight
from pipeline.engine.liveness import new_owner
from pipeline.engine.options import RunOptions
from pipeline.engine.selection import Selection
from pipeline.engine.shard_work import Prepared, Preparer, Rule
from pipeline.errors import PodembedError, TargetError
from pipeline.interfaces.checkpoint import Holder
from pipeline.interfaces.executor import Executor
from pipeline.interfaces.sink import WriteOutcome
from pipeline.interfaces.source import unowned_ids
from pipeline.memory import limit_malloc_arenas
from pipeline.model.tokens import TokenCounter
from pipeline.parts import Parts, open_executor, open_parts
from pipeline.records import Batch, BatchResult
from pipeline.reporting.cost import Prices
from pipeline.reporting.progress import Progress
from pipeline.reporting.report import RunReport, check_report_dir, write_report

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Sortable, unique: ``20261128T193200Z-1a2b3c``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def plan_key(opts: RunOptions, fingerprint: str, source_version: str, sink: str) -> str:
    """Runs with the same key are the same work: an unfinished one is resumed."""
    doc = "|".join([opts.command, opts.selection.key(), str(opts.force), fingerprint, source_version, sink])
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


class Runner:
    """Runs one command against opened parts with an executor."""

    def __init__(
        self,
        config: Config,
        parts: Parts,
        executor: Executor,
        opts: RunOptions,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.parts = parts
        self.executor = executor
        self.opts = opts
        self.progress = progress or Progress()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._claims: Claims | None = None
        self._taken_back: set[str] = set()  # episodes left to another run, then taken back
        self._first_out: float | None = None  # when the first batch went out: the rate's clock

    # ------------------------------------------------------------------ stages
    def _reader(self, preparer: Preparer, shards: list[Any], out: queue.Queue[Any]) -> None:
        try:
            deferred: list[tuple[Any, dict[str, Holder]]] = []
            for shard in shards:
                if self._stop.is_set():
                    break
                prepared = preparer.prepare(shard)
                if prepared.left_to_others:
                    deferred.append((shard, prepared.left_to_others))
                self._put(out, prepared)
            for prepared in self._take_back(preparer, deferred):
                self._put(out, prepared)
        except BaseException as exc:  # surfaced by the main thread
            self._fail(exc)
        finally:
            self._put(out, None, force=True)

    def _take_back(
        self, preparer: Preparer, deferred: list[tuple[Any, dict[str, Holder]]]
    ) -> Iterator[Prepared]:
        """At a backfill's end, the episodes it left to runs that are gone since, prepared again.

        A run killed hard (SIGKILL, out of memory, a timeout) holds its claims until its
        lease expires; a backfill started meanwhile leaves its episodes to it. Once the
        reader is done, those whose holder is no longer live are claimed and embedded now
        rather than a night later. Their shards stay not-done (a resume reads them again).
        """
        if not deferred or self.opts.command != "backfill" or self.opts.limit is not None:
            return
        if not self.opts.selection.is_everything:
            return
        live = {r.owner for r in self.parts.checkpoint.live_runs()}
        for shard, left in deferred:
            gone = sorted(e for e, holder in left.items() if holder.owner not in live)
            if not gone or self._stop.is_set():
                continue
            log.info("taking back %d episode(s) whose run is gone: %s", len(gone), ", ".join(gone))
            narrowed = copy.copy(preparer)
            narrowed.selection = Selection(episode_ids=tuple(gone))
            again = narrowed.prepare(shard)
            again.complete = False
            # Its chunks were counted as seen and left to another run the first time.
            again.counts.claimed_elsewhere -= again.counts.seen
            again.counts.seen = 0
            with self._lock:
                self._taken_back.update(again.claimed)
            yield again

    def _put(self, q: queue.Queue[Any], item: Any, force: bool = False) -> None:
        while True:
            if self._stop.is_set() and not force:
                return
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                if force and self._stop.is_set():
                    # Nobody will drain it; drop the oldest to make room for the sentinel.
                    with contextlib.suppress(queue.Empty):
                        q.get_nowait()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop.set()

    def _writer(self, inbox: queue.Queue[Any], report: RunReport) -> None:
        sink, checkpoint = self.parts.sink, self.parts.checkpoint
        while True:
            item = inbox.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so producers never block
            flight: InFlight = item
            p = flight.prepared
            try:
                outcome = sink.write_all(flight.records) if flight.records else WriteOutcome(0)
                written = outcome.written
                dead = p.dead_letters + flight.dead + outcome.refused
                if dead:
                    checkpoint.add_dead_letters(report.run_id, dead)
                refused = {d.chunk_id for d in outcome.refused}
                fixed = [
                    r.chunk_id
                    for r in flight.records
                    if r.chunk_id in p.previously_failed and r.chunk_id not in refused
                ]
                if fixed:
                    checkpoint.clear_dead_letters(fixed)
                counts = p.counts
                counts.embedded = written
                counts.stale_dropped = len(flight.records) - written - len(refused)
                counts.dead_lettered = len(dead)
                finished = p.complete and flight.remaining == 0
                if finished:
                    checkpoint.mark_shard_done(
                        report.run_id,
                        p.shard.shard_id,
                        {"embedded": counts.embedded, "dead_lettered": counts.dead_lettered},
                    )
                if self._claims is not None and p.claimed:
                    self._claims.release(p.claimed)  # written: the next claimer sees it current
                checkpoint.heartbeat()
                with self._lock:
                    report.counts.add(counts)
                    report.shards_done += int(finished)
                    report.left_to_other_runs.update({e: h.describe() for e, h in p.left_to_others.items()})
                self.progress.shard_written(finished)
            except BaseException as exc:
                self._fail(exc)

    def run(self) -> RunReport:
        """Execute the run; always returns a report (status says how it ended)."""
        cfg, opts, parts = self.config, self.opts, self.parts
        started = time.perf_counter()
        fingerprint = self.executor.fingerprint()
        run_id = new_run_id()
        report = RunReport(
            run_id=run_id,
            command=opts.command,
            status="running",
            selection=opts.selection.describe(),
            source=parts.source.describe(),
            sink=parts.sink.describe(),
            executor=cfg.executor.kind,
            model_fingerprint=fingerprint,
            instruction=cfg.model.instruction,
            query_instruction=cfg.model.query_instruction,
            started_at=datetime.now(UTC).isoformat(),
            device=self.executor.device_label,
            hourly_usd=cfg.cost.hourly_usd,
        )
        check_report_dir(cfg.report.dir)  # before hours of work, not after
        checkpoint = parts.checkpoint
        # Runs on one target overlap: each claims the episodes it works on (see claims.py).
        checkpoint.register(new_owner(), opts.command, report.selection)
        try:
            parts.sink.recover()  # what a killed run left half-done (under the sink's own write lock)
            self._execute(report, fingerprint, started)
        except BaseException:
            self._unregister(report)
            raise
        self._unregister(report)
        if isinstance(self._error, PodembedError) and self._error.exit_code == 2:
            # A config, source or model problem: the report is written, but the caller
            # should see the actionable error (and the CLI exit with 2).
            raise self._error
        return report

    def _execute(self, report: RunReport, fingerprint: str, started: float) -> None:
        """Plan the sweep, embed what it finds, then account for the run (whatever happened)."""
        sweep, change, todo = self._begin(report, fingerprint)
        status = "failed"
        # A backfill leaves episodes other runs hold to them; ingest and reindex wait.
        self._claims = Claims(self.parts.checkpoint, wait=self.opts.command != "backfill", stop=self._stop)
        try:
            preparer = self._preparer(fingerprint, report.run_id)
            status = self._pipeline(preparer, todo, report, fingerprint, report.run_id)
            if status == "completed" and self.opts.selection.is_everything:
                self._removed(report, sweep, change)
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException as exc:
            self._fail(exc)
            status = "failed"
        finally:
            self._finish(report, status, started, sweep)

    def _begin(
        self, report: RunReport, fingerprint: str
    ) -> tuple[incremental.Sweep, incremental.ChangePlan, list[Any]]:
        """Choose the sweep, resume the run that compared with the same snapshot, record the start;
        returns the sweep, its change plan and the shards still to do."""
        cfg, opts, parts = self.config, self.opts, self.parts
        checkpoint = parts.checkpoint
        sweep = incremental.choose(
            cfg,
            parts.source,
            checkpoint,
            fingerprint,
            command=opts.command,
            whole_source=opts.selection.is_everything,
            full=opts.full,
            force=opts.force,
            retry_failed=opts.retry_failed,
            limit=opts.limit,
        )
        change = incremental.plan(parts.source, sweep, opts.selection)
        shards = change.shards
        report.sweep = sweep.describe()
        report.counts.unchanged = change.unchanged
        # An incremental run resumes only the run that compared with the same snapshot.
        version = parts.source.version() + (f"|since:{sweep.since.run_id}" if sweep.since else "|full")
        key = plan_key(opts, fingerprint, version, parts.sink.describe())
        resumed = checkpoint.find_resumable(key)
        done: set[str] = set()
        if resumed is not None:
            report.run_id, report.resumed = resumed, True
            done = checkpoint.done_shards(resumed)
        checkpoint.start_run(
            report.run_id,
            key,
            opts.command,
            {
                "selection": report.selection,
                "fingerprint": fingerprint,
                "force": opts.force,
                "shards": len(shards),
                "started_at": report.started_at,
            },
        )
        report.shards_total = len(shards)
        report.shards_skipped_done = sum(s.shard_id in done for s in shards)
        todo = [s for s in shards if s.shard_id not in done]
        self.progress.planned(len(todo), sum(s.estimated_chunks for s in todo), opts.limit)
        planned_chunks = sum(s.estimated_chunks for s in todo)
        self.executor.expect(min(planned_chunks, opts.limit) if opts.limit else planned_chunks)
        return sweep, change, todo

    def _preparer(self, fingerprint: str, run_id: str) -> Preparer:
        cfg, opts = self.config, self.opts

        def counter() -> TokenCounter:
            # Deferred: a run with nothing to embed never loads the tokenizer or model.
            self.progress.loading("the tokenizer" if self.executor.remote else "the model")
            try:
                return TokenCounter(cfg.model, self.executor.tokenizer())
            finally:
                self.progress.loaded()

        rule = Rule(fingerprint, run_id, force=opts.force, retry_failed=opts.retry_failed)
        return Preparer(
            cfg,
            self.parts,
            opts.selection,
            rule,
            counter=counter,
            limit=opts.limit,
            claims=self._claims,
            on_decided=self.progress.shard_decided,
        )

    def _finish(self, report: RunReport, status: str, started: float, sweep: incremental.Sweep) -> None:
        """Write the report and close the run in the ledger; a failure here never hides the run's."""
        cfg, checkpoint = self.config, self.parts.checkpoint
        report.status = status
        if self._error is not None:
            report.error = _describe(self._error)
        report.wall_s = time.perf_counter() - started
        report.claim_wait_s = self._claims.waited_s if self._claims else 0.0
        report.finished_at = datetime.now(UTC).isoformat()
        report.finalize(self.executor.usage(), Prices.of(cfg.cost))
        try:
            write_report(report, cfg.report.dir)
        except TargetError as exc:
            # Disk full: the ledger must not say completed when the run could not finish.
            report.status = "failed"
            report.error = f"{report.error}; {exc}" if report.error else str(exc)
        try:
            checkpoint.finish_run(report.run_id, report.status, report.to_dict())
            if self._saw_everything(report):
                # Only now: a crashed or partial run must never mark the source as seen.
                pending = report.counts.removed - report.counts.pruned
                incremental.record(checkpoint, sweep, report.run_id, pending)
        except PodembedError as exc:
            # A full disk under the ledger: the run's own error stays the first one told.
            # The run is left unfinished in the ledger, so the next one resumes it.
            self._also_failed(report, exc)
        finally:
            self.progress.close(report.status)

    def _unregister(self, report: RunReport) -> None:
        """Leave the live runs; a failure here (a full disk) never hides the run's own error."""
        try:
            self.parts.checkpoint.unregister()
        except PodembedError as exc:
            self._also_failed(report, exc)

    def _also_failed(self, report: RunReport, exc: PodembedError) -> None:
        log.error("%s", exc)
        report.status = "failed"
        if str(exc) not in (report.error or ""):
            report.error = f"{report.error}; then: {exc}" if report.error else str(exc)

    def _pipeline(
        self, preparer: Preparer, shards: list[Any], report: RunReport, fingerprint: str, run_id: str
    ) -> str:
        """Reader thread -> executor -> writer thread; returns how the embedding ended."""
        prepared_q: queue.Queue[Any] = queue.Queue(maxsize=self.config.batching.queue_depth)
        # One finished shard at most waits for the writer: embedded but unwritten work is what
        # a kill loses, so it stays bounded (the shard being written, one waiting, one embedding).
        write_q: queue.Queue[Any] = queue.Queue(maxsize=1)
        reader = threading.Thread(
            target=self._reader, args=(preparer, shards, prepared_q), name="podembed-reader", daemon=True
        )
        writer = threading.Thread(
            target=self._writer, args=(write_q, report), name="podembed-writer", daemon=True
        )
        in_flight: dict[str, InFlight] = {}
        self._first_out = None
        reader.start()
        writer.start()
        status = "completed"
        embed_start = time.perf_counter()
        try:
            for result in self.executor.embed(self._dispatch(prepared_q, write_q, in_flight, report)):
                self._route(result, in_flight, write_q, report, fingerprint, run_id)
                if self._stop.is_set():
                    break
        except KeyboardInterrupt:
            status = "interrupted"
            self._flush_partial(in_flight, write_q)
        finally:
            report.embed_s = time.perf_counter() - (self._first_out or embed_start)
            if status != "interrupted":
                # Partial shards (stopped by an error) still write what they computed.
                self._flush_partial(in_flight, write_q)
            self._stop.set()
            # Blocking: the writer drains until it sees None (even after an error), and
            # dropping a queued shard to make room would lose written work.
            write_q.put(None)
            writer.join()
            reader.join(timeout=5)
            for episode in self._taken_back:
                report.left_to_other_runs.pop(episode, None)
        if self._error is not None:
            raise self._error
        return status

    def _dispatch(
        self,
        prepared_q: queue.Queue[Any],
        write_q: queue.Queue[Any],
        in_flight: dict[str, InFlight],
        report: RunReport,
    ) -> Iterator[Batch]:
        """The executor's input: each prepared shard's batches, remembered as in flight."""
        while not self._stop.is_set():
            try:
                item = prepared_q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            prepared: Prepared = item
            with self._lock:
                report.tokens += prepared.tokens
                report.padded_tokens += prepared.padded_tokens
                report.batches += len(prepared.batches)
            flight = InFlight(prepared, remaining=len(prepared.batches))
            self.progress.shard_prepared(prepared)
            if not prepared.batches:
                self._put(write_q, flight)
                continue
            for batch in prepared.batches:
                in_flight[batch.batch_id] = flight
            for batch in prepared.batches:
                if self._stop.is_set():
                    return
                if self._first_out is None:
                    self._first_out = time.perf_counter()  # the rate's clock: model loaded, work flowing
                self.progress.dispatched(batch)
                yield batch

    def _route(
        self,
        result: BatchResult,
        in_flight: dict[str, InFlight],
        write_q: queue.Queue[Any],
        report: RunReport,
        fingerprint: str,
        run_id: str,
    ) -> None:
        """One result into its shard; the shard to the writer when complete (or due a write)."""
        flight = in_flight.pop(result.batch_id, None)
        if flight is None:
            log.warning("result for unknown or repeated batch %s ignored", result.batch_id)
            return
        flight.absorb(result, fingerprint, run_id, self.config.model.instruction)
        self.progress.settled(result)
        _account(report, result)
        flight.remaining -= 1
        if flight.remaining == 0:
            self._put(write_q, flight)
        elif not self._stop.is_set() and flight.due(self.config.batching.write_every_s):
            # Bounds what a kill loses, in time. A blocking put: the writer drains
            # until it sees the end, so the part is never dropped.
            write_q.put(flight.split())

    def _flush_partial(self, in_flight: dict[str, InFlight], write_q: queue.Queue[Any]) -> None:
        """Hand what is already embedded to the writer; those shards stay not-done."""
        seen: set[int] = set()
        for flight in in_flight.values():
            if id(flight) in seen:
                continue
            seen.add(id(flight))
            flight.prepared.complete = False
            settled = len(flight.records) + len(flight.dead) + flight.split_off
            flight.prepared.counts.stopped += len(flight.prepared.chunks) - settled
            try:
                write_q.put(flight, timeout=60)
            except queue.Full:
                log.error("writer is stuck; %d embedded vectors dropped", len(flight.records))
        in_flight.clear()

    @staticmethod
    def _saw_everything(report: RunReport) -> bool:
        """Completed with every planned shard done: nothing deferred or left to other runs."""
        c = report.counts
        return (
            report.status == "completed"
            and report.shards_done + report.shards_skipped_done >= report.shards_total
            and c.deferred == 0
            and c.claimed_elsewhere == 0
        )

    def _removed(self, report: RunReport, sweep: incremental.Sweep, change: incremental.ChangePlan) -> None:
        """Chunks stored in the sink but gone from the source: reported, deleted with --prune.

        Ids only, in one linear pass. An incremental run checks only when a chunk can have
        left (a Parquet file changed or vanished) or ``--prune`` asks; otherwise the count
        the last completed run found still holds (a cursor cannot see MongoDB deletions:
        the full sweep finds them).
        """
        if not (sweep.full or self.opts.prune or change.may_have_removed) and sweep.since is not None:
            report.counts.removed = sweep.since.removed
            return
        sink = self.parts.sink
        removed = list(unowned_ids(self.parts.source, sink.iter_states()))
        report.counts.removed = len(removed)
        if self.opts.prune and removed:
            report.counts.pruned = sink.delete(removed)


def _account(report: RunReport, result: BatchResult) -> None:
    """A result's timings and precision into the run's report."""
    report.batches_answered += 1
    report.device_s += result.compute_s + result.load_s
    report.model_load_s += result.load_s
    report.fp32_retries += result.fp32_retries
    if result.precision:
        report.precision, report.precision_reason = result.precision, result.precision_reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PodembedError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run(
    config: Config,
    opts: RunOptions,
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
    on_parts: Callable[[Parts], None] | None = None,
) -> RunReport:
    """Open everything the config names, run ``opts``, close everything; returns the report."""
    limit_malloc_arenas()  # before the sink's and tokenizer's thread pools start (pipeline/memory.py)
    parts = open_parts(config)
    try:
        if on_parts is not None:
            on_parts(parts)
        own_executor = executor is None
        ex = executor or open_executor(config)
        try:
            return Runner(config, parts, ex, opts, progress).run()
        finally:
            if own_executor:
                ex.close()
    finally:
        parts.close()
