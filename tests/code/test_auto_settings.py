"""The defaults' ``auto`` CPU settings: chosen from the preprocessed corpus, small corpora keep their old values."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, ModelConfig, RuntimeConfig, load_config


def corpus_stats(train: int, vocabulary: int = 5_000, words_mean: float = 20.0, max_words: int = 40) -> dict:
    return {"documents": {"train": train}, "vocabulary": {"size": vocabulary}, "limits": {"max_words": max_words},
            "splits": {"train": {"words_per_sentence": {"mean": words_mean}}}}


def chosen(config, stats: dict) -> tuple:
    resolved = config.resolved(stats)
    return (resolved.model.word_buckets, resolved.model.train_word_buckets, resolved.model.embedding_dropout,
            resolved.train.optimizer, resolved.runtime.intra_op_threads)


@pytest.mark.parametrize(("stats", "expected"), [
    (corpus_stats(840, 232, 13.9, 21), (1, None, "element", "adam", None)),  # the demo corpus: as before
    (corpus_stats(60), (1, None, "element", "adam", None)),  # a test's tiny corpus
    (corpus_stats(1_558, 17_372, 22.2, 38), (8, 2, "word_type", "adam", 1)),  # BBC: configs/bbc.yaml's settings
    (corpus_stats(22_500, 39_041, 18.0, 70), (8, 4, "word_type", "lazy_adam", 1)),  # IMDB: configs/imdb.yaml's
    (corpus_stats(5_000, 30_000, 36.0, 40), (1, None, "word_type", "lazy_adam", None)),  # sentences all ~ as long
])
def test_auto_settings_follow_the_corpus(stats, expected):
    assert chosen(load_config(), stats) == expected


def test_settings_given_are_kept_and_auto_fills_in_around_them():
    config = load_config(overrides=["model.word_buckets=3", "train.optimizer=sgd", "runtime.intra_op_threads=2"])
    assert chosen(config, corpus_stats(100)) == (3, 2, "element", "sgd", 2)
    assert chosen(config, corpus_stats(50_000)) == (3, 3, "word_type", "sgd", 2)


def test_without_a_preprocessed_corpus_auto_is_the_small_corpus_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("HAN_ARTIFACTS_DIR", str(tmp_path))
    config = load_config()
    assert chosen(config, {}) == (1, None, "element", "adam", None)
    assert chosen(config, {"documents": {"train": "?"}}) == (1, None, "element", "adam", None)
    stats = config.stage_dir("preprocess") / "stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps(corpus_stats(2_000)))
    assert config.resolved().model.word_buckets == 8  # read from this pipeline's preprocess folder


def test_a_model_built_outside_the_train_stage_takes_the_small_corpus_choice():
    from pipeline.model.han import build_han

    model = build_han(ModelConfig(embedding={"dim": 4}, word_units=2, sentence_units=2,
                                  word_attention={"context_dim": 2}, sentence_attention={"context_dim": 2}), 10, 2)
    names = {layer.name for layer in model.layers}
    assert "split_by_length" not in names and "distinct_words" not in names  # one group, element-wise dropout


def test_auto_threads_follow_the_length_groups():
    assert RuntimeConfig().resolved(8).intra_op_threads == 1
    assert RuntimeConfig().resolved(1).intra_op_threads is None
    assert RuntimeConfig(intra_op_threads=4).resolved(8).intra_op_threads == 4


@pytest.mark.parametrize(("override", "message"), [
    ("model.word_buckets=0", "model.word_buckets: expected a number of length groups from 1 to 32, or auto"),
    ("model.train_word_buckets=many", "model.train_word_buckets: expected a number of length groups"),
    ("runtime.intra_op_threads=-1", "runtime.intra_op_threads: expected a number of threads from 1 to 1024, auto or null"),
    ("train.optimizer=fast", "train.optimizer: Input should be 'adam', 'lazy_adam', 'sgd' or 'auto'"),
])
def test_a_wrong_value_gets_one_plain_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])
