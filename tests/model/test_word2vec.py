"""Skip-gram word2vec on the training shards (``model.embedding.word2vec``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.shards import ShardWriter
from pipeline.model.word2vec import nearest_neighbours, skipgram_pairs, train_word2vec

# ids 0 (pad) and 1 (oov) are reserved; two topics whose words only ever meet their own topic's words
TOPIC_A, TOPIC_B = list(range(2, 12)), list(range(12, 22))


def _corpus(directory, documents: int = 200, shard_documents: int = 70) -> list:
    rng = np.random.default_rng(0)
    writer = ShardWriter(directory, "train", shard_documents)
    for d in range(documents):
        topic = TOPIC_A if d % 2 else TOPIC_B
        sentences = [[int(t) for t in rng.choice(topic, size=8)] + [1] for _ in range(6)]  # an oov at each end
        writer.add(sentences, d % 2, f"doc{d}")
    return writer.close()


def test_pairs_stay_inside_sentences_and_the_window():
    tokens = np.array([5, 6, 7, 8, 9])
    sentences = np.array([0, 0, 0, 1, 1])
    words, contexts = skipgram_pairs(tokens, sentences, window=1, rng=np.random.default_rng(0))
    # window 1: every span is 1, so exactly the neighbours within each sentence, both ways
    assert sorted(zip(words.tolist(), contexts.tolist(), strict=True)) == [(5, 6), (6, 5), (6, 7), (7, 6), (8, 9), (9, 8)]
    words, contexts = skipgram_pairs(tokens, sentences, window=4, rng=np.random.default_rng(0))
    same_sentence = {(5, 6), (5, 7), (6, 7), (8, 9)}
    assert {tuple(sorted(p)) for p in zip(words.tolist(), contexts.tolist(), strict=True)} <= same_sentence


def test_words_of_one_topic_end_up_neighbours(tmp_path):
    paths = _corpus(tmp_path)
    assert len(paths) == 3  # read shard by shard
    result = train_word2vec(paths, 22, 16, epochs=5, window=3, negatives=3, subsample=1.0, batch_size=256, seed=1)
    assert result.vectors.shape == (22, 16) and result.vectors.dtype == np.float32
    assert not result.vectors[0].any()  # padding stays zero
    assert result.losses[-1] < result.losses[0]
    tokens = [f"w{i}" for i in range(22)]
    neighbours = nearest_neighbours(result.vectors, tokens, [3, 15], k=5)
    assert all(int(w[1:]) in TOPIC_A for w in neighbours["w3"]), neighbours
    assert all(int(w[1:]) in TOPIC_B for w in neighbours["w15"]), neighbours


def test_the_seed_fixes_the_vectors(tmp_path):
    paths = _corpus(tmp_path, documents=60)
    first = train_word2vec(paths, 22, 8, epochs=1, batch_size=128, seed=3).vectors
    again = train_word2vec(paths, 22, 8, epochs=1, batch_size=128, seed=3).vectors
    other = train_word2vec(paths, 22, 8, epochs=1, batch_size=128, seed=4).vectors
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_a_split_without_known_words_is_a_clear_error(tmp_path):
    writer = ShardWriter(tmp_path, "train", 10)
    writer.add([[1, 1, 1]], 0, "only-oov")
    with pytest.raises(ValueError, match="no in-vocabulary words"):
        train_word2vec(writer.close(), 5, 4, epochs=1)


def test_vectors_from_a_file_and_from_word2vec_exclude_each_other():
    with pytest.raises(ConfigError, match="either pretrained_path .* or word2vec.epochs"):
        load_config(overrides=["model.embedding.pretrained_path=vectors.txt", "model.embedding.word2vec.epochs=3"])
