"""Readers: every input format, archives with a split and a top folder, bad rows, encodings, errors."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataConfig
from pipeline.data import readers
from pipeline.data.readers import ReadReport, read_documents
from pipeline.data.records import TOO_LARGE, UNPARSABLE, RawDocument, Rejected

# A dataset with its own split under one top folder, plus files that are not documents.
SPLIT_TREE = {
    "corpus/README": b"About this corpus.",
    "corpus/imdb.vocab": b"the\na\n",
    "corpus/train/urls_pos.txt": b"http://example.com\n",
    "corpus/train/pos/0_9.txt": b"A wonderful film.",
    "corpus/train/pos/1_8.txt": b"Loved it.",
    "corpus/train/neg/2_1.txt": b"Dreadful.",
    "corpus/test/pos/3_10.txt": b"Great acting.",
    "corpus/test/neg/4_2.txt": b"Boring plot.",
    "corpus/val/neg/5_3.txt": b"Meh.",
}
SKIPPED = ["corpus/README", "corpus/imdb.vocab", "corpus/train/urls_pos.txt"]
EXPECTED = {  # id -> (split, label, text)
    "train/pos/0_9": ("train", "pos", "A wonderful film."),
    "train/pos/1_8": ("train", "pos", "Loved it."),
    "train/neg/2_1": ("train", "neg", "Dreadful."),
    "test/pos/3_10": ("test", "pos", "Great acting."),
    "test/neg/4_2": ("test", "neg", "Boring plot."),
    "val/neg/5_3": ("validation", "neg", "Meh."),
}


def folder_config(**overrides) -> DataConfig:
    return DataConfig(format="folder", path="unused", **overrides)


def table_config(fmt: str, **overrides) -> DataConfig:
    return DataConfig(format=fmt, path="unused", **overrides)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_all(config: DataConfig, path: Path) -> tuple[list[RawDocument | Rejected], ReadReport]:
    report = ReadReport()
    return list(read_documents(config, path, report)), report


def as_table(records) -> dict[str, tuple[str | None, str | None, str | None]]:
    assert all(isinstance(r, RawDocument) for r in records), records
    return {r.id: (r.split, r.label, r.text) for r in records}


# ------------------------------------------------------------------------- folders


def test_folder_per_class_reads_labels_ids_in_sorted_order(tmp_path):
    root = write_tree(
        tmp_path / "bbc",
        {
            "README.TXT": b"not a document",
            "tech/002.txt": b"Chips get faster.",
            "business/001.txt": b"Markets rise.\n\nShares up.",
            "tech/001.txt": b"New phone.",
            "tech/notes.md": b"skip me",
        },
    )
    records, report = read_all(folder_config(), root)
    assert [r.id for r in records] == ["business/001", "tech/001", "tech/002"]
    assert [r.label for r in records] == ["business", "tech", "tech"]
    assert records[0].text == "Markets rise.\n\nShares up."
    assert records[0].source == f"{root}/business/001.txt"
    assert all(r.split is None and r.decode_errors == 0 for r in records)
    assert sorted(report.skipped_files) == ["README.TXT", "tech/notes.md"]
    assert report.files_read == 3


def test_folder_with_split_and_single_top_folder(tmp_path):
    root = write_tree(tmp_path / "data", SPLIT_TREE)
    records, report = read_all(folder_config(), root)
    assert as_table(records) == EXPECTED
    assert sorted(report.skipped_files) == sorted(SKIPPED)


def make_tar(tmp_path: Path, name: str, mode: str) -> Path:
    archive = tmp_path / name
    with tarfile.open(archive, mode) as tar:
        for member, data in SPLIT_TREE.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.mark.parametrize(("name", "mode"), [("corpus.tar.gz", "w:gz"), ("corpus.tgz", "w:gz"), ("corpus.tar", "w")])
def test_tar_archive_with_split_top_folder_and_skipped_files(tmp_path, name, mode):
    archive = make_tar(tmp_path, name, mode)
    records, report = read_all(folder_config(), archive)
    assert as_table(records) == EXPECTED
    assert sorted(report.skipped_files) == sorted(SKIPPED)
    assert records[0].source == f"{archive}!corpus/train/pos/0_9.txt"
    again, _ = read_all(folder_config(), archive)
    assert [r.id for r in again] == [r.id for r in records]  # deterministic order


def test_zip_archive_with_split_top_folder_and_skipped_files(tmp_path):
    archive = tmp_path / "corpus.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("corpus/", b"")
        for member, data in SPLIT_TREE.items():
            zf.writestr(member, data)
        zf.writestr("__MACOSX/corpus/._README", b"resource fork")
    records, report = read_all(folder_config(), archive)
    assert as_table(records) == EXPECTED
    assert [r.id for r in records] == sorted(EXPECTED)  # zip members are read in sorted order
    assert sorted(report.skipped_files) == sorted([*SKIPPED, "__MACOSX/corpus/._README"])
    assert records[0].source == f"{archive}!corpus/test/neg/4_2.txt"


def test_archive_without_top_folder_and_dev_split(tmp_path):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/a/1.txt", "one")
        zf.writestr("dev/b/2.txt", "two")
    records, _ = read_all(folder_config(), archive)
    assert as_table(records) == {"dev/b/2": ("validation", "b", "two"), "train/a/1": ("train", "a", "one")}


def test_latin1_file_decoded_with_fallback_and_counted(tmp_path):
    root = write_tree(tmp_path / "docs", {"sport/1.txt": "A £15m signing for the café.".encode("latin-1")})
    records, report = read_all(folder_config(), root)
    (doc,) = records
    assert doc.text == "A £15m signing for the café."
    assert doc.decode_errors == 2
    assert report.decode_error_bytes == 2
    assert report.documents_with_decode_errors == 1


def test_undecodable_bytes_without_fallback_are_replaced_and_counted(tmp_path):
    root = write_tree(tmp_path / "docs", {"sport/1.txt": b"ok \xff\xfe end", "sport/2.txt": "fine é".encode()})
    records, report = read_all(folder_config(encoding_fallback=None), root)
    assert records[0].text.startswith("ok \ufffd") and records[0].text.endswith(" end")
    assert records[0].decode_errors == 2
    assert records[1].text == "fine é" and records[1].decode_errors == 0
    assert report.decode_error_bytes == 2


def test_missing_path_names_it_and_hints_at_han_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"data\.path .*nowhere does not exist.*HAN_DATA_DIR"):
        read_documents(folder_config(), missing)  # raised at the call, before iterating


def test_empty_folder_and_unsupported_archive_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no documents found"):
        list(read_documents(folder_config(), tmp_path / "empty"))
    rar = tmp_path / "corpus.rar"
    rar.write_bytes(b"Rar!")
    with pytest.raises(ValueError, match="neither a folder nor a supported archive"):
        read_documents(folder_config(), rar)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        list(read_documents(folder_config(), broken))


def test_unknown_encoding_is_a_config_error(tmp_path):
    root = write_tree(tmp_path / "docs", {"a/1.txt": b"x"})
    with pytest.raises(ValueError, match="data.encoding 'klingon'"):
        read_documents(folder_config(encoding="klingon"), root)


# ------------------------------------------------------------------------- CSV


def test_csv_reads_fields_and_quarantines_malformed_rows(tmp_path):
    file = tmp_path / "docs.csv"
    file.write_bytes(
        b"id,text,label,split\n"
        b'1,"Plain text, with a comma",  sports ,train\n'
        b'2,"A ""quoted"" word\nover two lines",news,test\n'
        b"\n"
        b"3,too,many,fields,here\n"
        b'4,"bad"quote,news,train\n'
        b",no id,,dev\n"
        b"6,caf\xe9,news,\n"
    )
    records, report = read_all(table_config("csv", split_field="split"), file)
    assert len(records) == 6
    one, two, too_many, bad_quote, no_id, latin = records
    assert (one.id, one.text, one.label, one.split) == ("1", "Plain text, with a comma", "sports", "train")
    assert one.source == f"{file}:row 1 (line 2)"
    assert (two.text, two.split) == ('A "quoted" word\nover two lines', "test")
    assert isinstance(too_many, Rejected) and too_many.reason == UNPARSABLE
    assert too_many.source == f"{file}:row 3 (line 6)"
    assert "expected 4 fields" in too_many.detail and "found 5" in too_many.detail
    assert isinstance(bad_quote, Rejected) and bad_quote.reason == UNPARSABLE
    assert "line 7" in bad_quote.detail and "malformed CSV" in bad_quote.detail
    assert (no_id.id, no_id.label, no_id.split) == (None, None, "validation")
    assert (latin.text, latin.decode_errors, latin.split) == ("café", 1, None)
    assert report.blank_lines == 1
    assert report.decode_error_bytes == 1


def test_csv_missing_text_column_is_a_config_error(tmp_path):
    file = tmp_path / "docs.csv"
    file.write_text("id,body,label\n1,hello,a\n")
    with pytest.raises(ValueError, match=r"docs\.csv: data\.text_field is 'text'.*'id', 'body', 'label'"):
        list(read_documents(table_config("csv"), file))


def test_csv_field_over_the_parser_limit_is_too_large(tmp_path, monkeypatch):
    file = tmp_path / "docs.csv"
    file.write_text('id,text,label\n1,"' + "x" * 200_000 + '",a\n2,short,b\n')
    records, _ = read_all(table_config("csv", max_chars=10), file)
    assert isinstance(records[0], Rejected) and records[0].reason == TOO_LARGE
    assert "data.max_chars" in records[0].detail
    assert records[1].text == "short"
    records, _ = read_all(table_config("csv", max_chars=300_000), file)
    assert len(records[0].text) == 200_000  # a long field within data.max_chars is read, not refused


def test_csv_bom_is_not_part_of_the_first_column(tmp_path):
    file = tmp_path / "docs.csv"
    file.write_bytes("\ufeffid,text,label\n1,hello,a\n".encode())
    (doc,) = list(read_documents(table_config("csv"), file))
    assert (doc.id, doc.text, doc.label) == ("1", "hello", "a")


def test_folder_of_csv_files_is_read_in_sorted_order(tmp_path):
    root = tmp_path / "parts"
    root.mkdir()
    (root / "b.csv").write_text("id,text,label\n3,three,x\n")
    (root / "a.csv").write_text("id,text,label\n1,one,x\n2,two,y\n")
    (root / "notes.txt").write_text("not a table")
    records, report = read_all(table_config("csv"), root)
    assert [r.id for r in records] == ["1", "2", "3"]
    assert report.skipped_files == ["notes.txt"]
    assert report.files_read == 2


def test_reader_is_lazy(tmp_path):
    file = tmp_path / "docs.csv"
    file.write_text("id,text,label\n1,one,x\n2,two,y\n")
    stream = read_documents(table_config("csv"), file)
    assert not isinstance(stream, list)
    assert next(stream).id == "1"


# ------------------------------------------------------------------------- JSONL


def test_jsonl_reads_objects_and_quarantines_broken_lines(tmp_path):
    file = tmp_path / "docs.jsonl"
    file.write_text(
        "\n".join(
            [
                json.dumps({"id": 1, "text": "First.", "label": 0, "part": "train"}),
                "",
                '{"id": 2, "text": "unterminated',
                json.dumps(["a", "list"]),
                "   ",
                json.dumps({"id": "4", "text": "Fourth.", "label": " neg "}),
                json.dumps({"id": "5", "text": ["not", "text"], "label": "neg"}),
                json.dumps({"id": "6", "text": "Sixth.", "label": "neg", "part": "holdout"}),
            ]
        )
        + "\n"
    )
    records, report = read_all(table_config("jsonl", split_field="part"), file)
    first, broken, not_object, fourth, list_text, bad_split = records
    assert (first.id, first.text, first.label, first.split) == ("1", "First.", "0", "train")
    assert first.source == f"{file}:line 1"
    assert broken.reason == UNPARSABLE and broken.source == f"{file}:line 3"
    assert broken.detail.startswith("line 3: invalid JSON")
    assert not_object.reason == UNPARSABLE and "expected a JSON object, found list" in not_object.detail
    assert (fourth.label, fourth.split) == ("neg", None)
    assert list_text.reason == UNPARSABLE and "data.text_field" in list_text.detail and list_text.id == "5"
    assert bad_split.reason == UNPARSABLE and "'holdout'" in bad_split.detail
    assert report.blank_lines == 2


def test_jsonl_latin1_line_uses_fallback(tmp_path):
    file = tmp_path / "docs.jsonl"
    file.write_bytes(b'{"id": "1", "text": "na\xefve", "label": "a"}\n{"id": "2", "text": "ok", "label": "a"}\n')
    records, report = read_all(table_config("jsonl"), file)
    assert (records[0].text, records[0].decode_errors) == ("naïve", 1)
    assert records[1].decode_errors == 0
    assert report.decode_error_bytes == 1


def test_jsonl_rejects_line_unsafe_encoding(tmp_path):
    file = tmp_path / "docs.jsonl"
    file.write_text('{"text": "x"}\n', encoding="utf-16")
    with pytest.raises(ValueError, match="convert it to UTF-8"):
        list(read_documents(table_config("jsonl", encoding="utf-16"), file))


# ------------------------------------------------------------------------- Parquet


def test_parquet_reads_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 2)
    file = tmp_path / "docs.parquet"
    table = pa.table(
        {
            "doc": ["d1", "d2", "d3", None, "d5"],
            "body": ["one", "two", None, "four", "five"],
            "topic": ["a", "b", "a", "", "c"],
            "extra": [1, 2, 3, 4, 5],
        }
    )
    pq.write_table(table, file)
    config = table_config("parquet", text_field="body", label_field="topic", id_field="doc")
    records, _ = read_all(config, file)
    assert [(r.id, r.text, r.label) for r in records] == [
        ("d1", "one", "a"),
        ("d2", "two", "b"),
        ("d3", None, "a"),
        (None, "four", None),
        ("d5", "five", "c"),
    ]
    assert records[4].source == f"{file}:row 5"


def test_parquet_missing_text_column_is_a_config_error(tmp_path):
    file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["x"]}), file)
    with pytest.raises(ValueError, match=r"data\.text_field is 'text'.*'body'"):
        list(read_documents(table_config("parquet"), file))
