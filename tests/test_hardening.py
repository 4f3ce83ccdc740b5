"""Issue 19 (hardening, third pass): bad values, bad folders, bad documents, full disks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.helpers import config_dict, sample_rows, tiny_model, write_rows, write_toml


def _toml(tmp_path: Path, model_dir: str, rows: int = 24) -> Path:
    src = write_rows(tmp_path / "src" / "s.parquet", sample_rows(n=rows))
    return write_toml(tmp_path / "c.toml", config_dict(src, tmp_path / "out", tiny_model(model_dir)))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["reindex", "--since", ""], "--since"),
        (["reindex", "--since", "  "], "--since"),
        (["reindex", "--episode", ""], "--episode"),
        (["reindex", "--podcast", ""], "--podcast"),
        (["ingest", ""], "EPISODE_ID"),
        (["plan", "--force", "--since", ""], "--since"),
    ],
)
def test_an_empty_value_never_means_everything(
    tmp_path: Path, tiny_model_dir: str, args: list[str], option: str
) -> None:
    """Issue 19.4: `reindex --since ""` (an unset variable) re-embedded the whole corpus."""
    toml = _toml(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(cli, [*args, "--config", str(toml)])
    assert result.exit_code == 2, result.output
    assert option in result.output and "empty" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out" / "vectors").exists() or not list((tmp_path / "out" / "vectors").iterdir())


def _numeric_keys() -> list[tuple[type, str, str, dict[str, Any], type]]:
    """(Options class, section, field, the table's required keys, int or float) for every
    numeric setting of the schema: every section and every technology's options."""
    import dataclasses
    import typing

    from pipeline import config, registry

    sections: list[tuple[type, str, dict[str, Any]]] = [
        (config.ModelConfig, "model", {"id": "m", "dimension": 8}),
        (config.BatchingConfig, "batching", {}),
        (config.CostConfig, "cost", {}),
        (config.ReportConfig, "report", {}),
        (config.FieldMap, "source.fields", {}),
    ]
    for role, kinds in registry.ROLES.items():
        for kind in kinds:
            base = {"path": "x", "database": "d", "collection": "c"}
            sections.append((registry.resolve(role, kind).Options, f"{role}[{kind}]", base))
    keys = []
    for cls, section, base in sections:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            kinds_ = {tp} | set(typing.get_args(tp))
            numeric = [t for t in (int, float) if t in kinds_]
            if numeric:
                required = {k: v for k, v in base.items() if k in names and k != f.name}
                keys.append((cls, section, f.name, required, numeric[0]))
    return keys


NUMERIC_KEYS = _numeric_keys()

# Keys where 0 cannot work (elsewhere 0 means "off", "never" or "the default").
ZERO_INVALID = {
    "model.dimension", "model.max_seq_length",
    "batching.window_chunks", "batching.token_budget", "batching.max_batch_size", "batching.queue_depth",
    "batching.write_every_s",
    "cost.tokens_per_second", "cost.devices",
    "source[mongo].batch_size", "source[mongo].server_selection_timeout_ms",
    "sink[mongo].write_batch", "sink[mongo].server_selection_timeout_ms",
    "checkpoint[mongo].lease_ttl_s", "checkpoint[mongo].server_selection_timeout_ms",
    "executor[modal].max_containers", "executor[modal].inflight_per_container",
    "executor[modal].gpu_cpu", "executor[modal].job_cpu",
    "executor[modal].gpu_memory_mib", "executor[modal].job_memory_mib",
    "executor[modal].batch_timeout_s", "executor[modal].startup_timeout_s",
    "executor[modal].backfill_timeout_s", "executor[modal].ingest_timeout_s",
    "executor[modal].trigger_per_minute", "executor[modal].scaledown_window_s",
}  # fmt: skip


def test_the_walk_covers_every_numeric_key() -> None:
    names = {f"{section}.{name}" for _, section, name, _, _ in NUMERIC_KEYS}
    assert len(names) >= 40
    assert names >= ZERO_INVALID, ZERO_INVALID - names


@pytest.mark.parametrize(
    ("cls", "section", "name", "required", "kind"),
    NUMERIC_KEYS,
    ids=[f"{s}.{n}" for _, s, n, _, _ in NUMERIC_KEYS],
)
def test_every_numeric_setting_is_finite_and_in_range(
    cls: type, section: str, name: str, required: dict[str, Any], kind: type
) -> None:
    """Issue 19.6: nan, inf and negatives were accepted (a spinning loop, a nonsense plan) or
    crashed with a traceback; each must be a ConfigError (exit 2) that names the key."""
    from pipeline.errors import ConfigError
    from pipeline.toml_schema import from_table

    prefix = section.split("[")[0]
    bad: list[Any] = [float("nan"), float("inf"), float("-inf"), -1, -1.5]
    if f"{section}.{name}" in ZERO_INVALID:
        bad.append(0)
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            from_table(cls, {**required, name: value}, prefix)
        message = str(caught.value)
        assert message.startswith(f"{prefix}.") and name in message.split(":")[0], (value, message)


class _FullDisk:
    """A SQLite connection whose writes fail with "database or disk is full" once ``full`` is set
    (injected at the db layer: the ledger's own sqlite3 connection, no mount needed)."""

    def __init__(self, conn: Any, full: Any) -> None:
        self._conn, self._full = conn, full

    def execute(self, sql: str, *args: Any) -> Any:
        import sqlite3

        if self._full.is_set() and sql.lstrip().split()[0].upper() in {"BEGIN", "INSERT", "UPDATE", "DELETE"}:
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_full_disk_under_the_ledger_hides_neither_the_runs_error_nor_shows_a_traceback(
    tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19.5: `database or disk is full` from unregister() in the run's finally replaced the
    run's own error with a traceback, and no report was printed."""
    import errno
    import sqlite3
    import threading

    import pipeline.files.sqlite_db as sqlite_db
    from pipeline.files.sink import ParquetSink

    full = threading.Event()
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite_db.sqlite3, "connect", lambda *a, **kw: _FullDisk(real_connect(*a, **kw), full)
    )

    def disk_fills(self: Any, records: Any) -> int:
        full.set()  # the disk fills up while the first vectors are written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ParquetSink, "write", disk_fills)
    toml = _toml(tmp_path, tiny_model_dir)

    result = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "No space left on device" in result.output  # the run's own error is still shown
    assert "disk is full" in result.output and "free space" in result.output  # and what to do
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option", ["tlsCAFile", "tlsCertificateKeyFile", "tlscafile"])
@pytest.mark.parametrize("problem", ["missing", "not PEM", "a folder"])
def test_a_tls_file_the_mongodb_uri_names_must_exist_and_be_pem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, problem: str
) -> None:
    """Issue 19.5: a URI naming a missing or non-PEM TLS file ended in a traceback
    (FileNotFoundError, ssl.SSLError) that named neither the option nor the path."""
    path = tmp_path / "ca.pem"
    if problem == "not PEM":
        path.write_text("this is not a certificate\n")
    elif problem == "a folder":
        path.mkdir()
    monkeypatch.setenv("PODEMBED_TLS_URI", f"mongodb://127.0.0.1:1/?tls=true&{option}={path}")
    conn = {"uri_env": "PODEMBED_TLS_URI", "database": "d", "server_selection_timeout_ms": 200}
    raw = {
        "source": {"kind": "mongo", **conn, "collection": "chunks", "fields": {"chunk_id": "_id"}},
        "sink": {"kind": "mongo", **conn, "collection": "chunks"},
        "model": {"id": "m", "dimension": 8},
        "report": {"dir": str(tmp_path / "runs")},
    }
    toml = write_toml(tmp_path / "c.toml", raw)
    for command in (["backfill"], ["status"]):
        result = CliRunner().invoke(cli, [*command, "--config", str(toml)])
        assert result.exit_code == 2, (command, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        canonical = "tlsCAFile" if option.lower() == "tlscafile" else option
        assert f"{canonical}={path}" in result.output and "source.uri_env" in result.output


def _in_thread(fn: Any) -> Any:
    """Run ``fn`` in a thread; a hang fails the test instead of stopping the suite."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=120)  # a guard against the hang, not a race: the work takes well under a second
    assert not t.is_alive(), "hung (a FIFO opened?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_the_parquet_source_folder_skips_what_is_not_a_regular_file_and_reads_dataset_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19.7: a FIFO named *.parquet hung every command; a socket, a broken symlink or a
    Spark/pyarrow.dataset folder (x.parquet/part-*.parquet, _SUCCESS, .crc) stopped them."""
    import os
    import socket

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import FieldMap
    from pipeline.engine.selection import Selection
    from pipeline.files.source import ParquetSource, ParquetSourceOptions

    rows = sample_rows(n=30)
    src = tmp_path / "src"
    write_rows(src / "plain.parquet", rows[:10])
    # A dataset folder as Spark writes it.
    spark = src / "spark.parquet"
    write_rows(spark / "part-00000-abc.snappy.parquet", rows[10:15])
    write_rows(spark / "part-00001-abc.snappy.parquet", rows[15:20])
    (spark / "_SUCCESS").write_bytes(b"")
    (spark / ".part-00000-abc.snappy.parquet.crc").write_bytes(b"\x00crc")
    write_rows(spark / "_temporary" / "0" / "part-00009.parquet", rows[:3])  # an unfinished job's output
    # ... and as pyarrow.dataset writes it.
    import pyarrow.dataset as ds

    ds.write_dataset(pa.Table.from_pylist(rows[20:30], schema=pq.read_schema(src / "plain.parquet")),
                     src / "arrow.parquet", format="parquet")  # fmt: skip
    os.mkfifo(src / "fifo.parquet")
    os.symlink(src / "gone.parquet", src / "broken.parquet")
    (src / "junk.parquet").mkdir()
    (src / "junk.parquet" / "notes.txt").write_text("not data")
    sock = socket.socket(socket.AF_UNIX)
    short = Path(f"/tmp/podembed-{os.getpid()}-sock.parquet")  # AF_UNIX paths are short
    try:
        sock.bind(str(short))
        os.symlink(short, src / "socket.parquet")

        source = _in_thread(lambda: ParquetSource.open(ParquetSourceOptions(str(src)), FieldMap(), 64))
        alls = Selection()
        ids = _in_thread(
            lambda: [r.fields["chunk_id"] for s in source.plan(alls) for r in source.read(s, alls)]
        )
    finally:
        sock.close()
        short.unlink(missing_ok=True)
    assert sorted(ids) == sorted(r["chunk_id"] for r in rows)  # every row once, _temporary left out
    skipped = caplog.text
    assert "fifo.parquet" in skipped and "broken.parquet" in skipped and "socket.parquet" in skipped
    assert "junk.parquet: a folder with no Parquet files" in skipped


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet, just a name"])
def test_a_file_named_parquet_that_is_not_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    """A zero-byte or non-Parquet *.parquet file: exit 2 naming the file and what to do (not
    skipped: its chunks would then look removed, and --prune would delete their vectors)."""
    from pipeline.config import FieldMap
    from pipeline.errors import SourceError
    from pipeline.files.source import ParquetSource, ParquetSourceOptions

    src = tmp_path / "src"
    write_rows(src / "good.parquet", sample_rows(n=5))
    (src / "bad.parquet").write_bytes(content)
    with pytest.raises(SourceError, match=r"bad\.parquet is not a readable Parquet file .*move it out"):
        _in_thread(lambda: ParquetSource.open(ParquetSourceOptions(str(src)), FieldMap(), 64))


NOTHING_TO_EMBED = {
    "punctuation": "... !!! ?? -- ",
    "dashes and quotes": "\u2014\u2013 \u201c\u201d \u00ab\u00bb",
    "combining marks alone": "\u0301\u0308\u0327 \u20dd",
    "zero-width and BOM": "\u200b\ufeff\u200d\u2060",
    "controls and punctuation": "\x01\x7f.\x1b,",
    "every Unicode space": "\u00a0\u1680\u2000\u2003\u2007\u202f\u205f\u3000\u2028\u2029\x85",
    "hangul fillers and blank braille": "\u3164\u115f\u1160\uffa0\u2800",
    "mixed": "\u200b. \u0301\u3000\ufeff\u2800 \u2014",
}


@pytest.mark.parametrize("text", list(NOTHING_TO_EMBED.values()), ids=list(NOTHING_TO_EMBED))
@pytest.mark.parametrize("form", ["str", "utf-8 bytes"])
def test_text_with_no_letter_or_digit_is_a_dead_letter_in_every_form(text: str, form: str) -> None:
    """Issue 19.8a: text of only punctuation, marks, format characters or unusual spaces was embedded."""
    from pipeline.engine.validation import validate
    from pipeline.records import DeadLetter, RawRecord

    value: Any = text if form == "str" else text.encode("utf-8")
    result = validate(RawRecord({"chunk_id": "c1", "episode_id": "e1", "text": value}, "row 1"), {})
    assert isinstance(result, DeadLetter) and result.field == "text", result


@pytest.mark.parametrize("text", ["ok", "42", "\u00e9", "\u4e2d", "\U0001f44d", "$", "\u0661", "a\u200b"])
def test_text_with_one_letter_digit_or_symbol_is_embedded(text: str) -> None:
    from pipeline.engine.validation import validate
    from pipeline.records import Chunk, RawRecord

    result = validate(RawRecord({"chunk_id": "c1", "episode_id": "e1", "text": f" {text}. "}, "row 1"), {})
    assert isinstance(result, Chunk), result


def test_an_id_duplicated_after_it_was_embedded_loses_its_old_vector_to_prune(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    """Issue 19.8c: the id was dead-lettered but its old vector stayed (and was served), even
    after --prune."""
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from tests.helpers import make_config, vectors_by_id

    rows = sample_rows(n=20)
    src = tmp_path / "src"
    write_rows(src / "a.parquet", rows)
    cfg = make_config(src, tmp_path / "out", tiny_model(tiny_model_dir))
    assert run(cfg, RunOptions()).counts.embedded == 20
    twin = rows[3]["chunk_id"]
    # Another file now holds a second record with that id (another episode, another text).
    write_rows(src / "b.parquet", [{**rows[12], "chunk_id": twin, "text": "A different text."}])

    # An incremental night reads only the new file: its record is dead-lettered, and the old
    # vector (which answers for neither record now) is removed, so search never serves it.
    report = run(cfg, RunOptions(prune=True))

    assert report.status == "completed", report.error
    assert report.counts.dead_lettered == 1
    assert report.counts.removed == 1 and report.counts.pruned == 1
    vectors = vectors_by_id(tmp_path / "out")
    assert twin not in vectors and len(vectors) == 19

    # The full sweep reads the unchanged file too: both records with the id are dead letters.
    report = run(cfg, RunOptions(full=True))
    assert report.status == "completed", report.error
    assert report.counts.dead_lettered == 2
    assert twin not in vectors_by_id(tmp_path / "out")


def test_a_large_shard_writes_what_it_embedded_every_write_every_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19.8b: a kill lost a whole shard (2,048 chunks by default: all of a 900-chunk
    single-row-group file, minutes of CPU). Now a shard's vectors are written at least every
    batching.write_every_s seconds of embedding: a kill loses about that much, not more."""
    import threading

    import pipeline.engine.in_flight as in_flight
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.files.sink import ParquetSink
    from tests.gated_executor import MODEL, GatedExecutor, GatedOptions
    from tests.helpers import make_config, vectors_by_id

    out = tmp_path / "out"
    src = write_rows(tmp_path / "one_group.parquet", sample_rows(n=40), row_group_size=1000)
    config = make_config(
        src, out, model=MODEL, batching={"window_chunks": 2048, "max_batch_size": 8, "write_every_s": 25.0}
    )
    clock = [0.0]
    monkeypatch.setattr(in_flight, "monotonic", lambda: clock[0])
    wrote = threading.Event()
    real_write = ParquetSink.write

    def write(self: Any, records: Any) -> int:
        n = real_write(self, records)
        wrote.set()
        return n

    monkeypatch.setattr(ParquetSink, "write", write)
    durable_before_last_batch: list[int] = []

    def ten_seconds(batch: Any) -> None:
        clock[0] += 10.0  # each batch of 8 "takes" 10 s: answered at 10, 20, 30, 40, 50 s
        if executor.answered == 4:  # the last batch: what would a kill -9 leave now?
            assert wrote.wait(timeout=60)  # the writer thread has written the part
            durable_before_last_batch.append(len(vectors_by_id(out)))

    executor = GatedExecutor(GatedOptions(), config.model, before_answer=ten_seconds)
    report = run(config, RunOptions(), executor=executor)

    assert report.status == "completed" and report.shards_total == 1 and executor.answered == 5
    # At 30 s the records waiting since 10 s would be 30 s old by the next batch (> 25 s):
    # the three batches' 24 chunks are written then; the next ones are not due before the end.
    assert durable_before_last_batch == [24]
    assert len(vectors_by_id(out)) == 40
    assert report.counts.seen == 40 and report.counts.embedded == 40 and report.counts.deferred == 0
    assert report.shards_done == 1
