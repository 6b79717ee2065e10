"""Ragged encoded documents (the preprocess stage's shards, ``<split>-NNNNN.npz``) -> dense int batches padded only to their own maxima."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class EncodedSplit:
    """One split as written by preprocessing: flat token ids plus the lengths that cut them up.

    ``tokens`` (total_words,), ``sentence_lengths`` (total_sentences,), ``document_lengths``
    (documents,), ``labels`` (documents,), ``ids`` (documents,).
    """

    tokens: np.ndarray
    sentence_lengths: np.ndarray
    document_lengths: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    @classmethod
    def load(cls, path: Path) -> EncodedSplit:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in ("tokens", "sentence_lengths", "document_lengths", "labels", "ids")})

    def __len__(self) -> int:
        return len(self.labels)

    def documents(self) -> list[list[np.ndarray]]:
        """Each document as a list of sentence id arrays."""
        sentences = np.split(self.tokens, np.cumsum(self.sentence_lengths)[:-1]) if len(self.tokens) else []
        bounds = np.concatenate([[0], np.cumsum(self.document_lengths)])
        return [sentences[bounds[i] : bounds[i + 1]] for i in range(len(self))]


def pad_batch(documents: list[list[np.ndarray]]) -> np.ndarray:
    """Dense ``(batch, max_sentences, max_words)`` int32, 0 = padding, sized to this batch only."""
    max_sentences = max((len(doc) for doc in documents), default=0) or 1
    max_words = max((len(s) for doc in documents for s in doc), default=0) or 1
    batch = np.zeros((len(documents), max_sentences, max_words), dtype=np.int32)
    for i, doc in enumerate(documents):
        for j, sentence in enumerate(doc):
            batch[i, j, : len(sentence)] = sentence
    return batch


# --------------------------------------------------------------------------- batch plans and tf.data
def bucketed_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Document indices sorted by size (e.g. sentences x longest sentence) and cut into batches,
    so that each batch pads little (evaluation and validation; training streams its own
    shuffled, bucketed batches, ``pipeline.data.shards.TrainingStream``)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(lengths), batch_size)]


def document_sizes(split: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
    """Per document: number of sentences and its longest sentence (the two padded dimensions)."""
    starts = np.concatenate([[0], np.cumsum(split.document_lengths)[:-1]]).astype(np.int64)
    longest = np.zeros(len(split), dtype=np.int64)
    nonempty = split.document_lengths > 0
    if nonempty.any():
        longest[nonempty] = np.maximum.reduceat(split.sentence_lengths, starts[nonempty])
    return split.document_lengths.astype(np.int64), longest


def make_dataset(
    split: EncodedSplit,
    batches: list[np.ndarray],
    *,
    sample_weights: np.ndarray | None = None,
    with_labels: bool = True,
):
    """A ``tf.data.Dataset`` yielding ``(token_ids, labels[, weights])`` batch by batch, in plan order.

    The split lives in the pipeline as one ragged tensor ``(documents, sentences, words)``; each
    batch gathers its documents and pads them densely to the batch's own maxima (0 = padding),
    so no padding is stored and little is computed.
    """
    import tensorflow as tf

    ragged = tf.RaggedTensor.from_nested_row_lengths(
        tf.constant(split.tokens, dtype=tf.int32),
        [tf.constant(split.document_lengths, dtype=tf.int64), tf.constant(split.sentence_lengths, dtype=tf.int64)],
    )
    if not batches:
        raise ValueError("no batches to feed: the split is empty")
    plan = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(batches), dtype=tf.int64), tf.constant([len(b) for b in batches], dtype=tf.int64)
    )
    labels = tf.constant(split.labels)
    weights = None if sample_weights is None else tf.constant(sample_weights, dtype=tf.float32)

    def load(index):
        members = plan[index]
        tokens = tf.gather(ragged, members).to_tensor(default_value=0)
        tokens = tf.cast(tokens, tf.int32)
        if not with_labels:
            return (tokens,)
        if weights is None:
            return tokens, tf.gather(labels, members)
        return tokens, tf.gather(labels, members), tf.gather(weights, members)

    dataset = tf.data.Dataset.range(len(batches)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def without_autotune(dataset):
    """``dataset`` without tf.data's autotuning thread, for datasets that ``fit`` iterates once per epoch.

    Keras makes a new iterator of the training and validation data in every ``fit`` call (the
    train stage calls it once per epoch), and destroying an iterator joins its autotuning thread
    (``tf_data_model``). That join held the main thread for 5-7 s after some 200-step fits on
    IMDB batches, waiting in the iterator's destructor (py-spy's native stack); it may also be
    the ~52 s once seen outside the batches of an IMDB epoch (not shown). Without autotuning the
    thread is never started. These datasets need no tuning: padding a batch is cheap next to a
    training step (timed inside the train stage on IMDB: 0.4-0.6 s between the 704 steps of an
    epoch, README "The comparison").
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)

