"""Progress you can watch: a bar that moves per batch on a terminal, lines where there is none.

The runs here use the gated test executor (tests/gated_executor.py): each batch is
answered only when the test says so, or moves a fake clock, so nothing depends on timing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import parse_config
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.errors import ConfigError
from pipeline.reporting.progress import LogProgress
from tests.gated_executor import MODEL, GatedExecutor, GatedOptions, register
from tests.helpers import ROOT, make_config, sample_rows, write_rows

COLUMNS = 100
# `podembed` with the gated executor registered (in this process only the tests register it).
GATED_CLI = [sys.executable, "-c", "from tests.gated_executor import main; main()"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _corpus(path: Path, rows: int, invalid: tuple[int, ...], row_group_size: int) -> Path:
    data = sample_rows(n=rows)
    for i in invalid:
        data[i]["text"] = "   "  # blank text: dead-lettered by validation
    return write_rows(path, data, row_group_size=row_group_size)


def _toml(tmp_path: Path, source: Path, gate_fd: int, window: int = 10) -> Path:
    out = tmp_path / "out"
    model = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in MODEL.items())
    path = tmp_path / "gated.toml"
    path.write_text(
        f'[source]\nkind = "parquet"\npath = "{source}"\n'
        f'[sink]\nkind = "parquet"\npath = "{out}"\n'
        f"[model]\n{model}\n".replace("'", '"')
        + f"[batching]\nwindow_chunks = {window}\ntoken_budget = 4096\nmax_batch_size = 5\n"
        + f'[executor]\nkind = "gated"\ngate_fd = {gate_fd}\n'
        + f'[report]\ndir = "{out / "runs"}"\n',
        encoding="utf-8",
    )
    return path


class _Screen:
    """Everything the child wrote to its terminal, read as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        self.closed = False

    def wait_for(self, pattern: str, start: int = 0, limit_s: float = 60.0) -> re.Match[str]:
        """The first match at or after ``start``; fails (never sleeps) if the child ends first.

        ``limit_s`` only guards against a hang: every wait is for output the child must write."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + limit_s
        while True:
            m = rx.search(self.text, start)
            if m:
                return m
            assert not self.closed, f"child ended without {pattern!r}; screen:\n{self.text[-3000:]}"
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {limit_s}s; screen:\n{self.text[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self._read()

    def read_to_end(self, limit_s: float = 60.0) -> str:
        """Read until the child closes the terminal."""
        deadline = time.monotonic() + limit_s
        while not self.closed:
            left = deadline - time.monotonic()
            assert left > 0, f"child still running; screen:\n{self.text[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self._read()
        return self.text

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:  # EIO: the last holder of the terminal's other end is gone
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.closed = True
        self.text += data.decode("utf-8", "replace")


def _frames(screen: str) -> list[str]:
    """Each redraw of the bar (tqdm redraws with a carriage return)."""
    return [ANSI.sub("", f) for f in re.split(r"[\r\n]+", screen) if f.startswith("backfill: ")]


def test_bar_in_a_terminal_moves_with_every_batch(tmp_path: Path) -> None:
    # One shard (one row group, within a window), as most real files: the bar must still
    # move per batch. (A row group bigger than a window is cut into row-range shards.)
    source = _corpus(tmp_path / "one_shard.parquet", rows=40, invalid=(3, 17), row_group_size=1000)
    gate_r, gate_w = os.pipe()
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    toml = _toml(tmp_path, source, gate_r, window=64)
    child = subprocess.Popen(
        [*GATED_CLI, "backfill", "--config", str(toml), "--limit", "30"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        pass_fds=(gate_r,),
        cwd=ROOT,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    os.close(gate_r)
    screen = _Screen(master)
    try:
        # 38 valid rows, --limit 30: six batches of five; 2 invalid and 8 deferred beside the bar.
        pos = screen.wait_for(r"backfill:\s+0%\|.*\| 0/~?30 ").end()
        for k in range(1, 7):
            os.write(gate_w, b"x")  # let batch k through
            pct = round(100 * 5 * k / 30)
            pos = screen.wait_for(rf"backfill:\s+{pct}%\|[^\r\n]*\| {5 * k}/30 \[", pos).end()
        text = screen.read_to_end()
    finally:
        os.close(gate_w)
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        os.close(master)
    assert child.returncode == 0, text[-3000:]

    frames = _frames(text)
    seen = [int(m.group(1)) for f in frames if (m := re.search(r"\| (\d+)/~?30 ", f))]
    assert {0, 5, 10, 15, 20, 25, 30} <= set(seen), frames
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    # Drawn to the window's width, never wider (tqdm read the size off the terminal).
    assert all(len(f) <= COLUMNS for f in frames), [f for f in frames if len(f) > COLUMNS]
    bars = [f for f in frames if "%|" in f]
    assert min(len(f) for f in bars) >= COLUMNS - 1
    # Before the shard is decided there is no bar (its length would be a guess), then the
    # model loads: both are said, and no total is shown before it is known.
    assert frames[0].startswith("backfill: 0/? [") and "reading shard 1/1" in frames[0], frames[0]
    assert any("0/30 [" in f and "loading the model]" in f for f in frames), frames
    last = frames[-1]
    assert re.search(r"100%\|[^|]*\| 30/30 \[", last), last
    assert "2 dead-lettered, 8 deferred" in last and "chunks/s" in last and "tok/s" in last, last
    assert "30 embedded" in text and "2 dead-lettered" in text


class FakeClock:
    """Seconds that move only when the test moves them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_lines_without_a_terminal_every_n_seconds_and_at_each_shard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Three shards of 10 rows; one invalid row in the second; batches of 5: six batches.
    source = _corpus(tmp_path / "three_shards.parquet", rows=30, invalid=(12,), row_group_size=10)
    config = make_config(
        source, tmp_path / "out", model=MODEL, batching={"max_batch_size": 5, "window_chunks": 10}
    )
    clock = FakeClock()

    def twelve_seconds(batch: Any) -> None:
        clock.now += 12.0  # each batch "takes" 12 s

    executor = GatedExecutor(GatedOptions(), config.model, before_answer=twelve_seconds)
    logger = logging.getLogger("test.progress.lines")
    progress = LogProgress("backfill", 30, logger=logger, clock=clock, background=False)
    with caplog.at_level(logging.INFO, logger=logger.name):
        report = run(config, RunOptions(), executor=executor, progress=progress)
    assert report.status == "completed" and report.counts.embedded == 29 and executor.answered == 6
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == logger.name)

    # No chunk count before a shard is decided; the first one is a projection, and says so.
    assert lines[0] == "backfill: reading 3 shard(s) (~30 rows) to find the chunks to embed"
    assert lines[1] == "backfill: ~30 chunks to embed so far (1/3 shards read); loading the model"
    assert lines[2] == "backfill: the model loaded in 0s"
    periodic = [ln for ln in lines[3:] if not ln.endswith("]")]
    # Batches come back at 12, 24, 36, 48, 60, 72 s: lines are due at 30 and 60 s.
    # At 36 s: 15 of ~29 (2nd shard read: 19 of its first 20 rows need work, so ~9.5 of
    # the last 10 will), 15/36 chunks/s, ETA 14 / (15/36) = 33.6 s.
    assert len(periodic) == 2, lines
    assert periodic[0].startswith("backfill: 15/~29 chunks (52%), 0.4 chunks/s, "), periodic[0]
    assert re.search(
        r"tokens/s, ETA 34s; 1 dead-lettered, 0 skipped, 0 deferred; shards \d/3 done; 36s elapsed$",
        periodic[0],
    ), periodic[0]
    # At 60 s every shard is read: the total is exact; 24/60 chunks/s, ETA 5 / 0.4 = 12.5 s.
    assert periodic[1].startswith("backfill: 24/29 chunks (83%), 0.4 chunks/s, "), periodic[1]
    assert re.search(r"ETA 12s; 1 dead-lettered, .* 1m00s elapsed$", periodic[1]), periodic[1]

    shard_lines = [ln for ln in lines if ln.endswith("[shard done]")]
    assert [re.search(r"shards (\d)/3 done", ln).group(1) for ln in shard_lines] == ["1", "2", "3"]

    final = lines[-1]
    tokens_per_s = report.tokens / 72.0
    assert final.startswith("backfill: 29/29 chunks (100%), 0.4 chunks/s, "), final
    assert f"{tokens_per_s:.1f} tokens/s, in 1m12s; 1 dead-lettered" in final, final
    assert final.endswith("shards 3/3 done; 1m12s elapsed [completed]"), final


