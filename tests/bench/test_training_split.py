"""``benchmarks.training_split``: a training step split into the word level's parts and the rest, on a small model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import training_split


def test_sentence_rows_are_the_real_sentences_of_a_batch():
    tokens = np.zeros((2, 3, 4), np.int32)
    tokens[0, 0, :2] = [5, 6]
    tokens[1, 2, :3] = [7, 8, 9]
    rows = training_split.sentence_rows(tokens)
    assert rows.tolist() == [[5, 6, 0, 0], [7, 8, 9, 0]]


@pytest.mark.parametrize("dropout", ["word_type", "element"])
def test_the_step_splits_into_word_level_parts_and_a_rest_that_add_up(dropout):
    import keras

    from pipeline.config import ModelConfig
    from pipeline.model.han import build_han, compile_han

    keras.utils.set_random_seed(0)
    config = ModelConfig(word_buckets=2, word_bucket_sentences=4, embedding={"dim": 16}, word_units=8, sentence_units=8,
                         embedding_dropout=dropout, dropout=0.2,
                         word_attention={"context_dim": 8}, sentence_attention={"context_dim": 8})
    model = build_han(config, vocab_size=60, num_classes=3)
    trainer = compile_han(model, config)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        tokens = np.zeros((8, 5, 9), np.int32)
        for d in range(8):
            for s in range(int(rng.integers(1, 6))):
                n = int(rng.integers(1, 10))
                tokens[d, s, :n] = rng.integers(2, 60, n)
        batches.append((tokens, rng.integers(0, 3, 8).astype(np.int32)))

    result = training_split.measure(batches, model, trainer, passes=1, rows=(4, 16), steps=(2, 9), repeats=1)

    assert result["batches"] == 4 and result["documents"] == 32 and result["step_ms"] > 0
    # Every batch has 8+ real sentences: min(2 groups, sentences // 4) = 2 groups each, as SplitByLength cuts them.
    assert result["per_batch"]["groups"] == 2.0
    real_rows = sum(len(training_split.sentence_rows(tokens)) for tokens, _ in batches) / 4
    # SplitByLength's groups hold the real sentences and one empty row each, every one a row the word level steps over.
    assert result["per_batch"]["rows"] == pytest.approx(real_rows + 2, abs=0.06)
    word = result["word_level_ms"]
    assert word["predicted_ms"] == pytest.approx(word["calls_ms"] + word["steps_ms"] + word["cells_ms"], abs=0.02)
    assert result["rest_ms"] == pytest.approx(result["step_ms"] - word["predicted_ms"], abs=0.02)
    cost, ref = result["word_cost"], result["reference_shape"]
    rows, steps = training_split.REFERENCE_SHAPE
    expected = cost["call_s"] + steps * (cost["step_s"] + rows * cost["cell_s"])
    assert ref["predicted_ms"] == pytest.approx(expected * 1e3, rel=1e-3, abs=0.02)
    json.dumps(result)  # what main writes


def test_it_says_what_to_run_without_training_shards(tmp_path, capsys):
    assert training_split.main(["--prep", str(tmp_path)]) == 2
    assert "run `make bench`" in capsys.readouterr().err
