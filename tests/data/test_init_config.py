"""init-config: a starting config written from a data path loads, and preprocess runs on it."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT, load_config
from pipeline.data.inspect import InspectError, inspect_data
from pipeline.stages import preprocess

TOPICS = {
    "sport": "The team won the match after a late goal. Fans cheered in the stadium until night.",
    "business": "Shares rose after the company reported profits. Investors bought more of the stock.",
    "tech": "The new phone has a faster chip. Engineers improved the battery and the screen.",
}


def write_news_csv(path: Path, rows: int = 60, empty_rows: int = 0) -> Path:
    """id, title, body, topic (3 values), source (2 values): two columns could be the label."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "title", "body", "topic", "source"])
        for i in range(rows):
            topic = list(TOPICS)[i % 3]
            body = f"{TOPICS[topic]} Story {i} adds a detail. Another sentence follows here."
            writer.writerow([f"n{i}", f"Headline {i}", body, topic, ["wire", "web"][i % 2]])
        for i in range(empty_rows):
            writer.writerow([f"e{i}", "No body", "  ", "sport", "web"])
    return path


def write_reviews_jsonl(path: Path) -> Path:
    """text, integer labels under an unusual name, the dataset's own split, no id."""
    lines = []
    for i in range(40):
        text = ["I loved this film. The acting was great.", "I hated this film. The plot was dull."][i % 2]
        lines.append(json.dumps({"text": f"{text} Review {i} ends here.", "stars": i % 2,
                                 "split": "test" if i >= 30 else "train"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def init_config(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["init-config", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_config_loads_names_the_fields_and_preprocess_runs_on_it(tmp_path, capsys):
    data = write_news_csv(tmp_path / "news.csv", empty_rows=1)
    out = tmp_path / "news.yaml"
    code, printed, _ = init_config(capsys, str(data), "--output", str(out))
    assert code == 0
    assert "format      csv" in printed and "all 61 records" in printed
    assert "labels      3 in the sample: " in printed and "sport 20" in printed  # of the kept records
    assert "2 columns could be the label: topic, source; chose topic (named like a label)" in printed
    assert "empty_text 1" in printed  # what preprocess will quarantine, seen already in the sample

    written = yaml.safe_load(out.read_text())
    assert set(written) == {"name", "data"}  # nothing else differs from default.yaml (its CPU settings: auto)
    config = load_config(out)
    assert config.name == "news"
    assert (config.data.format, config.data.path) == ("csv", str(data))
    assert (config.data.text_field, config.data.label_field) == ("body", "topic")
    assert (config.data.id_field, config.data.split_field) == ("id", None)

    result = preprocess.run(config)
    assert result.manifest["counts"] == {"input": 61, "kept": 60, "quarantined": 1, "by_reason": {"empty_text": 1}}
    assert json.loads((result.output_dir / "labels.json").read_text()) == ["business", "sport", "tech"]


def test_jsonl_with_its_own_split_column_keeps_that_split(tmp_path, capsys):
    data = write_reviews_jsonl(tmp_path / "reviews.jsonl")
    out = tmp_path / "reviews.yaml"
    code, printed, _ = init_config(capsys, str(data), "--output", str(out), "--name", "my-reviews")
    assert code == 0
    assert "splits      train 30, test 10; validation is carved from train" in printed
    config = load_config(out)
    assert config.name == "my-reviews"
    assert (config.data.format, config.data.text_field, config.data.label_field) == ("jsonl", "text", "stars")
    assert config.data.split_field == "split"
    assert config.data.id_field is None  # no id column: ids come from file:line, not the default 'id' field

    result = preprocess.run(config)
    assert result.manifest["counts"]["input"] == result.manifest["counts"]["kept"] == 40
    stats = json.loads((result.output_dir / "stats.json").read_text())
    assert stats["split_source"] == "dataset"
    assert stats["documents"]["test"] == 10


def test_an_existing_file_is_kept_without_force(tmp_path, capsys):
    data = write_news_csv(tmp_path / "news.csv")
    out = tmp_path / "news.yaml"
    out.write_text("# mine\n")
    code, _, err = init_config(capsys, str(data), "--output", str(out))
    assert code == 2 and "--force" in err
    assert out.read_text() == "# mine\n"
    code, _, _ = init_config(capsys, str(data), "--output", str(out), "--force")
    assert code == 0 and load_config(out).data.label_field == "topic"
    assert not list(tmp_path.glob("*.partial"))


def test_data_paths_are_written_to_work_from_the_project_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HAN_DATA_DIR", str(tmp_path / "datasets"))
    (tmp_path / "datasets" / "news").mkdir(parents=True)
    inside = write_news_csv(tmp_path / "datasets" / "news" / "a.csv")
    out = tmp_path / "inside.yaml"
    assert init_config(capsys, str(inside), "--output", str(out))[0] == 0
    config = load_config(out)
    assert config.data.path == "${HAN_DATA_DIR}/news/a.csv"
    assert config.resolved_data_path() == inside

    # Given relative to another folder, the path is rewritten relative to the project root, where make runs.
    (tmp_path / "elsewhere").mkdir()
    write_news_csv(tmp_path / "elsewhere" / "b.csv")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "relative.yaml"
    assert init_config(capsys, "elsewhere/b.csv", "--output", str(out))[0] == 0
    written = load_config(out).data.path
    assert not Path(written).is_absolute()
    assert (PROJECT_ROOT / written).resolve() == (tmp_path / "elsewhere" / "b.csv").resolve()


def test_class_folders_and_an_archive_of_them_are_the_folder_format(tmp_path, capsys):
    tree = tmp_path / "tree"
    for label, count in (("pos", 3), ("neg", 2)):
        (tree / label).mkdir(parents=True)
        for i in range(count):
            (tree / label / f"{i}.txt").write_text(f"A {label} review. Number {i}.", encoding="utf-8")
    (tree / "README.md").write_text("not a document")
    found = inspect_data(tree)
    assert found.format == "folder"
    assert dict(found.labels) == {"pos": 3, "neg": 2} and found.skipped_files == 1

    archive = tmp_path / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, label, text in (("train", "pos", "Great."), ("train", "neg", "Bad."), ("test", "pos", "Fine.")):
            info = tarfile.TarInfo(f"corpus/{split}/{label}/{split}-{label}.txt")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    out = tmp_path / "corpus.yaml"
    code, printed, _ = init_config(capsys, str(archive), "--output", str(out))
    assert code == 0
    assert "splits      train 2, test 1" in printed
    config = load_config(out)
    assert (config.name, config.data.format, config.data.path) == ("corpus", "folder", str(archive))
    assert "text_field" not in yaml.safe_load(out.read_text())["data"]  # a folder has no fields to name


def test_parquet_and_a_json_lines_file_without_its_suffix_are_recognised(tmp_path):
    table = pa.table({"doc_id": ["a", "b", "c", "d"], "review": ["Long text here. " * 5] * 4,
                      "label": ["x", "y", "x", "y"]})
    pq.write_table(table, tmp_path / "t.parquet")
    found = inspect_data(tmp_path / "t.parquet")
    assert (found.format, found.text_field, found.label_field, found.id_field) == ("parquet", "review", "label", "doc_id")

    write_reviews_jsonl(tmp_path / "reviews.data")
    assert inspect_data(tmp_path / "reviews.data").format == "jsonl"
    (tmp_path / "notes.rtf").write_text("{\\rtf1 hello}\n")
    with pytest.raises(InspectError, match="cannot tell its format"):
        inspect_data(tmp_path / "notes.rtf")


def test_doubtful_columns_are_reported_not_used(tmp_path):
    rows = [{"id": str(i % 5), "body": f"Some text of record {i}. It has two sentences.", "category": "ab"[i % 2],
             "split": ["train", "holdout"][i % 2]} for i in range(20)]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    found = inspect_data(path)
    assert found.id_field is None and found.split_field is None and found.label_field == "category"
    doubts = "\n".join(found.doubts)
    assert "column 'id' repeats values" in doubts
    assert "column 'split' has values other than" in doubts and "'holdout'" in doubts


def test_only_the_first_records_are_read(tmp_path):
    data = write_news_csv(tmp_path / "big.csv", rows=2300)
    found = inspect_data(data, sample=2000)
    assert found.records_sampled == 2000 and not found.sampled_all
    assert sum(found.labels.values()) == 2000


def test_the_default_cpu_settings_choose_those_of_bbc_yaml_for_a_corpus_like_bbc():
    # A written config leaves the CPU settings to the defaults' auto: on BBC's preprocessed statistics they come
    # out as configs/bbc.yaml sets them (train.optimizer: lazy_adam from a 20,000-word vocabulary, BBC has 17,372).
    bbc = load_config(PROJECT_ROOT / "configs" / "bbc.yaml")
    stats = {"documents": {"train": 1558}, "vocabulary": {"size": 17_372}, "limits": {"max_words": 38},
             "splits": {"train": {"words_per_sentence": {"mean": 22.2}}}}
    chosen = load_config().resolved(stats)
    for section, key in (("model", "word_buckets"), ("model", "train_word_buckets"), ("model", "embedding_dropout"),
                         ("runtime", "intra_op_threads"), ("runtime", "malloc_arenas"), ("runtime", "malloc_trim_steps")):
        assert getattr(getattr(chosen, section), key) == getattr(getattr(bbc, section), key), f"{section}.{key}"
    assert chosen.train.optimizer == "adam" and load_config().resolved({**stats, "vocabulary": {"size": 39_041}}).train.optimizer == "lazy_adam"


def test_help_and_make_target(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["init-config", "--help"])
    assert exit_.value.code == 0
    assert "python -m pipeline init-config data/reviews.csv" in capsys.readouterr().out
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "config", "DATA=data/x.csv", "NAME=x", "FORCE=1"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    assert '-m pipeline init-config "data/x.csv" --name "x" --force' in dry.stdout