def test_cli_without_a_terminal_logs_progress_lines(tmp_path: Path) -> None:
    source = _corpus(tmp_path / "s.parquet", rows=20, invalid=(), row_group_size=10)
    toml = _toml(tmp_path, source, -1)
    done = subprocess.run(
        [*GATED_CLI, "backfill", "--config", str(toml), "--limit", "15"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "\r" not in err and "%|" not in err, "a bar was drawn without a terminal"
    log = "INFO pipeline.reporting.progress: backfill:"
    assert f"{log} reading 2 shard(s) (~20 rows) to find the chunks to embed" in err
    assert f"{log} ~15 chunks to embed so far (1/2 shards read); loading" in err
    # The writer thread may lag the embedding loop: the counts in shard lines are "so far".
    assert re.search(r"backfill: \d+/~?15 chunks \(\d+%\), .* shards 1/2 done; .* \[shard done\]", err), err
    assert re.search(r"backfill: 15/15 chunks \(100%\), .* 5 deferred; .* \[shard partly written\]", err), err
    assert "backfill: 15/15 chunks (100%)" in err and err.count("[completed]") == 1, err


def test_gated_kind_exists_only_when_a_test_registers_it() -> None:
    from pipeline import registry

    registry.EXECUTORS.pop("gated", None)
    with pytest.raises(ConfigError, match="unknown kind 'gated'"):
        registry.resolve("executor", "gated")
    register()
    assert registry.resolve("executor", "gated") is GatedExecutor


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (30, True),
        (0, True),
        (1.5, True),
        (0.5, False),
        (-1, False),
        (float("nan"), False),
        (float("inf"), False),
        ("30", False),
    ],
)
def test_progress_every_s_is_validated(tmp_path: Path, value: Any, ok: bool) -> None:
    raw: dict[str, Any] = {
        "source": {"kind": "parquet", "path": str(tmp_path / "s.parquet")},
        "sink": {"kind": "parquet", "path": str(tmp_path / "o")},
        "model": dict(MODEL),
        "report": {"progress_every_s": value},
    }
    if ok:
        assert parse_config(raw).report.progress_every_s == float(value)
    else:
        with pytest.raises(ConfigError, match=r"report\.progress_every_s"):
            parse_config(raw)
    raw.pop("report")
    assert parse_config(raw).report.progress_every_s == 30.0


