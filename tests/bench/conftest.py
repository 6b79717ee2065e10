"""What the benchmarks' tests share: a small trained-shaped HAN on disk and documents for it."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def small_han(tmp_path):
    """``(model.keras path, documents)``: a small HAN saved as ``make bench`` saves one, and 300 documents of
    1-5 sentences of 1-11 words for it."""
    import keras

    from pipeline.config import ModelConfig
    from pipeline.model.han import build_han

    keras.utils.set_random_seed(0)
    config = ModelConfig(word_buckets=2, embedding={"dim": 16}, word_units=8, sentence_units=8,
                         word_attention={"context_dim": 8}, sentence_attention={"context_dim": 8})
    path = tmp_path / "model.keras"
    build_han(config, vocab_size=50, num_classes=3).save(path)
    rng = np.random.default_rng(0)
    documents = [[rng.integers(2, 50, int(n)).astype(np.int32) for n in rng.integers(1, 12, int(k))]
                 for k in rng.integers(1, 6, 300)]
    return path, documents
