"""Sharded splits and the streamed training batches: every document once per epoch, little padding, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.batching import EncodedSplit, pad_batch
from pipeline.data.shards import (
    ShardWriter,
    TrainingStream,
    load_split,
    shard_paths,
    steps_per_epoch,
    training_dataset,
    window_blocks,
)


def write_corpus(folder, documents: int = 300, shard_documents: int = 64, seed: int = 0) -> list[list[list[int]]]:
    """Random documents whose first token is ``1000 + index``, so a batch row says which document it is."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(folder, "train", shard_documents)
    corpus = []
    for i in range(documents):
        sentences = [rng.integers(2, 500, size=int(rng.integers(1, 40))).tolist() for _ in range(int(rng.integers(1, 30)))]
        sentences[0][0] = 1000 + i
        writer.add(sentences, label=i % 4, doc_id=f"d{i}")
        corpus.append(sentences)
    writer.close()
    return corpus


def stream(folder, documents=300, **options) -> TrainingStream:
    settings = {"batch_size": 16, "bucket_batches": 4, "seed": 7, "epoch": 0, "shuffle_buffer": 100, **options}
    return TrainingStream(shard_paths(folder, "train"), documents=documents, **settings)


def members(batch_tokens: np.ndarray) -> list[int]:
    return [int(row[0, 0]) - 1000 for row in batch_tokens]


def test_shards_hold_at_most_the_configured_documents_and_load_back_in_order(tmp_path):
    corpus = write_corpus(tmp_path, documents=150, shard_documents=64)
    assert [p.name for p in shard_paths(tmp_path, "train")] == ["train-00000.npz", "train-00001.npz", "train-00002.npz"]
    assert [len(EncodedSplit.load(p)) for p in shard_paths(tmp_path, "train")] == [64, 64, 22]
    split = load_split(tmp_path, "train")
    assert split.ids.tolist() == [f"d{i}" for i in range(150)]
    assert [[s.tolist() for s in doc] for doc in split.documents()] == corpus
    assert len(load_split(tmp_path, "validation")) == 0  # a split without shards is empty, not an error


@pytest.mark.parametrize(("documents", "batch_size", "bucket_batches", "shuffle_buffer"),
                         [(300, 16, 4, 100), (300, 32, 20, 10_000), (17, 16, 4, 5), (300, 7, 3, 1)])
def test_an_epoch_yields_every_document_once_in_the_announced_number_of_batches(tmp_path, documents, batch_size,
                                                                              bucket_batches, shuffle_buffer):
    write_corpus(tmp_path, documents)
    epoch = stream(tmp_path, documents, batch_size=batch_size, bucket_batches=bucket_batches, shuffle_buffer=shuffle_buffer)
    batches = list(epoch.batches())
    assert len(batches) == epoch.steps == steps_per_epoch(documents, batch_size, bucket_batches)
    seen = [m for tokens, _ in batches for m in members(tokens)]
    assert sorted(seen) == list(range(documents))
    assert all(1 <= len(labels) <= batch_size for _, labels in batches)
    for tokens, labels in batches:
        assert labels.tolist() == [m % 4 for m in members(tokens)]


def test_max_steps_ends_the_epoch_after_that_many_batches(tmp_path):
    write_corpus(tmp_path)
    epoch = stream(tmp_path, max_steps=5)
    assert epoch.steps == 5 < epoch.whole_epoch
    assert len(list(epoch.batches())) == 5


def test_the_order_is_reproducible_per_epoch_and_differs_between_epochs(tmp_path):
    write_corpus(tmp_path)

    def order(epoch):
        return [members(tokens) for tokens, _ in stream(tmp_path, epoch=epoch).batches()]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_windows_are_shuffled_together_as_far_as_the_shuffle_buffer_holds():
    assert window_blocks([64, 64, 64, 64, 44], 10_000) == [[0, 1, 2, 3, 4]]  # the split fits: one block
    assert window_blocks([64, 64, 64, 64, 44], 128) == [[0, 1], [2, 3], [4]]
    assert window_blocks([64, 64, 64], 100) == [[0], [1], [2]]  # a window larger than the buffer stands alone
    assert window_blocks([], 100) == []


