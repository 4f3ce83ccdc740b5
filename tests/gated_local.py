"""The real in-process executor behind file gates, and a CLI that knows it (tests only).

Tests that interrupt a run (SIGKILL, Ctrl-C, SIGTERM) must not depend on the machine's
speed: a signal sent "after about 2 shards" may arrive after the run ended on a fast or
idle machine and long before on a busy one. ``GatedExecutor`` is the in-process executor
with a gate folder: before batch ``i`` it writes ``waiting-i`` and blocks until the test
creates ``go-i`` (or ``open``); after each batch it appends the number of chunks embedded
to ``embedded.log``. With ``hold-close`` present, ``close()`` (called after the run's
outcome is recorded) writes ``closing`` and blocks until ``go-close`` exists.

Run the CLI with it: ``python -m tests.gated_local backfill --config c.toml`` where the
config has ``[executor] kind = "gated-local"`` and ``gate = "<folder>"``. It is registered
only here, never by the product. Unlike ``tests/gated_executor.py`` (fake vectors, no
model, a pipe), it computes real vectors, so a killed and resumed run can be compared with
an uninterrupted one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import registry
from pipeline.config import ModelConfig
from pipeline.engine.local import LocalExecutor, LocalOptions
from pipeline.records import Batch, BatchResult

KIND = "gated-local"
POLL_S = 0.005  # how often a blocked gate looks for its file (waiting, not timing)


@dataclass(slots=True)
class GatedLocalOptions(LocalOptions):
    """``[executor]`` options for ``kind = "gated-local"``: the local options plus the gate folder."""

    gate: str = ""


def _wait_for(*paths: Path) -> None:
    while not any(p.exists() for p in paths):
        time.sleep(POLL_S)


class GatedLocalExecutor(LocalExecutor):
    """The local executor, one batch at a time when the test says so."""

    Options = GatedLocalOptions

    def __init__(self, options: GatedLocalOptions, model: ModelConfig) -> None:
        super().__init__(options, model)
        self.gate = Path(options.gate) if options.gate else None
        # Results the runner has taken and come back from. The local executor prepares the
        # next batches on a worker thread while one runs; the gate holds batch i until the
        # runner is done with batch i - 1, so "blocked before batch i" keeps meaning "batches
        # before i are settled", as the tests read it.
        self._settled = 0
        self._progress = threading.Condition()

    @classmethod
    def open(cls, options: GatedLocalOptions, model: ModelConfig) -> GatedLocalExecutor:
        """Like the local executor: the model loads on the first batch."""
        return cls(options, model)

    def _gated(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for i, batch in enumerate(batches):
            if self.gate is not None:
                with self._progress:
                    self._progress.wait_for(lambda n=i: self._settled >= n)
                (self.gate / f"waiting-{i}").touch()
                _wait_for(self.gate / f"go-{i}", self.gate / "open")
            yield batch

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """Each batch waits for its gate file; each result is logged before the runner sees it."""
        for result in super().embed(self._gated(batches)):
            if self.gate is not None:
                with (self.gate / "embedded.log").open("a") as fh:
                    fh.write(f"{len(result.chunk_ids)}\n")
            yield result
            with self._progress:
                self._settled += 1
                self._progress.notify_all()

    def close(self) -> None:
        """With ``hold-close`` in the gate: say so and wait (the run is recorded by now)."""
        if self.gate is not None and (self.gate / "hold-close").exists():
            (self.gate / "closing").touch()
            _wait_for(self.gate / "go-close")
        super().close()


def register() -> None:
    """Make ``[executor] kind = "gated-local"`` resolvable in this process."""
    registry.EXECUTORS[KIND] = f"{__name__}:GatedLocalExecutor"


def embedded_so_far(gate: Path) -> int:
    """Chunks the gated run has embedded (whether or not they were written)."""
    log = gate / "embedded.log"
    return sum(int(n) for n in log.read_text().split()) if log.exists() else 0


ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 600.0  # only bounds a broken run; nothing waits this long when the code works


class GatedRun:
    """``podembed COMMAND --config CONFIG`` in a subprocess, driven batch by batch."""

    def __init__(
        self,
        config: Path,
        gate: Path,
        *args: str,
        command: str = "backfill",
        hold_close: bool = False,
        **popen: object,
    ) -> None:
        self.gate = gate
        gate.mkdir(parents=True, exist_ok=True)
        for stale in gate.iterdir():  # a previous run's markers would release this one
            stale.unlink()
        if hold_close:  # before the start: the run must find it whatever its speed
            (gate / "hold-close").touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gated_local", command, "--config", str(config), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,  # type: ignore[arg-type]
        )

    def wait_for(self, name: str) -> None:
        """Wait until the run writes marker ``name`` in the gate folder."""
        marker = self.gate / name
        deadline = time.monotonic() + DEADLINE_S
        while not marker.exists():
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise AssertionError(f"run ended (exit {self.proc.returncode}) before {marker.name}: {err}")
            assert time.monotonic() < deadline, f"no {marker.name} after {DEADLINE_S}s"
            time.sleep(POLL_S)

    def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds (the run must still be alive)."""
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert self.proc.poll() is None, f"run ended (exit {self.proc.returncode})"
            assert time.monotonic() < deadline, f"condition not met after {DEADLINE_S}s"
            time.sleep(POLL_S)

    def block_at(self, i: int) -> None:
        """Wait until the run is blocked before batch ``i``."""
        self.wait_for(f"waiting-{i}")

    def release_until(self, condition: Callable[[], bool]) -> int:
        """Release batches one by one until ``condition()`` holds while the run is blocked;
        returns the batch it is blocked at."""
        i = 0
        while True:
            self.block_at(i)
            if condition():
                return i
            (self.gate / f"go-{i}").touch()
            i += 1

    def open(self) -> None:
        """Let every remaining batch through."""
        (self.gate / "open").touch()

    def embedded(self) -> int:
        """Chunks embedded so far (written or not)."""
        return embedded_so_far(self.gate)

    def finish(self, timeout: float = DEADLINE_S) -> tuple[int, str, str]:
        """Wait for the exit: (exit code, stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def main() -> None:
    """``python -m tests.gated_local ARGS``: the podembed CLI with the gated executor registered."""
    register()
    from jobs.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
