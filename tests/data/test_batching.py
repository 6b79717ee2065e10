"""Length-bucketed batch plans and the tf.data input: every document once, little padding, reproducible order."""

from __future__ import annotations

import numpy as np

from pipeline.data.batching import (
    EncodedSplit,
    bucketed_batches,
    document_sizes,
    make_dataset,
    pad_batch,
)


def random_split(documents: int = 300, seed: int = 0) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    document_lengths = rng.integers(1, 30, size=documents).astype(np.int32)
    sentence_lengths = rng.integers(1, 40, size=int(document_lengths.sum())).astype(np.int32)
    tokens = rng.integers(2, 500, size=int(sentence_lengths.sum())).astype(np.int32)
    return EncodedSplit(tokens=tokens, sentence_lengths=sentence_lengths, document_lengths=document_lengths,
                        labels=rng.integers(0, 4, size=documents).astype(np.int32),
                        ids=np.asarray([f"d{i}" for i in range(documents)]))


def test_document_sizes_are_sentences_and_longest_sentence():
    split = random_split(20)
    sentences, longest = document_sizes(split)
    for i, doc in enumerate(split.documents()):
        assert sentences[i] == len(doc)
        assert longest[i] == max(len(s) for s in doc)


def test_every_document_is_in_exactly_one_batch_sorted_by_size():
    split = random_split()
    sentences, longest = document_sizes(split)
    batches = bucketed_batches(sentences * longest, 32)
    members = np.concatenate(batches)
    assert sorted(members.tolist()) == list(range(len(split)))
    assert all(1 <= len(b) <= 32 for b in batches)
    assert np.all(np.diff((sentences * longest)[members]) >= 0)


def test_dataset_batches_equal_padding_the_member_documents():
    split = random_split(50)
    sizes = np.prod(document_sizes(split), axis=0)
    batches = bucketed_batches(sizes, 8)
    weights = np.linspace(0.5, 2.0, len(split))
    documents = split.documents()
    produced = list(make_dataset(split, batches, sample_weights=weights))
    assert len(produced) == len(batches)
    for (tokens, labels, w), members in zip(produced, batches, strict=True):
        expected = pad_batch([documents[i] for i in members])
        assert tokens.shape == expected.shape  # padded to this batch's maxima only
        np.testing.assert_array_equal(tokens.numpy(), expected)
        np.testing.assert_array_equal(labels.numpy(), split.labels[members])
        np.testing.assert_allclose(w.numpy(), weights[members], rtol=1e-6)
