"""The readers on the real datasets in ../shared/data: exact document and class counts."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.config import DataConfig
from pipeline.data.readers import ReadReport, read_documents
from pipeline.data.records import RawDocument
from tests.data.validating import validate_documents

pytestmark = pytest.mark.real_data

BBC_CLASSES = {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}


def test_bbc_folder_reads_every_article(shared_data):
    path = shared_data / "bbc"
    report = ReadReport()
    records = list(read_documents(DataConfig(format="folder", path=str(path)), path, report))
    assert len(records) == 2225
    assert all(isinstance(r, RawDocument) for r in records)
    result = validate_documents(records, allowed_labels=sorted(BBC_CLASSES), max_chars=1_000_000)
    assert result.counts() == {"input": 2225, "kept": 2225, "quarantined": 0, "by_reason": {}}
    assert Counter(d.label for d in result.kept) == BBC_CLASSES
    assert result.labels == sorted(BBC_CLASSES)
    assert {d.split for d in result.kept} == {None}
    assert report.skipped_files == ["README.TXT"]
    # One article (sport/199, "£15.8m") is latin-1, not UTF-8: read via the fallback.
    assert report.documents_with_decode_errors == 1
    (latin1,) = [d for d in result.kept if d.decode_errors]
    assert latin1.id == "sport/199" and "£15.8m" in latin1.text


def test_imdb_archive_reads_both_splits(shared_data):
    path = shared_data / "aclImdb.tar.gz"
    report = ReadReport()
    records = read_documents(DataConfig(format="folder", path=str(path)), path, report)
    result = validate_documents(records, allowed_labels=["neg", "pos"], max_chars=1_000_000)
    assert result.counts() == {"input": 50_000, "kept": 50_000, "quarantined": 0, "by_reason": {}}
    assert Counter((d.split, d.label) for d in result.kept) == {
        ("train", "pos"): 12_500,
        ("train", "neg"): 12_500,
        ("test", "pos"): 12_500,
        ("test", "neg"): 12_500,
    }
    assert sorted(report.skipped_files) == ["aclImdb/README", "aclImdb/imdb.vocab"]
    assert report.decode_error_bytes == 0
    first = result.kept[0]
    assert first.source.startswith(f"{path}!aclImdb/") and first.id.count("/") == 2
