"""benchmarks/index.py: the results index and the README's headline table come from the JSON files."""

from __future__ import annotations

import json

from benchmarks import index


def _comparison(accuracy: float, **extra) -> dict:
    return {"date": "x", "quick": False, "datasets": {"bbc": {
        "han": {"accuracy": accuracy, "accuracy_spread": 0.01, "train_docs_per_s": 300.0},
        "reference_han": {"accuracy": 0.9, "accuracy_spread": None, "train_docs_per_s": 60.0},
        "tfidf_lr": {"accuracy": 0.95, "accuracy_spread": 0.002, "input": "full_text"}}}, "seeds": [42, 1, 2], **extra}


def test_the_committed_index_and_readme_headline_are_what_the_results_give():
    assert index.main(["--check"]) == 0, "run python -m benchmarks.index"


def test_the_headline_is_the_latest_full_run_never_an_experiment_or_a_quick_run(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "RESULTS", tmp_path)
    (tmp_path / "2026-01-01.json").write_text(json.dumps(_comparison(0.91)))
    (tmp_path / "2026-01-02.json").write_text(json.dumps(_comparison(0.93)))
    (tmp_path / "2026-01-03-dropout.json").write_text(json.dumps(_comparison(0.99)))
    (tmp_path / "2026-01-04.json").write_text(json.dumps(_comparison(0.98, quick=True)))
    (tmp_path / "2026-01-04-sweep.json").write_text(json.dumps({"grid": {"model.dropout": [0.1]}, "metric": "val_loss"}))
    table = index.headline()
    (row,) = [line for line in table.splitlines() if line.startswith("| bbc")]
    assert "0.9300 ± 0.0100" in row and "0.9000 |" in row and "0.9500 ± 0.0020" in row and "full_text" in row
    assert "2026-01-02" in row and "42, 1, 2" in row and "300 (60)" in row
    listing = index.index()
    assert listing.count("| comparison |") == 4 and "| sweep |" in listing and "(quick)" in listing


def test_check_names_a_stale_readme(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{index.BEGIN}\n| old | table |\n{index.END}\n")
    monkeypatch.setattr(index, "README", readme)
    monkeypatch.setattr(index, "INDEX", tmp_path / "INDEX.md")
    monkeypatch.setattr(index, "ROOT", tmp_path)
    assert index.main(["--check"]) == 1
    assert "README.md is out of date" in capsys.readouterr().err
    assert index.main([]) == 0 and index.main(["--check"]) == 0
    assert "| old | table |" not in readme.read_text() and "| dataset | metric |" in readme.read_text()
