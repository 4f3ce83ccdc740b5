"""Progress of a run: what is embedded so far, how fast, and when it will end.

The runner reports events to a :class:`Progress`: the plan, each shard decided (which of
its chunks need the model) and taken up, the model loading, each batch handed to the
executor and each result back, each shard written. :class:`ProgressTracker` turns them
into a :class:`Snapshot`: chunks this run embeds (``total``), chunks back from the
executor (``done``), rates from the measured time since the first batch went out, an
ETA, and the chunks beside the bar (skipped, dead-lettered, deferred), which never count
in the rate.

Two views, chosen by the caller: :class:`BarProgress` (a bar on a terminal) and
:class:`LogProgress` (one INFO line every ``[report] progress_every_s`` seconds and at
each shard written, for cron, CI and ``modal app logs``).

``total`` is never a guess from row counts: until the first shard is decided it is
unknown (shown as ``?``, with "reading shard 1/N"); once every shard is decided it is
exact. In between (runs of several shards) it is the chunks to embed in the shards
decided so far plus the same share of the rows still unread, shown as ``~N``. A single
shard (an ``ingest``, the sample corpus) is exact before the model starts loading.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.engine.shard_work import Prepared
    from pipeline.records import Batch, BatchResult

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Progress:
    """Progress events of a run; this base class ignores them (the library stays silent)."""

    def planned(self, shards: int, estimated_chunks: int, limit: int | None) -> None:
        """The run will read ``shards`` shards of about ``estimated_chunks`` rows."""

    def shard_decided(self, prepared: Prepared) -> None:
        """The reader knows which of a shard's chunks need the model (tokens not counted yet)."""

    def loading(self, what: str) -> None:
        """The reader started loading ``what`` ("the model", "the tokenizer")."""

    def loaded(self) -> None:
        """What :meth:`loading` announced is loaded."""

    def shard_prepared(self, prepared: Prepared) -> None:
        """The main loop took up a prepared shard (its batches go out next)."""

    def dispatched(self, batch: Batch) -> None:
        """``batch`` was handed to the executor."""

    def settled(self, result: BatchResult) -> None:
        """The executor answered for one batch (vectors, or model failures)."""

    def shard_written(self, finished: bool) -> None:
        """A shard's vectors are written (``finished``: and the shard is marked done)."""

    def close(self, status: str) -> None:
        """The run is over (``status`` as in the run report)."""


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Progress at one moment."""

    command: str
    total: int  # chunks this run embeds (a projection until ``exact``; 0 until ``known``)
    exact: bool
    done: int  # chunks the executor answered for: embedded or dead-lettered by the model
    embedded: int
    tokens: int  # real tokens of the answered batches
    embed_s: float | None  # since the first batch went out; None before that
    measured_s: float | None  # from the first batch out to the last result back: the rates' basis
    elapsed_s: float  # since the plan
    skipped: int  # already current, or failed before with unchanged text
    dead_lettered: int  # invalid records and model failures
    deferred: int  # left for a later run by --limit
    shards_done: int  # written and marked done
    shards_total: int
    status: str = "running"
    known: bool = True  # False until the first shard is decided: ``total`` means nothing yet
    shards_read: int = 0  # decided
    loading: str = ""  # what is being loaded ("the model"), while it loads
    loading_s: float = 0.0  # for how long

    @property
    def percent(self) -> float:
        """Share of ``total`` answered, 0-100."""
        return 100.0 * self.done / self.total if self.total else (100.0 if self.status != "running" else 0.0)

    @property
    def chunks_per_s(self) -> float | None:
        """Embedded chunks per second from the first batch out to the last result back
        (the report's basis); steady between results."""
        return self.embedded / self.measured_s if self.measured_s and self.done else None

    @property
    def tokens_per_s(self) -> float | None:
        """Real tokens per second, same basis."""
        return self.tokens / self.measured_s if self.measured_s and self.done else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate measured so far, counting down between results;
        None until a batch is back."""
        if not self.measured_s or not self.done or self.embed_s is None:
            return None
        left = max(self.total - self.done, 0) * self.measured_s / self.done
        return max(left - (self.embed_s - self.measured_s), 0.0)


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h03m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _clock(seconds: float | None) -> str:
    """``0:42``, ``12:05``, ``2:03:09`` (tqdm's style); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return f"? {unit}"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _total(snap: Snapshot) -> str:
    if not snap.known:
        return "?"
    return str(snap.total) if snap.exact else f"~{snap.total}"


def _waiting(snap: Snapshot) -> str:
    """What a running run with nothing back yet is doing."""
    if snap.loading:
        return f"loading {snap.loading}"
    if snap.exact and snap.total == 0:
        return "nothing to embed"
    if not snap.known:
        return f"reading shard {min(snap.shards_read + 1, max(snap.shards_total, 1))}/{snap.shards_total}"
    return "waiting for the first batch" if snap.embed_s is None else "waiting for the first result"


def format_line(snap: Snapshot) -> str:
    """One log line: embedded/total, percent, rates, ETA, dead-lettered, skipped, deferred."""
    head = f"{snap.command}: {snap.done}/{_total(snap)} chunks ({snap.percent:.0f}%)"
    running = snap.status == "running"
    if not snap.done and running:
        speed = f"{_waiting(snap)} ({duration(snap.elapsed_s)} since start)"
    elif not snap.done:
        speed = "nothing embedded"
    else:
        when = f"ETA {duration(snap.eta_s)}" if running else f"in {duration(snap.embed_s)}"
        speed = f"{_rate(snap.chunks_per_s, 'chunks/s')}, {_rate(snap.tokens_per_s, 'tokens/s')}, {when}"
    return (
        f"{head}, {speed}; {snap.dead_lettered} dead-lettered, {snap.skipped} skipped, "
        f"{snap.deferred} deferred; shards {snap.shards_done}/{snap.shards_total} done; "
        f"{duration(snap.elapsed_s)} elapsed"
    )


def format_bar_right(snap: Snapshot) -> str:
    """What a bar shows right of itself: ``48/200 [0:07<0:23, 6.5 chunks/s, 1204 tok/s] 641 deferred``."""
    running = snap.status == "running"
    if not snap.done and running:
        timing = f"[{_clock(snap.elapsed_s)}, {_waiting(snap)}]"
    elif not snap.done:
        timing = "[nothing embedded]"
    else:
        eta = f"<{_clock(snap.eta_s)}" if running else ""
        timing = (
            f"[{_clock(snap.embed_s)}{eta}, "
            f"{_rate(snap.chunks_per_s, 'chunks/s')}, {_rate(snap.tokens_per_s, 'tok/s')}]"
        )
    beside = [
        f"{n} {what}"
        for n, what in (
            (snap.skipped, "skipped"),
            (snap.dead_lettered, "dead-lettered"),
            (snap.deferred, "deferred"),
        )
        if n
    ]
    return f"{snap.done}/{_total(snap)} {timing}" + (f" {', '.join(beside)}" if beside else "")


class ProgressTracker(Progress):
    """Counts a run's progress from its events; subclasses show it in :meth:`show`.

    Thread-safe: the runner's main loop, its writer thread and (with ``tick_s``) a ticker
    thread all report here. ``clock`` is injectable so tests drive time by hand.
    """

    def __init__(self, command: str, *, clock: Clock = time.monotonic, tick_s: float | None = None) -> None:
        self.command = command
        self.clock = clock
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._started = clock()
        self._first_out: float | None = None
        self._last_back: float | None = None
        self._limit: int | None = None
        self._shards_total = self._shards_read = 0
        self._unread_estimate = 0  # estimated rows of shards not taken up yet
        self._read_estimate = 0  # estimated rows of shards taken up
        self._known = 0  # chunks to embed in shards taken up
        self._done = self._embedded = self._tokens = 0
        self._skipped = self._dead = self._deferred = self._shards_done = 0
        self._batch_tokens: dict[str, int] = {}
        self._decided: set[str] = set()  # shard ids counted at shard_decided
        self._loading = ""
        self._loading_since = 0.0
        self._status = "running"
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # ------------------------------------------------------------------- events
    def planned(self, shards: int, estimated_chunks: int, limit: int | None) -> None:
        """Start the clock of the run and (with ``tick_s``) the ticker."""
        with self._lock:
            self._started = self.clock()
            self._shards_total = shards
            self._unread_estimate = estimated_chunks
            self._limit = limit
            self.show("planned")
        if self.tick_s and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, name="podembed-progress", daemon=True)
            self._ticker.start()

    def shard_decided(self, prepared: Prepared) -> None:
        """Replace the shard's row estimate by the chunks it really holds to embed."""
        with self._lock:
            if prepared.shard.shard_id in self._decided:
                return
            self._decided.add(prepared.shard.shard_id)
            self._count(prepared)
            self.show("decided")

    def loading(self, what: str) -> None:
        """Show that ``what`` is loading (seconds to minutes for a model)."""
        with self._lock:
            self._loading, self._loading_since = what, self.clock()
            self.show("loading")

    def loaded(self) -> None:
        """The load is over."""
        with self._lock:
            took = self.clock() - self._loading_since
            what, self._loading = self._loading, ""
            self.show_loaded(what, took)

    def shard_prepared(self, prepared: Prepared) -> None:
        """Count the shard, unless :meth:`shard_decided` already did."""
        with self._lock:
            if prepared.shard.shard_id not in self._decided:
                self._decided.add(prepared.shard.shard_id)
                self._count(prepared)

    def _count(self, prepared: Prepared) -> None:
        c = prepared.counts
        with self._lock:
            estimate = prepared.shard.estimated_chunks
            self._unread_estimate = max(self._unread_estimate - estimate, 0)
            self._read_estimate += estimate
            self._shards_read += 1
            self._known += len(prepared.chunks)
            self._skipped += c.skipped + c.skipped_failed
            self._dead += c.dead_lettered
            self._deferred += c.deferred

    def dispatched(self, batch: Batch) -> None:
        """The rate's clock starts with the first batch out (after the model load)."""
        with self._lock:
            if self._first_out is None:
                self._first_out = self.clock()
            self._batch_tokens[batch.batch_id] = batch.real_tokens

    def settled(self, result: BatchResult) -> None:
        """Count the batch's chunks, embedded or dead-lettered by the model."""
        with self._lock:
            n = len(result.chunk_ids)
            failed = n if result.error else len(result.failed)
            self._done += n
            self._embedded += n - failed
            self._dead += failed
            self._tokens += self._batch_tokens.pop(result.batch_id, 0)
            self._last_back = self.clock()
            self.show("batch")

    def shard_written(self, finished: bool) -> None:
        """One more shard is written (and done, unless --limit or a stop cut it short)."""
        with self._lock:
            self._shards_done += int(finished)
            self.show("shard" if finished else "shard-partial")

    def close(self, status: str) -> None:
        """Stop the ticker and show the final state."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        with self._lock:
            self._status = status
            self.show("close")

    # ----------------------------------------------------------------- figures
    def snapshot(self) -> Snapshot:
        """The progress now."""
        with self._lock:
            now = self.clock()
            running = self._status == "running"
            end = now if running or self._last_back is None else self._last_back
            first, last = self._first_out, self._last_back
            exact = self._shards_read >= self._shards_total or (
                self._limit is not None and self._known >= self._limit
            )
            total = self._known
            if not exact:
                share = self._known / self._read_estimate if self._read_estimate else 1.0
                total += math.ceil(self._unread_estimate * share)
            if self._limit is not None:
                total = min(total, self._limit)
            return Snapshot(
                command=self.command,
                total=max(total, self._done),
                exact=exact,
                done=self._done,
                embedded=self._embedded,
                tokens=self._tokens,
                embed_s=None if first is None else max(end - first, 0.0),
                measured_s=None if first is None or last is None else max(last - first, 0.0),
                elapsed_s=max(now - self._started, 0.0),
                skipped=self._skipped,
                dead_lettered=self._dead,
                deferred=self._deferred,
                shards_done=self._shards_done,
                shards_total=self._shards_total,
                status=self._status,
                known=self._shards_read > 0 or self._shards_total == 0,
                shards_read=self._shards_read,
                loading=self._loading,
                loading_s=max(now - self._loading_since, 0.0) if self._loading else 0.0,
            )

    # ------------------------------------------------------------------- views
    def show(self, event: str) -> None:
        """Called under the lock after each event (``planned``, ``decided``, ``loading``,
        ``batch``, ``shard``, ``shard-partial``, ``close``) and each tick (``tick``)."""

    def show_loaded(self, what: str, took_s: float) -> None:
        """Called under the lock when a load is over (``show("loaded")`` by default)."""
        self.show("loaded")

    def _tick_loop(self) -> None:
        assert self.tick_s is not None
        while not self._stop.wait(self.tick_s):
            with self._lock:
                if self._status == "running":
                    self.show("tick")


class LogProgress(ProgressTracker):
    """Progress as INFO lines: every ``every_s`` seconds of the run and at each shard written.

    ``every_s = 0`` keeps only the shard lines. Lines come at ``every_s``, ``2 * every_s``,
    ... after the plan (a shard line does not move that schedule). With ``background``
    a thread checks the schedule each second, so lines come even while a batch takes
    minutes (a cold GPU container); without it (tests), only events check it.
    """

    def __init__(
        self,
        command: str,
        every_s: float = 30.0,
        *,
        logger: logging.Logger | None = None,
        clock: Clock = time.monotonic,
        background: bool = True,
    ) -> None:
        tick = min(every_s, 1.0) if background and every_s > 0 else None
        super().__init__(command, clock=clock, tick_s=tick)
        self.every_s = every_s
        self.logger = logger or log
        # The lines are the point of this object: let them through a WARNING-level root logger.
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self._next_due = math.inf

    @classmethod
    def from_config(cls, config: Config, command: str, **kwargs: Any) -> LogProgress:
        """Lines every ``[report] progress_every_s`` seconds."""
        return cls(command, config.report.progress_every_s, **kwargs)

    def show(self, event: str) -> None:
        """Log the line the event calls for."""
        if event == "planned":
            self._next_due = self.clock() + self.every_s if self.every_s > 0 else math.inf
            snap = self.snapshot()
            self.logger.info(
                "%s: reading %d shard(s) (~%d rows) to find the chunks to embed",
                self.command,
                snap.shards_total,
                self._unread_estimate,
            )
        elif event == "loading":
            snap = self.snapshot()
            so_far = "" if snap.exact else f" so far ({snap.shards_read}/{snap.shards_total} shards read)"
            self.logger.info(
                "%s: %s chunks to embed%s; loading %s", self.command, _total(snap), so_far, self._loading
            )
        elif event in ("shard", "shard-partial"):
            tag = "shard done" if event == "shard" else "shard partly written"
            self.logger.info("%s [%s]", format_line(self.snapshot()), tag)
        elif event == "close":
            self.logger.info("%s [%s]", format_line(self.snapshot()), self._status)
        elif event in ("decided", "loaded"):
            pass  # the loading line and the periodic lines carry these
        else:  # a batch back, or a tick: the periodic line when it is due
            now = self.clock()
            if now >= self._next_due:
                while self._next_due <= now:
                    self._next_due += self.every_s
                self.logger.info("%s", format_line(self.snapshot()))

    def show_loaded(self, what: str, took_s: float) -> None:
        """One line: what loaded, in how long."""
        self.logger.info("%s: %s loaded in %s", self.command, what, duration(took_s))


def terminal_size(file: IO[str]) -> tuple[int, int] | None:
    """Columns and lines of the terminal ``file`` writes to; ``None`` when it has no size or
    says 0 for either (a pty nobody sized, a serial console): tqdm then draws nothing at all."""
    try:
        size = os.get_terminal_size(file.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return (size.columns, size.lines) if size.columns and size.lines else None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


class BarProgress(ProgressTracker):
    """A bar on a terminal (tqdm), redrawn at every batch back and once a second.

    On a terminal with no size (the window-size query failing or answering 0) it draws at
    ``COLUMNS`` x ``LINES``, or 80 x 24 when they are unset, instead of at 0, which is nothing.
    """

    FALLBACK_SIZE = (80, 24)

    def __init__(
        self, command: str, file: IO[str] | None = None, *, clock: Clock = time.monotonic, tick_s: float = 1.0
    ) -> None:
        super().__init__(command, clock=clock, tick_s=tick_s)
        self.file = file or sys.stderr
        self._bar: Any = None

    def show(self, event: str) -> None:
        """Redraw with the current figures (the bar stays on screen after the run)."""
        snap = self.snapshot()
        if self._bar is None:
            from tqdm import tqdm

            sized = terminal_size(self.file) is not None
            self._bar = tqdm(
                total=max(snap.total, 1),
                desc=self.command,
                file=self.file,
                leave=True,
                dynamic_ncols=sized,
                ncols=None if sized else _env_int("COLUMNS", self.FALLBACK_SIZE[0]),
                nrows=None if sized else _env_int("LINES", self.FALLBACK_SIZE[1]),
                mininterval=0,
                bar_format="{desc}",
            )
        bar = self._bar
        bar.total = max(snap.total, 1)
        bar.n = min(snap.done, bar.total) if snap.total else (bar.total if snap.status != "running" else 0)
        right = format_bar_right(snap).replace("{", "{{").replace("}", "}}")
        # No bar before the first shard is decided: its length would be a guess.
        bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| " if snap.known else "{desc}: ") + right
        bar.refresh()
        if event == "close":
            bar.close()
