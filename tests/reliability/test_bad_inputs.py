"""The bad-input table (docs/bad-inputs.md), row by row, as a user meets each row: through the CLI.

Every test carries ``@pytest.mark.bad_input("Bnn")``, the row it proves; the serving rows live
beside the real server in ``tests/dag/test_rest.py``. ``test_the_readme_table_and_the_tests_agree``
keeps the table's rows and the marked tests one to one. Where a row is a quarantine, the test
also checks the accounting: every input is kept or quarantined, and the quarantine line says
where (file and line or row) and why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from tests.stages.conftest import set_args

GOOD = [{"id": f"{label}{i}", "text": f"{word} story number {i}. The {word.lower()}s grow well in spring.",
         "label": label} for label, word in (("a", "Apple"), ("b", "Boat")) for i in range(12)]


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def jsonl(path: Path, rows: list, extra_lines: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines),
                    encoding="utf-8")
    return path


def class_folders(folder: Path) -> Path:
    """The good documents as one folder per class (``data.format: folder``)."""
    for row in GOOD:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{row['id']}.txt").write_text(row["text"], encoding="utf-8")
    return folder


def preprocess(capsys, name: str, data: Path, fmt: str, *overrides: str) -> tuple[int, str]:
    settings = [f"name={name}", f"data.format={fmt}", f"data.path={data}", "preprocess.max_quarantine_fraction=0.5",
                "preprocess.vocab.min_count=1", *overrides]
    return cli(capsys, "preprocess", *set_args(settings))


def quarantined(env: Path, name: str, count_in: int, kept: int) -> list[dict]:
    """The quarantine lines, after checking that input = kept + quarantined."""
    out = env / "artifacts" / name / "preprocess"
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["input"] == count_in and counts["kept"] == kept
    assert counts["input"] == counts["kept"] + counts["quarantined"]
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


def one_quarantined(env, capsys, name: str, bad: dict | str, reason: str, fmt: str = "jsonl") -> dict:
    data = jsonl(env / f"{name}.jsonl", GOOD, [bad if isinstance(bad, str) else json.dumps(bad)])
    code, out = preprocess(capsys, name, data, fmt)
    assert code == 0, out
    assert f"{len(GOOD) + 1} input = {len(GOOD)} kept + 1 quarantined" in out
    (line,) = quarantined(env, name, len(GOOD) + 1, len(GOOD))
    assert line["reason"] == reason and line["detail"]
    assert line["source"] == f"{data}:line {len(GOOD) + 1}"
    return line


# ----------------------------------------------------------------------------- readers and data


@pytest.mark.bad_input("B01")
def test_empty_document(env, capsys):
    one_quarantined(env, capsys, "b01", {"id": "x", "text": "", "label": "a"}, "empty_text")


@pytest.mark.bad_input("B02")
def test_whitespace_only_document(env, capsys):
    one_quarantined(env, capsys, "b02", {"id": "x", "text": " \n\t\u00a0 ", "label": "a"}, "empty_text")


@pytest.mark.bad_input("B03")
def test_document_without_words(env, capsys):
    one_quarantined(env, capsys, "b03", {"id": "x", "text": "... !!! ???", "label": "a"}, "no_tokens")


def kept_with_one_decode_error(env: Path, name: str) -> str:
    """Every document kept, one decode error counted in stats.json; the kept documents' text."""
    assert quarantined(env, name, len(GOOD) + 1, len(GOOD) + 1) == []
    prep = env / "artifacts" / name / "preprocess"
    stats = json.loads((prep / "stats.json").read_text())
    assert stats["decode_error_bytes"] == 1 and stats["documents_with_decode_errors"] == 1
    return "".join((prep / f"{split}.documents.jsonl").read_text() for split in ("train", "validation", "test"))


@pytest.mark.bad_input("B04")
def test_non_utf8_file_is_decoded_with_the_fallback_and_counted(env, capsys):
    folder = class_folders(env / "b04")
    (folder / "a" / "latin.txt").write_bytes("Caf\u00e9 story. The apples grow in spring.".encode("latin-1"))
    code, out = preprocess(capsys, "b04", folder, "folder")
    assert code == 0, out
    texts = kept_with_one_decode_error(env, "b04")
    assert "Café story." in texts  # decoded as latin-1, not mangled


