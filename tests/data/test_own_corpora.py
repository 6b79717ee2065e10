"""Public corpora as they are shipped (issue #32): documents without a file extension, a file or folder
per split, which split values mean what, and mail headers that are not the document."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.readers import ReadReport, read_corpus, read_documents
from pipeline.data.records import RawDocument, Rejected
from pipeline.data.text import LineFilter, TextProcessor
from pipeline.stages import preprocess
from pipeline.stages.preprocess import PreprocessError

TOPICS = {
    "sci.space": ["The rocket reached orbit after the launch.", "The shuttle crew repaired the telescope."],
    "rec.autos": ["The engine needs new spark plugs.", "The brakes squeal when the car stops."],
}
FILLER = ["Thanks in advance for any help.", "Has anyone seen this before?"]


def post(label: str, n: int) -> str:
    """A news post as 20 Newsgroups ships it: a header block, a blank line, the body."""
    host = "orbit.example.edu" if label == "sci.space" else "garage.example.com"
    header = (f"From: user{n}@{host}\nSubject: Re: question {n}\nOrganization: {label} fans\n"
              f"NNTP-Posting-Host: {host}\nLines: 3\n")
    body = f"{TOPICS[label][n % 2]} {FILLER[n % 2]}\nIn article {n} somebody wrote:\n> quoted text here"
    return header + "\n" + body + "\n"


def newsgroups(root: Path, train: int = 8, test: int = 3) -> Path:
    """``20news-bydate-{train,test}/<label>/<number>``: no file extension anywhere."""
    n = 0
    for split, count in (("train", train), ("test", test)):
        for label in TOPICS:
            for _ in range(count):
                n += 1
                path = root / f"20news-bydate-{split}" / label / str(50_000 + n)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(post(label, n), encoding="utf-8")
    return root


def run(*overrides: str):
    return preprocess.run(load_config(overrides=["preprocess.vocab.min_count=1", *overrides]))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stats_of(result) -> dict:
    return json.loads((result.output_dir / "stats.json").read_text())


# ------------------------------------------------------------------ documents without an extension


def test_folder_corpus_without_extensions_and_suffixed_split_folders(tmp_path):
    root = newsgroups(tmp_path / "20news-bydate")
    (root / "20news-bydate-train" / "sci.space" / "README").write_text("about this group")
    (root / "20news-bydate-train" / "rec.autos" / "LICENSE.txt").write_text("terms")
    (root / "20news-bydate-train" / "rec.autos" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    report = ReadReport()
    records = list(read_documents(load_config(overrides=["data.format=folder", f"data.path={root}"]).data, root, report))
    assert len(records) == 22 and all(isinstance(r, RawDocument) for r in records)
    assert {r.split for r in records} == {"train", "test"}
    assert {r.label for r in records} == set(TOPICS)
    first = records[0]
    assert first.id == "20news-bydate-test/rec.autos/50020" and first.text.startswith("From: user20@")
    assert sorted(report.skipped_files) == ["20news-bydate-train/rec.autos/LICENSE.txt",
                                            "20news-bydate-train/rec.autos/photo.jpg",
                                            "20news-bydate-train/sci.space/README"]
    assert report.split_values == {"20news-bydate-test": "test", "20news-bydate-train": "train"}


def test_file_pattern_chooses_the_documents(tmp_path):
    root = tmp_path / "notes"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        (root / label / "1.md").write_text(f"note {label}")
        (root / label / "2").write_text(f"no extension {label}")
    config = load_config(overrides=["data.format=folder", f"data.path={root}", "data.file_pattern=['*.MD']"])
    report = ReadReport()
    records = list(read_documents(config.data, root, report))
    assert [r.id for r in records] == ["a/1.md", "b/1.md"]
    assert sorted(report.skipped_files) == ["a/2", "b/2"]
    with pytest.raises(ValueError, match=r"no documents found.*data\.file_pattern \(\*\.rst\)"):
        list(read_documents(config.data.model_copy(update={"file_pattern": "*.rst"}), root))


# ------------------------------------------------------------------ a file or folder per split


def write_csv(path: Path, rows: int, start: int = 0) -> Path:
    """id numbered from 0 in every file, as split files often are."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            label = ["sport", "tech"][i % 2]
            text = ["The team won the match late. Fans cheered.", "The new phone has a faster chip. It ships soon."][i % 2]
            writer.writerow([i, f"{text} Story {start + i}.", label])
    return path


