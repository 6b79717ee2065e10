"""A saved ``.keras`` HAN loads in a fresh process with ``safe_mode=True`` and gives identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from test_model import small_config  # the same small HAN as the behavioural tests

from pipeline.model.han import OUTPUT_NAMES, build_han, compile_han, load_pretrained_embeddings

# Keras' own variable -> numpy conversion while saving, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 30
NUM_CLASSES = 3

# Each variant saved and reloaded; together they cover every custom layer and option.
VARIANTS = {
    "default_trained": {},
    "lstm_transformer_multihead_gumbel": {
        "word_encoder": "lstm",
        "sentence_encoder": "transformer",
        "word_attention": {"score": "general", "heads": 2},
        "sentence_attention": {"score": "scaled_dot", "mode": "hard", "hard_training": "gumbel", "hard_k": 2},
    },
    "location_local_multilabel": {
        "multilabel": True,
        "word_attention": {"score": "location", "mode": "local"},
        "sentence_attention": {"score": "dot", "mode": "local", "local_window": 0},
    },
    "pretrained_frozen": {"embedding": {"dim": 4, "pretrained_path": "vectors.txt", "trainable": False}},
    # SplitByLength, MergeBuckets (both kinds), RowCount and the penalty_rows call argument.
    "length_groups_entropy": {"word_buckets": 3, "word_bucket_sentences": 2, "word_attention": {"entropy_penalty": 0.1}},
    # DistinctWords and the BiGRU's index call argument; TakeRows for the LSTM.
    "word_type_dropout": {"embedding_dropout": "word_type", "word_buckets": 2, "word_bucket_sentences": 2},
    "word_type_dropout_lstm": {"embedding_dropout": "word_type", "word_encoder": "lstm"},
}

LOAD_AND_PREDICT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import pipeline.model.han  # registers the custom layers ("han>...")

    folder = sys.argv[1]
    token_ids = np.load(f"{folder}/token_ids.npy")
    for name in sys.argv[2:]:
        model = keras.saving.load_model(f"{folder}/{name}.keras", safe_mode=True)
        outputs = model(token_ids, training=False)
        np.savez(f"{folder}/{name}.loaded.npz", **{key: np.asarray(value) for key, value in outputs.items()})
    """
)




def token_batch(seed: int = 0) -> np.ndarray:
    """Random documents with padded words, empty sentences and an empty document."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, VOCAB_SIZE, (4, 5, 7)).astype("int32")
    token_ids[0, 3:] = 0
    token_ids[1, :, 4:] = 0
    token_ids[1, 2] = 0
    token_ids[2] = 0
    return token_ids


def save_variant(name: str, folder: Path, token_ids: np.ndarray) -> dict[str, np.ndarray]:
    config = small_config(**VARIANTS[name])
    matrix = None
    if config.embedding.pretrained_path:
        vectors = folder / "vectors.txt"
        vectors.write_text("a 1 2 3 4\nb 5 6 7 8\n", encoding="utf-8")
        tokens = ["<pad>", "<oov>", "a", "b"] + [f"w{i}" for i in range(VOCAB_SIZE - 4)]
        matrix, _ = load_pretrained_embeddings(vectors, tokens, dim=4)
    model = build_han(config, VOCAB_SIZE, NUM_CLASSES, embedding_matrix=matrix)
    if name == "default_trained":
        trainer = compile_han(model, config, learning_rate=1e-2)
        trainer.fit(token_ids, np.array([0, 1, 2, 1]), epochs=2, verbose=0)
    model.save(folder / f"{name}.keras")
    return {key: np.asarray(value) for key, value in model(token_ids, training=False).items()}


def test_saved_models_load_in_a_fresh_process_with_safe_mode_and_give_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    token_ids = token_batch()
    np.save(tmp_path / "token_ids.npy", token_ids)
    expected = {name: save_variant(name, tmp_path, token_ids) for name in VARIANTS}

    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path), *VARIANTS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    for name in VARIANTS:
        loaded = np.load(tmp_path / f"{name}.loaded.npz")
        assert sorted(loaded.files) == sorted(OUTPUT_NAMES)
        for output in OUTPUT_NAMES:
            np.testing.assert_array_equal(loaded[output], expected[name][output], err_msg=f"{name}/{output}")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_saved_config_has_only_registered_layers_and_no_lambda(name, tmp_path):
    token_ids = token_batch()
    save_variant(name, tmp_path, token_ids)
    model = keras.saving.load_model(tmp_path / f"{name}.keras", safe_mode=True)
    config = json.dumps(keras.saving.serialize_keras_object(model))

    assert "Lambda" not in config
    assert '"registered_name": "han>GatherSentences"' in config
    assert '"registered_name": "han>ScatterSentences"' in config
    if VARIANTS[name].get("word_buckets", 1) > 1:
        assert '"registered_name": "han>SplitByLength"' in config and '"registered_name": "han>RowCount"' in config
    # The in-process reload is also exact and keeps the model's config.
    assert model.get_config() == keras.saving.load_model(tmp_path / f"{name}.keras").get_config()