def test_a_run_with_nothing_to_embed_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = _corpus(tmp_path / "s.parquet", rows=10, invalid=(), row_group_size=10)
    config = make_config(source, tmp_path / "out", model=MODEL)
    first = run(config, RunOptions(), executor=GatedExecutor(GatedOptions(), config.model))
    assert first.counts.embedded == 10
    logger = logging.getLogger("test.progress.nothing")
    progress = LogProgress("backfill", 30, logger=logger, clock=FakeClock(), background=False)
    executor = GatedExecutor(GatedOptions(), config.model)
    with caplog.at_level(logging.INFO, logger=logger.name):
        report = run(config, RunOptions(full=True), executor=executor, progress=progress)
    assert report.counts.skipped == 10 and executor.answered == 0
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    # Nothing to do: never "~10 chunks to embed", no model loading, 0/0 at the end.
    assert lines[0] == "backfill: reading 1 shard(s) (~10 rows) to find the chunks to embed", lines
    assert not any("chunks to embed" in ln and "reading" not in ln for ln in lines), lines
    assert not any("loading" in ln for ln in lines), lines
    assert not any("waiting for" in ln for ln in lines), lines  # it waits for nothing
    assert lines[-1] == (
        "backfill: 0/0 chunks (100%), nothing embedded; 0 dead-lettered, 10 skipped, 0 deferred; "
        "shards 1/1 done; 0s elapsed [completed]"
    ), lines