@pytest.mark.bad_input("B43")
def test_lone_surrogate_escape_in_json_text_is_replaced_and_counted(env, capsys):
    # Valid JSON, but "\ud800" alone is no character: no UTF-8 file can hold it.
    data = jsonl(env / "b43.jsonl", GOOD, ['{"id": "s1", "text": "Apple st\\ud800ory. The apples grow well.", "label": "a"}'])
    code, out = preprocess(capsys, "b43", data, "jsonl")
    assert code == 0, out
    texts = kept_with_one_decode_error(env, "b43")
    assert "Apple st\ufffdory." in texts


@pytest.mark.bad_input("B05")
def test_binary_file_among_the_documents(env, capsys):
    folder = class_folders(env / "b05")
    (folder / "a" / "scan.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    code, out = preprocess(capsys, "b05", folder, "folder")
    assert code == 0, out
    (line,) = quarantined(env, "b05", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "unparsable" and "binary content" in line["detail"]
    assert line["source"] == f"{folder}/a/scan.txt"


@pytest.mark.bad_input("B06")
def test_files_that_are_not_documents_are_skipped_and_listed(env, capsys):
    folder = class_folders(env / "b06")
    (folder / "README.md").write_text("about this corpus")
    (folder / "a" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    code, out = preprocess(capsys, "b06", folder, "folder")
    assert code == 0, out
    assert quarantined(env, "b06", len(GOOD), len(GOOD)) == []
    skipped = json.loads((env / "artifacts" / "b06" / "preprocess" / "skipped_files.json").read_text())
    assert sorted(skipped) == ["README.md", "a/photo.jpg"]


@pytest.mark.bad_input("B07")
def test_missing_label(env, capsys):
    one_quarantined(env, capsys, "b07", {"id": "x", "text": "A story. It has no label.", "label": ""}, "missing_label")


@pytest.mark.bad_input("B08")
def test_unknown_label(env, capsys):
    data = jsonl(env / "b08.jsonl", GOOD, [json.dumps({"id": "x", "text": "A story. About cars.", "label": "c"})])
    code, out = preprocess(capsys, "b08", data, "jsonl", "data.labels=[a, b]")
    assert code == 0, out
    (line,) = quarantined(env, "b08", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "unknown_label" and "'c'" in line["detail"]


@pytest.mark.bad_input("B09")
def test_two_labels_for_one_document(env, capsys):
    line = one_quarantined(env, capsys, "b09", {"id": "x", "text": "A story. Two labels.", "label": ["a", "b"]},
                           "unparsable")
    assert "holds a list" in line["detail"]


def _csv(path: Path, bad_lines: list[str]) -> Path:
    rows = [f'{r["id"]},"{r["text"]}",{r["label"]}' for r in GOOD]
    path.write_text("id,text,label\n" + "\n".join(rows[:12] + bad_lines + rows[12:]) + "\n", encoding="utf-8")
    return path


@pytest.mark.bad_input("B10")
def test_malformed_csv_quoting(env, capsys):
    data = _csv(env / "b10.csv", ['x1,"a quote "inside" the field",a'])
    code, out = preprocess(capsys, "b10", data, "csv")
    assert code == 0, out
    (line,) = quarantined(env, "b10", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "unparsable" and line["source"].startswith(f"{data}:")


@pytest.mark.bad_input("B11")
def test_csv_row_with_extra_fields(env, capsys):
    data = _csv(env / "b11.csv", ['x1,"A story. Fine text.",a,surplus'])
    code, out = preprocess(capsys, "b11", data, "csv")
    assert code == 0, out
    (line,) = quarantined(env, "b11", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "unparsable" and "expected 3 fields as in the header, found 4" in line["detail"]


@pytest.mark.bad_input("B12")
def test_broken_jsonl_line(env, capsys):
    line = one_quarantined(env, capsys, "b12", '{"id": "x", "text": "unclosed', "unparsable")
    assert "JSON" in line["detail"]


@pytest.mark.bad_input("B13")
def test_a_one_million_word_document(env, capsys):
    line = one_quarantined(env, capsys, "b13", {"id": "x", "text": "word " * 1_000_000, "label": "a"}, "too_large")
    assert "5,000,000 characters" in line["detail"] and "data.max_chars" in line["detail"]


@pytest.mark.bad_input("B14")
def test_duplicate_ids(env, capsys):
    line = one_quarantined(env, capsys, "b14", {"id": "a3", "text": "Another story. Same id.", "label": "b"},
                           "duplicate_id")
    assert line["id"] == "a3" and "line 4" in line["detail"]  # names the record that kept the id


@pytest.mark.bad_input("B15")
def test_zero_documents(env, capsys):
    data = env / "b15.csv"
    data.write_text("id,text,label\n")
    code, out = preprocess(capsys, "b15", data, "csv")
    assert code == 2
    assert f"no documents in {data}" in out and "the input is empty" in out


@pytest.mark.bad_input("B16")
def test_a_single_class(env, capsys):
    data = jsonl(env / "b16.jsonl", [r for r in GOOD if r["label"] == "a"])
    code, out = preprocess(capsys, "b16", data, "jsonl")
    assert code == 2 and "only one label ('a')" in out and "at least two" in out


@pytest.mark.bad_input("B17")
def test_every_document_bad(env, capsys):
    data = jsonl(env / "b17.jsonl", [{"id": str(i), "text": "  ", "label": "a"} for i in range(5)])
    code, out = preprocess(capsys, "b17", data, "jsonl", "preprocess.max_quarantine_fraction=1.0")
    assert code == 2 and "no usable documents: all 5 inputs were quarantined ({'empty_text': 5})" in out


@pytest.mark.bad_input("B18")
def test_too_much_quarantined(env, capsys):
    data = jsonl(env / "b18.jsonl", GOOD, [json.dumps({"id": f"e{i}", "text": "", "label": "a"}) for i in range(4)])
    code, out = preprocess(capsys, "b18", data, "jsonl", "preprocess.max_quarantine_fraction=0.05")
    assert code == 2 and "max_quarantine_fraction" in out
    rejected = env / "artifacts" / "b18" / "preprocess-rejected.jsonl"
    assert str(rejected) in out and len(rejected.read_text().splitlines()) == 4
    assert not (env / "artifacts" / "b18" / "preprocess").exists()


@pytest.mark.bad_input("B19")
def test_missing_data_path(env, capsys):
    code, out = preprocess(capsys, "b19", env / "nowhere.jsonl", "jsonl")
    assert code == 2 and f"resolves to {env / 'nowhere.jsonl'}" in out and "does not exist" in out
    assert "Set HAN_DATA_DIR" in out


@pytest.mark.bad_input("B20")
def test_unsupported_archive(env, capsys):
    data = env / "b20.rar"
    data.write_bytes(b"Rar!\x1a\x07\x00")
    code, out = preprocess(capsys, "b20", data, "folder")
    assert code == 2 and "neither a folder nor a supported archive" in out and ".tar.gz" in out


@pytest.mark.bad_input("B21")
def test_csv_without_the_text_column(env, capsys):
    data = env / "b21.csv"
    data.write_text("id,body,label\n1,Some text.,a\n")
    code, out = preprocess(capsys, "b21", data, "csv")
    assert code == 2 and "'text'" in out and "data.text_field" in out


# ----------------------------------------------------------------------------- config and CLI


@pytest.mark.bad_input("B22")
def test_config_typo(env, capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  epoch: 3\n")
    code, out = cli(capsys, "train", "--config", str(config))
    assert code == 2 and str(config) in out and "train.epoch: unknown key" in out and "Traceback" not in out


@pytest.mark.bad_input("B23")
def test_wrong_type(env, capsys):
    code, out = cli(capsys, "train", "--set", "train.epochs=ten")
    assert code == 2 and "train.epochs" in out and "valid integer" in out and "'ten'" in out


@pytest.mark.bad_input("B24")
def test_negative_limit(env, capsys):
    code, out = cli(capsys, "preprocess", "--set", "preprocess.limits.max_words=-5", "--set", "serve.max_texts=0")
    assert code == 2
    assert "preprocess.limits.max_words: Input should be greater than or equal to 1 (got -5)" in out
    assert "serve.max_texts: Input should be greater than or equal to 1 (got 0)" in out  # every error at once


@pytest.mark.bad_input("B25")
def test_yaml_syntax_error(env, capsys, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("train:\n  epochs: [3\n")
    code, out = cli(capsys, "train", "--config", str(config))
    assert code == 2 and f"{config}: not valid YAML" in out and "line" in out


@pytest.mark.bad_input("B26")
def test_missing_config_file(env, capsys, tmp_path):
    code, out = cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in out and str(PROJECT_ROOT / "configs") in out


@pytest.mark.bad_input("B27")
def test_set_without_a_value(env, capsys):
    code, out = cli(capsys, "train", "--set", "train.epochs")
    assert code == 2 and "expected key.path=value" in out


@pytest.mark.bad_input("B28")
def test_undefined_environment_variable_in_a_path(env, capsys):
    code, out = cli(capsys, "preprocess", "--set", "data.format=csv", "--set", "data.path=${NO_SUCH_VAR_HAN}/x.csv")
    assert code == 2 and "NO_SUCH_VAR_HAN" in out


@pytest.mark.bad_input("B29")
@pytest.mark.parametrize("name", ["../outside", "/tmp/x", "a/b", ".."])
def test_a_name_that_leads_out_of_the_artifacts_folder(env, capsys, name):
    code, out = cli(capsys, "preprocess", "--set", f"name={name}")
    assert code == 2 and "is not a folder name inside the artifacts directory" in out
    assert not (env / "outside").exists()


@pytest.mark.bad_input("B30")
def test_an_artifacts_folder_that_links_outside(env, capsys, tmp_path):
    (env / "artifacts").mkdir(exist_ok=True)
    (env / "artifacts" / "linked").symlink_to(tmp_path)
    code, out = cli(capsys, "preprocess", "--set", "name=linked", "--set", "data.demo.num_documents=40")
    assert code == 2 and "outside the artifacts directory" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.bad_input("B31")
def test_unknown_command(env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["trian"])
    assert exit_.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


@pytest.mark.bad_input("B32")
def test_a_tampered_output_is_rebuilt_not_trusted(env, capsys):
    settings = ["name=b32", "data.demo.num_documents=40"]
    assert cli(capsys, "preprocess", *set_args(settings))[0] == 0
    (env / "artifacts" / "b32" / "preprocess" / "train-00000.npz").write_bytes(b"not what was written")
    code, out = cli(capsys, "preprocess", *set_args(settings))
    assert code == 0 and "nothing to do" not in out and "40 input = 40 kept" in out


# ----------------------------------------------------------------------------- the model file


@pytest.mark.bad_input("B33")
def test_a_model_file_with_code_in_it_is_refused(tmp_path):
    import keras

    from pipeline.model.han import load_han

    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)  # a Lambda is arbitrary Python, stored as bytecode
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_han(path)


# ----------------------------------------------------------------------------- corpora as shipped (issue #32)


def split_rows(path: Path, splits: list[str]) -> Path:
    """The good documents with a ``split`` field, one value each (cycled)."""
    return jsonl(path, [{**row, "split": splits[i % len(splits)]} for i, row in enumerate(GOOD)])


@pytest.mark.bad_input("B73")
def test_a_split_value_that_names_no_split(env, capsys):
    data = jsonl(env / "b73.jsonl", [{**row, "split": "train"} for row in GOOD],
                 [json.dumps({"id": "h", "text": "Apple story. Kept aside.", "label": "a", "split": "holdout"})])
    code, out = preprocess(capsys, "b73", data, "jsonl", "data.split_field=split")
    assert code == 0, out
    (line,) = quarantined(env, "b73", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "unparsable" and "'holdout', not a split value" in line["detail"]
    assert "add it to data.split_values" in line["detail"]


@pytest.mark.bad_input("B74")
def test_an_own_split_without_training_documents(env, capsys):
    data = split_rows(env / "b74.jsonl", ["dev", "test"])
    code, out = preprocess(capsys, "b74", data, "jsonl", "data.split_field=split")
    assert code == 2
    assert "the training split is empty: data.split_field 'split' decides the split" in out
    assert "'dev' = validation, 'test' = test" in out and "data.split_values.train" in out
    assert "lower preprocess.split" not in out  # the fractions are not what to change here


@pytest.mark.bad_input("B75")
def test_a_path_per_split_that_does_not_exist(env, capsys):
    train = jsonl(env / "b75-train.jsonl", GOOD)
    code, out = preprocess(capsys, "b75", f"{{train: {train}, test: {env / 'b75-tset.jsonl'}}}", "jsonl")
    assert code == 2
    assert f"data.path.test '{env / 'b75-tset.jsonl'}' resolves to" in out and "does not exist" in out


@pytest.mark.bad_input("B76")
def test_a_path_per_split_under_a_name_that_is_no_split(env, capsys):
    code, out = preprocess(capsys, "b76", "{train: a.jsonl, dev: b.jsonl}", "jsonl")
    assert code == 2
    assert "data.path: 'dev' is not a split" in out and "a dev set is validation" in out


@pytest.mark.bad_input("B77")
def test_readme_and_license_beside_documents_without_an_extension(env, capsys):
    folder = env / "b77"
    for row in GOOD:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / row["id"]).write_text(row["text"], encoding="utf-8")  # no extension, as 20 Newsgroups
    (folder / "a" / "README").write_text("What these files are.")
    (folder / "b" / "LICENSE").write_text("Terms of use.")
    code, out = preprocess(capsys, "b77", folder, "folder")
    assert code == 0, out
    assert quarantined(env, "b77", len(GOOD), len(GOOD)) == []
    skipped = json.loads((env / "artifacts" / "b77" / "preprocess" / "skipped_files.json").read_text())
    assert sorted(skipped) == ["a/README", "b/LICENSE"]


@pytest.mark.bad_input("B78")
def test_a_drop_lines_pattern_that_is_no_regular_expression(env, capsys):
    data = jsonl(env / "b78.jsonl", GOOD)
    code, out = preprocess(capsys, "b78", data, "jsonl", "preprocess.drop_lines=['^>', '(unclosed']")
    assert code == 2
    assert "preprocess.drop_lines: item 1 ('(unclosed') is not a regular expression" in out


@pytest.mark.bad_input("B79")
def test_a_document_that_is_only_a_mail_header(env, capsys):
    posts = [{**row, "text": f"From: someone@example.com\nSubject: post {row['id']}\n\n{row['text']}"} for row in GOOD]
    data = jsonl(env / "b79.jsonl", posts, [json.dumps({"id": "h", "text": "From: x@y.z\nSubject: (empty)", "label": "a"})])
    code, out = preprocess(capsys, "b79", data, "jsonl", "preprocess.drop_header=true")
    assert code == 0, out
    (line,) = quarantined(env, "b79", len(GOOD) + 1, len(GOOD))
    assert line["reason"] == "no_tokens" and "drop_header / drop_lines dropped 2 of its lines" in line["detail"]


@pytest.mark.bad_input("B80")
def test_a_jsonl_line_longer_than_any_record_may_be_is_skipped_unread(env, capsys, monkeypatch):
    from pipeline.data import readers

    limit = readers.jsonl_line_limit(2000)
    huge = json.dumps({"id": "huge", "text": "word " * (limit // 2), "label": "a"})  # ~2.5x the limit, one line
    data = jsonl(env / "b80.jsonl", GOOD[:12], [huge, *map(json.dumps, GOOD[12:])])
    reads: list[int] = []
    real_init = readers._DecodedLines.__init__

    def spying_init(self, binary, *args, **kwargs):
        real_readline = binary.readline
        binary.readline = lambda size=-1: reads.append(size) or real_readline(size)  # noqa: B023
        real_init(self, binary, *args, **kwargs)

    monkeypatch.setattr(readers._DecodedLines, "__init__", spying_init)
    code, out = preprocess(capsys, "b80", data, "jsonl", "data.max_chars=2000")
    assert code == 0, out
    (line,) = quarantined(env, "b80", len(GOOD) + 1, len(GOOD))  # the lines after it are read
    assert line["reason"] == "too_large" and "more than a record of at most data.max_chars (2,000)" in line["detail"]
    assert reads and max(reads) <= max(limit + 1, 1 << 20)  # never one read of the whole line


# ----------------------------------------------------------------------------- the table itself


def _readme_rows() -> dict[str, str]:
    text = (PROJECT_ROOT / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| (B\d\d) \| (.+)$", text, flags=re.M))


def test_the_readme_table_and_the_tests_agree():
    rows = _readme_rows()
    assert len(rows) >= 25
    marked = set()
    for path in (PROJECT_ROOT / "tests").rglob("test_*.py"):
        marked |= set(re.findall(r'bad_input\("(B\d\d)"\)', path.read_text(encoding="utf-8")))
    assert sorted(rows) == sorted(marked)
