"""The bad-input table (docs/bad-inputs.md), rows B65-B70: splits a model cannot be learnt from or scored on.

Each test runs the real preprocess stage through the CLI on a tiny CSV made here, most with the data's own
split column (``data.split_field``). An error stops the stage before anything is written and names the labels,
their documents per split and the fix that fits where the split came from (the data's own split is fixed in
the data, never with ``preprocess.split``); a warning is a line on stderr and an entry of ``warnings`` in
``stats.json`` and the manifest.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.stages.conftest import set_args

WORDS = {"a": "Apple", "b": "Boat", "c": "Cars"}


def table(path: Path, counts: dict[str, dict[str, int]], empty: dict[str, dict[str, int]] | None = None) -> Path:
    """A CSV with ``counts[label][split]`` documents (split "" = none: no split column); ``empty``: rows whose
    text has no word (quarantined ``no_tokens`` after tokenization)."""
    with_split = any(split for splits in counts.values() for split in splits)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label", *(["split"] if with_split else [])])
        for rows, text in ((counts, "{word} story number {i}. The {lower}s grow well in spring."),
                           (empty or {}, "... !!! ???")):
            for label, splits in rows.items():
                for split, n in splits.items():
                    for i in range(n):
                        word = WORDS.get(label, f"Topic {label}")
                        writer.writerow([f"{label}-{split or 'x'}-{i}-{len(text)}",
                                         text.format(word=word, lower=word.lower(), i=i), label,
                                         *([split] if with_split else [])])
    return path


def preprocess(capsys, env: Path, name: str, data: Path, *overrides: str) -> tuple[int, str]:
    split = ["data.split_field=split"] if "split" in data.read_text().splitlines()[0] else []
    settings = [f"name={name}", "data.format=csv", f"data.path={data}", "preprocess.vocab.min_count=1", *split, *overrides]
    code = main(["preprocess", *set_args(settings)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def nothing_written(env: Path, name: str) -> bool:
    return not (env / "artifacts" / name / "preprocess").exists()


def written_warnings(env: Path, name: str) -> list[str]:
    out = env / "artifacts" / name / "preprocess"
    stats, manifest = (json.loads((out / f).read_text()) for f in ("stats.json", "manifest.json"))
    assert stats["warnings"] == manifest["warnings"]
    return manifest["warnings"]


@pytest.mark.bad_input("B65")
def test_a_label_only_in_the_test_split(env, capsys):
    data = table(env / "b65.csv", {"a": {"train": 10, "test": 3}, "b": {"train": 10, "test": 3}, "c": {"test": 3}})
    code, out = preprocess(capsys, env, "b65", data)
    assert code == 2, out
    assert "a label has no training documents, so the model cannot learn it: 'c' (train 0, validation 0, test 3)" in out
    assert "add training documents for it to the data's own split (data.split_field 'split')" in out
    assert "data.labels" in out and "merge it into another label" in out
    assert "preprocess.split" not in out  # the data's own split: its fractions would change nothing
    assert "Traceback" not in out and nothing_written(env, "b65")


@pytest.mark.bad_input("B66")
def test_a_label_the_stratified_split_leaves_without_training_documents(env, capsys):
    data = table(env / "b66.csv", {"a": {"": 12}, "b": {"": 12}, "c": {"": 2}})
    code, out = preprocess(capsys, env, "b66", data, "preprocess.split.test=0.45", "preprocess.split.validation=0.44")
    assert code == 2, out
    assert "'c' (train 0, validation 1, test 1)" in out and "cannot learn it" in out
    assert "lower preprocess.split.test / preprocess.split.validation (now 0.45 / 0.44)" in out  # here they decide
    assert nothing_written(env, "b66")


@pytest.mark.bad_input("B67")
def test_many_tiny_labels_leave_the_test_split_empty(env, capsys):
    data = table(env / "b67.csv", {f"l{k}": {"": 2} for k in range(10)})
    code, out = preprocess(capsys, env, "b67", data)
    assert code == 2, out
    assert ("the test split is empty: preprocess.split.test=0.2 of each label rounds to no document (10 labels, "
            "the largest with 2 documents; a label needs 3 for one test document)") in out
    assert "raise preprocess.split.test" in out and nothing_written(env, "b67")


@pytest.mark.bad_input("B68")
def test_a_label_with_few_training_documents_is_a_warning(env, capsys):
    data = table(env / "b68.csv", {"a": {"train": 10, "test": 3}, "b": {"train": 10, "test": 3},
                                   "c": {"train": 2, "test": 2}})
    code, out = preprocess(capsys, env, "b68", data)
    assert code == 0, out
    (warning,) = written_warnings(env, "b68")
    assert warning.startswith("a label has fewer than 5 training documents, too few to learn it well: 'c' (train ")
    assert f"preprocess: warning: {warning}" in out
    # An unchanged rerun says it again.
    code, again = preprocess(capsys, env, "b68", data)
    assert code == 0 and "nothing to do" in again and f"preprocess: warning: {warning}" in again


@pytest.mark.bad_input("B69")
def test_a_label_without_test_documents_is_a_warning(env, capsys):
    data = table(env / "b69.csv", {"a": {"train": 10, "test": 3}, "b": {"train": 10, "test": 3}, "c": {"train": 10}})
    code, out = preprocess(capsys, env, "b69", data)
    assert code == 0, out
    (warning,) = written_warnings(env, "b69")
    assert "a label has no test documents, so the test scores cannot measure it: 'c' (train " in warning
    assert warning.endswith("add test documents for it to the data's own split (data.split_field 'split')")
    assert f"preprocess: warning: {warning}" in out


@pytest.mark.bad_input("B70")
def test_a_label_whose_training_documents_are_all_quarantined(env, capsys):
    data = table(env / "b70.csv", {"a": {"train": 10, "test": 3}, "b": {"train": 10, "test": 3}, "c": {"test": 2}},
                 empty={"c": {"train": 3}})
    code, out = preprocess(capsys, env, "b70", data, "preprocess.max_quarantine_fraction=0.5")
    assert code == 2, out
    assert "31 input = 28 kept + 3 quarantined {'no_tokens': 3}" in out  # counted after tokenization, then checked
    assert "'c' (train 0, validation 0, test 2)" in out and nothing_written(env, "b70")