def _start_on_pty(
    tmp_path: Path, args: list[str], size: tuple[int, int] | None
) -> tuple[subprocess.Popen[bytes], _Screen, int]:
    """The gated CLI on a fresh terminal (``size``: rows, columns; ``None``: never sized,
    as a pty nobody set up); returns the child, its screen and the gate's write end."""
    source = _corpus(tmp_path / "one_shard.parquet", rows=30, invalid=(), row_group_size=1000)
    gate_r, gate_w = os.pipe()
    master, slave = os.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    toml = _toml(tmp_path, source, gate_r, window=64)
    child = subprocess.Popen(
        [*GATED_CLI, *args, "--config", str(toml)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        pass_fds=(gate_r,),
        cwd=ROOT,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    os.close(gate_r)
    return child, _Screen(master), gate_w


def _finish(child: subprocess.Popen[bytes], screen: _Screen, gate_w: int) -> str:
    try:
        text = screen.read_to_end()
    finally:
        os.close(gate_w)
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        os.close(screen.fd)
    return text


def test_a_terminal_without_a_size_still_shows_the_bar_and_the_model_loading(tmp_path: Path) -> None:
    # COLUMNS/LINES unset and a window of 0 x 0: tqdm alone would draw nothing at all.
    child, screen, gate_w = _start_on_pty(tmp_path, ["backfill"], size=None)
    screen.wait_for(r"backfill: .*loading the model")
    os.write(gate_w, b"x" * 6)  # six batches of five
    text = _finish(child, screen, gate_w)
    assert child.returncode == 0, text[-3000:]
    frames = _frames(text)
    assert frames, text
    assert all(len(f) <= 80 for f in frames), [f for f in frames if len(f) > 80]
    assert any("0/30 [" in f and "loading the model]" in f for f in frames), frames
    assert re.search(r"100%\|#*\| 30/30 \[", frames[-1]) or re.search(r"100%\|[^|]*\| 30/30 \[", frames[-1])


def test_an_interrupted_run_says_why_chunks_were_left_and_counts_batches_one_way(tmp_path: Path) -> None:
    child, screen, gate_w = _start_on_pty(tmp_path, ["backfill"], size=(30, COLUMNS))
    os.write(gate_w, b"xx")  # two batches answered, the third waits at its gate
    screen.wait_for(r"\| 10/30 \[")
    child.send_signal(signal.SIGINT)
    text = ANSI.sub("", _finish(child, screen, gate_w))
    assert child.returncode == 130, text[-3000:]
    # No --limit was given: nothing is "deferred by --limit".
    assert "deferred by --limit" not in text and "deferred" not in text.split("run ")[-1], text[-2000:]
    assert "not embedded, the run stopped first (the next run does them): 20" in text, text[-2000:]
    assert "in 6 batches (2 answered before the run stopped)" in text, text[-2000:]
    assert "10 embedded" in text and "resume with: podembed backfill" in text, text[-2000:]


def test_ingest_of_a_small_episode_starts_with_its_true_total(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = sample_rows(n=40)
    episode = rows[0]["episode_id"]
    rows = [r for r in rows if r["episode_id"] == episode][:4] + [
        r for r in rows if r["episode_id"] != episode
    ]
    source = write_rows(tmp_path / "s.parquet", rows, row_group_size=1000)
    config = make_config(source, tmp_path / "out", model=MODEL)
    logger = logging.getLogger("test.progress.ingest")
    progress = LogProgress("ingest", 30, logger=logger, clock=FakeClock(), background=False)
    from pipeline.engine.selection import Selection

    opts = RunOptions(command="ingest", selection=Selection(episode_ids=(episode,)))
    with caplog.at_level(logging.INFO, logger=logger.name):
        report = run(config, opts, executor=GatedExecutor(GatedOptions(), config.model), progress=progress)
    assert report.counts.embedded == 4
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    # The shard's 23 rows are read, but the first total said is the episode's 4 chunks.
    assert lines[0] == f"ingest: reading 1 shard(s) (~{len(rows)} rows) to find the chunks to embed", lines
    assert lines[1] == "ingest: 4 chunks to embed; loading the model", lines
    assert not any(f"~{len(rows)} chunks" in ln or f"/{len(rows)} chunks" in ln for ln in lines), lines
    assert lines[-1].startswith("ingest: 4/4 chunks (100%)"), lines