def test_csv_dataset_in_two_files(tmp_path):
    train, test = write_csv(tmp_path / "train.csv", 40), write_csv(tmp_path / "test.csv", 10, start=100)
    result = run("name=two-files", "data.format=csv", f"data.path={{train: {train}, test: {test}}}")
    stats = stats_of(result)
    assert stats["documents"] == {"train": 36, "validation": 4, "test": 10}  # validation carved from train
    assert stats["split_source"] == "dataset"
    test_rows = read_jsonl(result.output_dir / "test.documents.jsonl")
    # ids restart at 0 in each file: the split prefix keeps them apart (no duplicate_id)
    assert [row["id"] for row in test_rows][:2] == ["test/0", "test/1"]
    assert all(row["source"].startswith(f"{test}:row") for row in test_rows)
    assert result.manifest["counts"] == {"input": 50, "kept": 50, "quarantined": 0, "by_reason": {}}
    assert set(result.manifest["inputs"]) == {str(train), str(test)}

    # The fingerprint covers every path: a changed test file is read again, not taken from the cache.
    assert run("name=two-files", "data.format=csv", f"data.path={{train: {train}, test: {test}}}").skipped
    write_csv(test, 12, start=100)
    again = run("name=two-files", "data.format=csv", f"data.path={{train: {train}, test: {test}}}")
    assert not again.skipped and stats_of(again)["documents"]["test"] == 12


def test_a_folder_per_split_and_a_missing_test_split_carved_from_train(tmp_path):
    root = newsgroups(tmp_path / "ng")
    result = run("name=per-split-folders", "data.format=folder",
                 f"data.path={{train: {root / '20news-bydate-train'}, validation: {root / '20news-bydate-test'}}}")
    stats = stats_of(result)
    # train (16) gives up test by preprocess.split.test (0.2 of each label); validation is the given folder
    assert stats["documents"] == {"train": 12, "validation": 6, "test": 4}
    ids = [row["id"] for row in read_jsonl(result.output_dir / "validation.documents.jsonl")]
    assert all(i.startswith("validation/") for i in ids)


def test_a_split_per_path_is_checked_before_reading(tmp_path):
    train = write_csv(tmp_path / "train.csv", 4)
    config = load_config(overrides=["data.format=csv", f"data.path={{train: {train}, test: {tmp_path / 'nope.csv'}}}"])
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        read_corpus(config.data, config.resolved_data_paths())
    with pytest.raises(PreprocessError, match=r"data\.path\.test .*nope\.csv.* does not exist"):
        preprocess.run(config)


def test_a_path_per_split_needs_a_train_path():
    with pytest.raises(ConfigError, match=r"a path per split needs a train path"):
        load_config(overrides=["data.format=csv", "data.path={test: b.csv}"])


def test_split_field_and_a_path_per_split_do_not_mix():
    with pytest.raises(ConfigError, match=r"data\.split_field \('split'\) and a data\.path per split"):
        load_config(overrides=["data.format=csv", "data.path={train: a.csv}", "data.split_field=split"])


# ------------------------------------------------------------------ which split values mean what