def test_when_the_split_fits_the_buffer_batches_of_all_windows_interleave(tmp_path):
    write_corpus(tmp_path, documents=300, shard_documents=300)
    epoch = stream(tmp_path, 300, shuffle_buffer=300)  # windows of 16 x 4 = 64 documents
    # With one shard that fits the buffer, the documents' order is drawn whole before any batch.
    order = [members(pad_batch([doc]))[0] for doc, _ in epoch._documents(np.random.default_rng([7, 0]))]
    window_of = {document: position // 64 for position, document in enumerate(order)}
    windows = [window_of[members(tokens)[0]] for tokens, _ in epoch.batches()]
    assert all(len({window_of[m] for m in members(tokens)}) == 1 for tokens, _ in epoch.batches())  # sorted within one
    assert sorted(windows) != windows  # but not yielded window after window


def test_length_sorting_windows_pad_much_less_than_unsorted_batches(tmp_path):
    write_corpus(tmp_path, documents=640, shard_documents=640)
    bucketed, unsorted = stream(tmp_path, 640, batch_size=32, bucket_batches=20), stream(tmp_path, 640, batch_size=32, bucket_batches=1)
    for epoch in (bucketed, unsorted):
        for _ in epoch.batches():
            pass
    assert bucketed.padding_efficiency > 1.5 * unsorted.padding_efficiency, (bucketed.padding_efficiency,
                                                                             unsorted.padding_efficiency)


def test_replicas_on_two_workers_share_every_global_batch_and_no_share_is_empty(tmp_path):
    documents = 16 * 4 + 1  # the last document alone would leave a replica empty: it joins the batch before
    write_corpus(tmp_path, documents)
    workers = [list(stream(tmp_path, documents, batch_size=16, replicas=4, workers=2, worker=w).batches()) for w in (0, 1)]
    steps = steps_per_epoch(documents, 16, 4, replicas=4)
    assert [len(w) for w in workers] == [2 * steps, 2 * steps]  # two local replicas per worker per step
    assert all(len(labels) >= 1 for w in workers for _, labels in w)
    seen = sorted(m for w in workers for tokens, _ in w for m in members(tokens))
    assert seen == list(range(documents))


def test_class_weights_follow_each_document_and_the_dataset_matches_the_stream(tmp_path):
    write_corpus(tmp_path, 40)
    table = np.array([0.5, 1.0, 2.0, 4.0])
    produced = list(training_dataset(stream(tmp_path, 40, class_weights=table)))
    expected = list(stream(tmp_path, 40, class_weights=table).batches())
    assert len(produced) == len(expected)
    for (tokens, labels, weights), (e_tokens, e_labels, e_weights) in zip(produced, expected, strict=True):
        np.testing.assert_array_equal(tokens.numpy(), e_tokens)
        np.testing.assert_array_equal(labels.numpy(), e_labels)
        np.testing.assert_allclose(weights.numpy(), table[e_labels])
        np.testing.assert_allclose(e_weights, table[e_labels])


def test_the_training_dataset_starts_no_autotuning_thread(tmp_path):
    # fit makes a new iterator every epoch; destroying one joins tf.data's autotuning thread, which
    # held the train stage for seconds at some epoch ends (pipeline.data.batching.without_autotune).
    write_corpus(tmp_path, 40)
    dataset = training_dataset(stream(tmp_path, 40))
    assert dataset.options().autotune.enabled is False
    assert len(list(dataset)) == len(list(stream(tmp_path, 40).batches()))


def test_shards_that_disagree_with_the_manifest_say_to_preprocess_again(tmp_path):
    write_corpus(tmp_path, 40)
    with pytest.raises(RuntimeError, match="do not hold the 50 documents"):
        list(stream(tmp_path, 50).batches())
    with pytest.raises(RuntimeError, match="make preprocess"):
        list(stream(tmp_path, 30).batches())
