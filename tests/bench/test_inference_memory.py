"""``benchmarks.inference_memory --quick`` on a tiny model trained here: the harness, not the figures.

Every mode runs in its own process and reports a peak; the packed and unpacked evaluations score the
same documents alike; the markdown names each mode. The IMDB figures come from the full run
(``benchmarks/results/inference-memory-<date>.md``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from benchmarks.inference_memory import MODES, main
from pipeline.artifacts import read_json
from pipeline.config import PROJECT_ROOT, load_config
from pipeline.data.batching import pad_batch
from pipeline.data.shards import load_split
from pipeline.data.vocab import Vocabulary
from pipeline.model.han import build_han, compile_han
from pipeline.serving.bundle import write_bundle
from pipeline.stages import preprocess

# Two length groups (from 8 sentences on), so the unpacked pass runs a grouped graph as IMDB's does.
TINY = ["data.demo.num_documents=200", "model.embedding.dim=16", "model.word_units=8", "model.sentence_units=8",
        "model.word_attention.context_dim=8", "model.sentence_attention.context_dim=8",
        "model.word_buckets=2", "model.train_word_buckets=2", "model.word_bucket_sentences=8"]


@pytest.fixture
def tiny_bundle(tmp_path):
    config = load_config(overrides=TINY)
    prep = preprocess.run(config).output_dir
    keras.utils.set_random_seed(0)
    model = build_han(config.model, vocab_size=len(Vocabulary.load(prep / "vocab.json")),
                      num_classes=len(read_json(prep / "labels.json")))
    train = load_split(prep, "train")
    compile_han(model, config.model, learning_rate=5e-3).fit(pad_batch(train.documents()), train.labels,
                                                             batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    return write_bundle(tmp_path / "bundle", tmp_path / "model.keras", prep), prep


def test_quick_run_reports_every_mode_and_the_evaluations_agree(tiny_bundle, tmp_path):
    bundle, prep = tiny_bundle
    out = tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks.inference_memory", "--quick", "--bundle", str(bundle),
               "--prep", str(prep), "--out", str(out)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    (path,) = out.glob("inference-memory-*-quick.json")
    report = json.loads(path.read_text())
    assert list(report["modes"]) == list(MODES)
    assert all(report["modes"][mode]["peak_rss_mb"] > 0 for mode in MODES)
    packed, unpacked = report["modes"]["evaluate_packed"], report["modes"]["evaluate_unpacked"]
    assert packed["documents"] == unpacked["documents"] == len(load_split(prep, "test")) > 0  # under the quick 1,000
    assert abs(packed["accuracy"] - unpacked["accuracy"]) <= 1e-4 and report["agreement"]["passed"]
    assert report["agreement"]["max_probability_difference"] < 1e-4
    assert report["modes"]["serve"]["documents"] > 0 and report["modes"]["serve"]["errors"] == 0
    for mode in ("evaluate_packed", "evaluate_unpacked", "serve"):
        row = report["modes"][mode]
        assert row["added_over_load_mb"] == pytest.approx(row["peak_rss_mb"] - report["modes"]["load"]["peak_rss_mb"], abs=0.2)
        assert row["docs_per_s"] > 0
    text = (out / path.name.replace(".json", ".md")).read_text()
    assert all(f"| {mode} |" in text for mode in MODES)
    assert "peak memory than the whole model's grouped graph" in text or "peak alike" in text


def test_missing_inputs_say_to_run_make_bench(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "bundle"), "--prep", str(tmp_path / "prep"), "--out", str(tmp_path)]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
    assert not list(tmp_path.glob("inference-memory-*"))


def test_accuracy_reads_single_and_multi_label_probabilities():
    from benchmarks.inference_memory import accuracy

    assert accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0])) == 0.5
    assert accuracy(np.array([[0.9, 0.6], [0.2, 0.1]]), np.array([[1, 1], [0, 1]])) == 0.5
