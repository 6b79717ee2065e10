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


def speed_run(readme: str) -> str:
    """The one run the README's speed paragraph links: every speed figure it quotes must be that run's."""
    import re

    paragraph = readme[readme.index("Speed and memory against the padded reference HAN"):readme.index("| IMDB | ours |")]
    linked = set(re.findall(r"\]\(benchmarks/results/([\w-]+)\.md\)", paragraph))
    (stem,) = {stem for stem in linked if "datasets" in json.loads((index.RESULTS / f"{stem}.json").read_text())}
    return stem


def test_the_readme_speed_table_is_what_the_run_it_links_measured():
    readme = index.README.read_text(encoding="utf-8")
    imdb = json.loads((index.RESULTS / f"{speed_run(readme)}.json").read_text())["datasets"]["imdb"]
    han, reference = imdb["han"], imdb["reference_han"]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
            for line in readme.splitlines() if line.startswith(("| batch inference, docs/s", "| training, docs/s", "| training peak RSS"))}
    inference, training, peak = rows["batch inference, docs/s"], rows["training, docs/s"], rows["training peak RSS"]
    assert inference[0].startswith(f"{han['infer_docs_per_s']:,.0f}") and inference[1] == f"{reference['infer_docs_per_s']:,.0f}"
    assert inference[2] == f"{han['infer_docs_per_s'] / reference['infer_docs_per_s']:.2f}x"
    assert training[0] == f"{han['train_docs_per_s']:,.0f}" and training[1] == f"{reference['train_docs_per_s']:,}"
    assert training[2] == f"{han['train_docs_per_s'] / reference['train_docs_per_s']:.2f}x"
    assert peak[:2] == [f"{han['train_peak_rss_mb']:,.0f} MB", f"{reference['train_peak_rss_mb']:,.0f} MB"]
    phases = {m["phase"]: m for m in han["train_memory_mb"]}
    assert f"word2vec peaks at {phases['word vectors learned']['peak']:,.0f} MB" in readme
    assert f"the first epoch at {phases['first epoch']['peak']:,.0f} MB" in readme


def test_the_readmes_bbc_speed_figures_are_what_the_run_it_links_measured():
    readme = index.README.read_text(encoding="utf-8")
    bbc = json.loads((index.RESULTS / f"{speed_run(readme)}.json").read_text())["datasets"]["bbc"]
    han, reference = bbc["han"], bbc["reference_han"]
    training = han["train_docs_per_s"] / reference["train_docs_per_s"]
    text = " ".join(readme.split())  # the sentence wraps across lines
    assert (f"BBC training **{training:.2f}x** ({han['train_docs_per_s']:,.0f} against "
            f"{reference['train_docs_per_s']:,} docs/s), inference "
            f"{han['infer_docs_per_s'] / reference['infer_docs_per_s']:.1f}x") in text


def test_the_readmes_reasons_are_what_the_split_runs_it_links_measured():
    import re

    readme = index.README.read_text(encoding="utf-8")
    text = " ".join(readme.split())
    (inference,) = re.findall(r"\[inference\]\(benchmarks/results/([\w-]+-inference-split)\.md\)", readme)
    (training,) = re.findall(r"\[training\]\(benchmarks/results/([\w-]+-training-split)\.md\)", readme)
    run = json.loads((index.RESULTS / f"{inference}.json").read_text())
    one, parts = run["one_thread"], run["word_level_by_cost"]
    assert f"on one thread {one['word_level_s'] / one['seconds']:.0%} of a pass is the word level" in text
    assert f"{parts['cells_s'] / parts['predicted_s']:.0%} of that is per word ({run['word_cost']['cell_s'] * 1e6:.1f} µs" in text
    assert (f"{parts['calls_s'] / parts['predicted_s']:.0%} per call, "
            f"{parts['steps_s'] / parts['predicted_s']:.0%} per loop step") in text
    assert f"Two cores run the pass {run['docs_per_s'] * one['seconds'] / run['documents']:.2f}x as fast as one" in text
    run = json.loads((index.RESULTS / f"{training}.json").read_text())
    word, batch, rows, steps = run["word_level_ms"], run["per_batch"], run["reference_shape"]["rows"], run["reference_shape"]["steps"]
    assert (f"on one thread {word['predicted_ms'] / run['step_ms']:.0%} of a step is the word level, "
            f"{word['cells_ms'] / run['step_ms']:.0%} its cells forward and backward ({run['word_cost']['cell_s'] * 1e6:.1f} µs") in text
    assert (f"step over {batch['cells']:,.0f} cells, {batch['cells'] / (rows * steps):.2f}x the {rows * steps:,} the "
            "reference pads to") in text
