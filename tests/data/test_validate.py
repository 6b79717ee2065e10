"""Validation: every quarantine reason, its order, exact accounting, and the quarantine file."""

from __future__ import annotations

import json

from pipeline.config import DataConfig
from pipeline.data.readers import read_documents
from pipeline.data.records import (
    DUPLICATE_ID,
    EMPTY_TEXT,
    MISSING_LABEL,
    TOO_LARGE,
    UNKNOWN_LABEL,
    UNPARSABLE,
    RawDocument,
    Rejected,
)
from pipeline.data.validate import write_quarantine
from tests.data.validating import validate_documents

MAX_CHARS = 50


def doc(id, text="Some text.", label="a", source=None) -> RawDocument:
    return RawDocument(id=id, text=text, label=label, source=source or f"docs.csv:row {id}")


BAD_RECORDS = [
    doc("1"),
    Rejected("docs.csv:row 2 (line 3)", UNPARSABLE, "line 3: expected 3 fields as in the header, found 4"),
    doc("3", text=None),
    doc("4", text=""),
    doc("5", text=" \n\t "),
    doc("6", text="x" * (MAX_CHARS + 1)),
    doc("7", label=None),
    doc("8", label="zebra"),
    doc("1", source="docs.csv:row 9"),  # duplicate of the first
    doc(None, source="docs.csv:row 10"),
    doc("11", text="x" * MAX_CHARS, label="b"),  # exactly at the limit: kept
    doc("12", text=None, label=None),  # breaks two rules: the first one counts
]


def test_every_reason_is_counted_exactly():
    result = validate_documents(BAD_RECORDS, allowed_labels=["a", "b"], max_chars=MAX_CHARS)
    counts = result.counts()
    assert counts == {
        "input": 12,
        "kept": 3,
        "quarantined": 9,
        "by_reason": {
            DUPLICATE_ID: 1,
            EMPTY_TEXT: 4,
            MISSING_LABEL: 1,
            TOO_LARGE: 1,
            UNKNOWN_LABEL: 1,
            UNPARSABLE: 1,
        },
    }
    assert counts["input"] == counts["kept"] + counts["quarantined"]
    assert [d.id for d in result.kept] == ["1", "docs.csv:row 10", "11"]
    assert result.labels == ["a", "b"]


def test_rejections_say_where_and_why():
    result = validate_documents(BAD_RECORDS, allowed_labels=["a", "b"], max_chars=MAX_CHARS)
    by_id = {r.id: r for r in result.quarantined}
    assert by_id["3"].source == "docs.csv:row 3" and by_id["3"].label == "a"
    assert "51 characters" in by_id["6"].detail and "50" in by_id["6"].detail
    assert "data.max_chars" in by_id["6"].detail
    assert by_id["8"].reason == UNKNOWN_LABEL and "'zebra'" in by_id["8"].detail and "a, b" in by_id["8"].detail
    assert by_id["1"].reason == DUPLICATE_ID and by_id["1"].source == "docs.csv:row 9"
    assert "docs.csv:row 1" in by_id["1"].detail  # names the first occurrence, which is kept
    assert by_id["12"].reason == EMPTY_TEXT and by_id["12"].label is None
    assert all(r.detail for r in result.quarantined)


def test_without_allowed_labels_any_label_is_kept():
    records = [doc("1", label="a"), doc("2", label="zebra")]
    result = validate_documents(records, allowed_labels=None, max_chars=MAX_CHARS)
    assert result.labels == ["a", "zebra"]
    assert result.counts()["quarantined"] == 0


def test_id_from_source_also_catches_duplicates():
    records = [doc(None, source="a.txt"), doc(None, source="a.txt")]
    result = validate_documents(records, allowed_labels=None, max_chars=MAX_CHARS)
    assert [d.id for d in result.kept] == ["a.txt"]
    assert [r.reason for r in result.quarantined] == [DUPLICATE_ID]


def test_quarantined_document_does_not_claim_its_id():
    records = [doc("1", text=""), doc("1")]
    result = validate_documents(records, allowed_labels=None, max_chars=MAX_CHARS)
    assert [d.source for d in result.kept] == ["docs.csv:row 1"]
    assert [r.reason for r in result.quarantined] == [EMPTY_TEXT]


def test_write_quarantine_round_trips(tmp_path):
    result = validate_documents(BAD_RECORDS, allowed_labels=["a", "b"], max_chars=MAX_CHARS)
    path = tmp_path / "stage" / "quarantine.jsonl"
    assert write_quarantine(path, result.quarantined) == 9
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json() for r in result.quarantined]
    assert write_quarantine(tmp_path / "none.jsonl", []) == 0
    assert (tmp_path / "none.jsonl").read_text() == ""


def test_csv_end_to_end_accounting(tmp_path):
    file = tmp_path / "docs.csv"
    file.write_text(
        "id,text,label\n"
        "1,Good text.,a\n"
        '2,"broken"quote,a\n'
        "3,,a\n"
        "4,Unlabelled.,\n"
        "5,Wrong label.,c\n"
        "1,Again.,a\n"
        "7,extra,a,field\n"
        "8,Fine too.,b\n"
    )
    config = DataConfig(format="csv", path=str(file), labels=["a", "b"])
    result = validate_documents(read_documents(config, file), config.labels, config.max_chars)
    assert result.counts() == {
        "input": 8,
        "kept": 2,
        "quarantined": 6,
        "by_reason": {DUPLICATE_ID: 1, EMPTY_TEXT: 1, MISSING_LABEL: 1, UNKNOWN_LABEL: 1, UNPARSABLE: 2},
    }
    sources = {r.reason: r.source for r in result.quarantined if r.reason != UNPARSABLE}
    assert sources[MISSING_LABEL] == f"{file}:row 4 (line 5)"
