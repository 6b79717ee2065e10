"""The word vocabulary (pipeline.data.vocab): reserved ids, limits, determinism, persistence."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from pipeline.data.vocab import OOV, OOV_TOKEN, PAD, PAD_TOKEN, Vocabulary

# "the" x5, "cat" x3, "sat" x3, "mat" x2, "on" x2, "a" x1, "dog" x1
DOCUMENTS = [
    [["the", "cat", "sat"], ["on", "the", "mat"]],
    [["the", "cat", "sat", "on", "a", "mat"]],
    [["the", "dog"], ["the", "cat", "sat"]],
]


def test_reserved_ids():
    vocab = Vocabulary.build(DOCUMENTS, min_count=1, max_size=100)
    assert (PAD, OOV) == (0, 1)
    assert vocab.tokens[:2] == [PAD_TOKEN, OOV_TOKEN]


def test_order_is_count_descending_then_token_ascending():
    vocab = Vocabulary.build(DOCUMENTS, min_count=1, max_size=100)
    assert vocab.tokens == [PAD_TOKEN, OOV_TOKEN, "the", "cat", "sat", "mat", "on", "a", "dog"]
    assert vocab.counts == {"the": 5, "cat": 3, "sat": 3, "mat": 2, "on": 2, "a": 1, "dog": 1}
    assert len(vocab) == 9
    assert vocab.corpus_tokens == 17 and vocab.corpus_types == 7


def test_ids_do_not_depend_on_document_order():
    shuffled = list(DOCUMENTS)
    random.Random(0).shuffle(shuffled)
    shuffled = [list(reversed(doc)) for doc in shuffled]
    assert Vocabulary.build(shuffled, 1, 100) == Vocabulary.build(DOCUMENTS, 1, 100)


def test_min_count_is_respected():
    vocab = Vocabulary.build(DOCUMENTS, min_count=2, max_size=100)
    assert vocab.tokens[2:] == ["the", "cat", "sat", "mat", "on"]
    assert vocab.encode(["dog"]) == [OOV]


def test_max_size_includes_pad_and_oov():
    vocab = Vocabulary.build(DOCUMENTS, min_count=1, max_size=4)
    assert len(vocab) == 4
    assert vocab.tokens == [PAD_TOKEN, OOV_TOKEN, "the", "cat"]
    with pytest.raises(ValueError, match=">= 3"):
        Vocabulary.build(DOCUMENTS, min_count=1, max_size=2)
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(DOCUMENTS, min_count=0, max_size=10)


def test_encoding_maps_unknown_words_to_oov():
    vocab = Vocabulary.build(DOCUMENTS, min_count=2, max_size=100)
    assert vocab.encode(["the", "zebra", "cat"]) == [2, OOV, 3]
    assert "the" in vocab and "zebra" not in vocab


def test_reserved_names_in_text_are_words_not_padding():
    counts = Counter({"<pad>": 9, "<oov>": 9, "word": 3})
    vocab = Vocabulary.from_counts(counts, min_count=1, max_size=10)
    assert vocab.tokens == [PAD_TOKEN, OOV_TOKEN, "word"]
    assert vocab.encode(["<pad>", "<oov>", "word"]) == [OOV, OOV, 2]


def test_oov_rate():
    vocab = Vocabulary.build(DOCUMENTS, min_count=2, max_size=100)
    assert vocab.oov_rate(DOCUMENTS) == pytest.approx(2 / 17)  # "a" and "dog"
    assert vocab.oov_rate([[["zebra", "the"]]]) == 0.5
    assert vocab.oov_rate([]) == 0.0


def test_from_counts_merged_from_workers_equals_build():
    halves = [DOCUMENTS[:1], DOCUMENTS[1:]]
    merged: Counter[str] = Counter()
    for part in halves:
        merged += Counter(token for doc in part for sentence in doc for token in sentence)
    for min_count, max_size in [(1, 100), (2, 100), (1, 5)]:
        assert Vocabulary.from_counts(merged, min_count, max_size) == Vocabulary.build(DOCUMENTS, min_count, max_size)


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(DOCUMENTS, min_count=1, max_size=6)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["tokens"] == vocab.tokens and data["min_count"] == 1 and data["max_size"] == 6
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert [loaded.encode(sentence) for sentence in DOCUMENTS[1]] == [vocab.encode(sentence) for sentence in DOCUMENTS[1]]


def test_broken_files_are_refused(tmp_path):
    data = Vocabulary.build(DOCUMENTS, 1, 100).to_json()
    path = tmp_path / "vocab.json"
    for broken, message in [
        ({**data, "tokens": ["the", *data["tokens"][1:]]}, "starts with"),
        ({**data, "counts": data["counts"][:-1]}, "counts"),
        ({**data, "tokens": [*data["tokens"][:-1], "the"]}, "repeated"),
        ({**data, "version": 7}, "version"),
        ({k: v for k, v in data.items() if k != "max_size"}, "max_size"),
    ]:
        path.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            Vocabulary.load(path)
    with pytest.raises(FileNotFoundError, match="run preprocessing"):
        Vocabulary.load(tmp_path / "missing.json")