def write_split_jsonl(path: Path, splits: list[str]) -> Path:
    rows = []
    for i, split in enumerate(splits):
        label = ["sport", "tech"][i % 2]
        text = ["The team won the match late.", "The new phone has a faster chip."][i % 2]
        rows.append(json.dumps({"id": f"d{i}", "text": f"{text} Story {i}.", "label": label, "split": split}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_split_values_are_explicit_and_reported(tmp_path):
    data = write_split_jsonl(tmp_path / "d.jsonl", ["train"] * 20 + ["Dev"] * 4 + ["holdout"] * 4 + ["test"] * 4)
    base = ["data.format=jsonl", f"data.path={data}", "data.split_field=split", "preprocess.max_quarantine_fraction=0.5"]
    result = run("name=split-values", *base)
    stats = stats_of(result)
    assert stats["split_values"] == {"Dev": "validation", "test": "test", "train": "train"}
    assert stats["documents"] == {"train": 20, "validation": 4, "test": 4}
    (line, *_) = read_jsonl(result.output_dir / "quarantine.jsonl")
    assert line["reason"] == "unparsable" and "'holdout', not a split value" in line["detail"]
    assert "validation: validation, valid, val, dev" in line["detail"] and "data.split_values" in line["detail"]

    # data.split_values says what a value means; the splits left out keep their defaults
    result = run("name=split-values", *base, "data.split_values={validation: [holdout], test: [test, dev]}")
    stats = stats_of(result)
    assert stats["split_values"] == {"Dev": "test", "holdout": "validation", "test": "test", "train": "train"}
    assert stats["documents"] == {"train": 20, "validation": 4, "test": 8}


def test_empty_training_split_advice_fits_who_split_the_data(tmp_path):
    data = write_split_jsonl(tmp_path / "d.jsonl", ["dev"] * 6 + ["test"] * 6)
    with pytest.raises(PreprocessError) as caught:
        run("name=no-train", "data.format=jsonl", f"data.path={data}", "data.split_field=split")
    message = str(caught.value)
    assert "data.split_field 'split' decides the split" in message and "fractions are not used" in message
    assert "'dev' = validation, 'test' = test" in message and "data.split_values.train" in message

    empty = tmp_path / "train.csv"
    empty.write_text("id,text,label\n", encoding="utf-8")
    test = write_csv(tmp_path / "test.csv", 6)
    with pytest.raises(PreprocessError, match=r"data\.path\.train \(.*train\.csv\) holds no usable document"):
        run("name=no-train-file", "data.format=csv", f"data.path={{train: {empty}, test: {test}}}")


# ------------------------------------------------------------------ text that is not the document


def test_line_filter_drops_a_header_block_and_matching_lines():
    text = post("sci.space", 1)
    kept, lines, characters = LineFilter(drop_header=True, patterns=[r"^>", r"wrote:$"]).apply(text)
    assert kept.strip() == "The shuttle crew repaired the telescope. Has anyone seen this before?"
    assert lines == 7 and characters == sum(map(len, text.split("\n"))) - len(kept.strip())
    # A first paragraph that is not all fields is text: nothing dropped.
    prose = "Note: the launch slipped.\nIt is now in May.\n\nMore news."
    assert LineFilter(drop_header=True).apply(prose) == (prose, 0, 0)
    assert LineFilter().apply(text) == (text, 0, 0)


def test_headers_are_gone_from_documents_vocabulary_and_the_served_processor(tmp_path):
    root = newsgroups(tmp_path / "ng")
    result = run("name=headers", "data.format=folder", f"data.path={root}", "preprocess.drop_header=true",
                 r"preprocess.drop_lines=['^>', 'wrote:\s*$']")
    out = result.output_dir
    rows = read_jsonl(out / "test.documents.jsonl")
    text = json.dumps(rows)
    for gone in ("From:", "Subject", "example.edu", "NNTP", "quoted text", "wrote"):
        assert gone not in text, gone
    vocab = set(json.loads((out / "vocab.json").read_text())["tokens"])
    assert not vocab & {"from", "subject", "organization", "lines", "orbit.example.edu", "quoted", "wrote"}
    assert {"rocket", "engine"} <= vocab
    line_filter = LineFilter(drop_header=True, patterns=[r"^>", r"wrote:\s*$"])
    characters = sum(line_filter.apply(path.read_text())[2] for path in root.rglob("5*"))
    assert stats_of(result)["dropped"] == {"documents": 22, "lines": 22 * 7, "characters": characters}
    # The saved processor drops the same lines from a served text.
    processor = TextProcessor.load(out / "text_processor.json")
    assert processor.process(post("rec.autos", 3)) == processor.process("The brakes squeal when the car stops. "
                                                                        "Has anyone seen this before?")


def test_without_the_option_the_header_is_what_the_model_reads(tmp_path):
    root = newsgroups(tmp_path / "ng", train=4, test=2)
    result = run("name=kept-headers", "data.format=folder", f"data.path={root}")
    assert "orbit.example.edu" in json.loads((result.output_dir / "vocab.json").read_text())["tokens"]
    assert stats_of(result)["dropped"] == {"documents": 0, "lines": 0, "characters": 0}


def test_rejected_records_under_a_split_path_carry_the_split_in_their_id(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"id": "1", "text": 5, "label": "a"}\n', encoding="utf-8")
    config = load_config(overrides=["data.format=jsonl", f"data.path={{train: {train}}}"])
    (record,) = list(read_corpus(config.data, config.resolved_data_paths()))
    assert isinstance(record, Rejected) and record.id == "train/1"


def test_the_readme_data_examples_are_valid_configs(monkeypatch, tmp_path):
    from pipeline.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Data formats"):readme.index("### Quarantine")]
    blocks = section.split("```yaml\n")[1:]
    assert len(blocks) == 3
    monkeypatch.setenv("HAN_DATA_DIR", str(tmp_path))
    for block in blocks:
        path = tmp_path / "example.yaml"
        path.write_text(block.split("```")[0], encoding="utf-8")
        if "data:" not in block:  # the preprocess block alone
            path.write_text("data: {format: folder, path: x}\n" + block.split("```")[0], encoding="utf-8")
        config = load_config(path)
        assert config.data.format in ("folder", "csv")
    assert config.preprocess.drop_header and LineFilter(False, config.preprocess.drop_lines).apply(
        "> quoted\nJohn wrote:\nthe text") == ("the text", 2, 19)


# ------------------------------------------------------------------ init-config on such corpora


def init_config(capsys, *args: str) -> tuple[int, str]:
    from pipeline.__main__ import main

    code = main(["init-config", *args])
    return code, capsys.readouterr().out


def test_init_config_writes_a_path_per_split_for_split_named_files(tmp_path, capsys):
    folder = tmp_path / "reviews"
    folder.mkdir()
    write_csv(folder / "train.csv", 30), write_csv(folder / "test.csv", 10)
    code, printed = init_config(capsys, str(folder), "--output", str(tmp_path / "reviews.yaml"))
    assert code == 0, printed
    assert "splits      a file per split: train = train.csv, test = test.csv" in printed
    config = load_config(tmp_path / "reviews.yaml")
    assert config.data.path == {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}
    assert config.data.split_field is None
    stats = stats_of(preprocess.run(config))
    assert stats["documents"] == {"train": 26, "validation": 4, "test": 10}

    # One of them given alone: a note says the others are there.
    code, printed = init_config(capsys, str(folder / "train.csv"), "--output", str(tmp_path / "one.yaml"))
    assert code == 0 and "train.csv, test.csv lie side by side, a file per split: give the folder" in printed


def test_init_config_reads_documents_without_extensions_and_drops_mail_headers(tmp_path, capsys):
    root = newsgroups(tmp_path / "ng", train=4, test=2)
    code, printed = init_config(capsys, str(root), "--output", str(tmp_path / "ng.yaml"))
    assert code == 0, printed
    assert "format      folder (12 documents in class folders" in printed
    assert "splits      train 8, test 4" in printed
    assert "12 of 12 sampled texts start with a mail/news header" in printed
    config = load_config(tmp_path / "ng.yaml")
    assert config.preprocess.drop_header is True
