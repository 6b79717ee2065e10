"""Inference over many documents at once, with the sentences of all of them packed by length.

The HAN's word level (embedding, word encoder, word attention) reads each sentence on its own, and its
sentence level reads each document's sentence vectors. ``PackedInference`` runs the two levels of a
trained model apart, with the model's own layers and weights:

1. the non-empty sentences of *all* the documents given (thousands, from every document at once) are
   sorted by length and cut into chunks of ``sentence_batch``; each chunk is padded only to its own
   longest sentence, so the word level does almost no work on padding at any document batch size;
2. the sentence vectors go back to their documents; the documents, sorted by sentence count, are cut
   into batches of ``document_batch`` and each batch is padded to its own longest document for the
   sentence encoder, the sentence attention and the output layer;
3. the results are put back in the documents' order.

Packing pays where there are many sentences to sort: below ``min_sentences`` (``PACK_MIN_SENTENCES``) the
whole model on padded batches of ``UNPACKED_BATCH`` documents sorted by size is faster (a request of a few
texts, a small test split), and ``outputs`` runs that instead; ``make bench-packing`` measures where the two
cross.

The outputs equal the whole model's (``model(token_ids)``) to float rounding: the word level of a
sentence depends on that sentence only, and a document's sentence level on its own sentence vectors
(empty sentences stay in place, masked, as ``ScatterSentences`` leaves them). ``tests/model/test_packing.py``
checks it for every encoder and attention option. Each level is one ``tf.function`` traced once per
process (free batch and length dimensions), whatever the sizes it meets.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

SENTENCE_BATCH = 1024  # sentences per word-level call: the fastest of 256 to 2,048 on IMDB's test split (make bench-inference-split)
DOCUMENT_BATCH = 1024  # documents per sentence-level call: fewer, longer-running steps of the sentence encoder
# Fewer real sentences than this run the whole model on padded batches: on 2 cores packing ran 0.46x as fast for 32
# IMDB reviews, 0.79x for 444, even for 3,000 (37,444 sentences), 1.17x for 25,000; BBC's 444 0.93x (make bench-packing).
PACK_MIN_SENTENCES = 32_768
UNPACKED_BATCH = 256  # documents per padded batch below PACK_MIN_SENTENCES (the benchmark's inference batch)


LEVEL_LAYERS = ("word_embedding", "word_encoder", "word_attention", "sentence_vectors", "sentence_attention", "probabilities")


def packable(model) -> bool:
    """Whether ``model`` has the named layers of ``pipeline.model.han.build_han`` that the two levels are made of
    (a HAN built otherwise, like the benchmark's reference, runs whole)."""
    names = {layer.name for layer in model.layers}
    return all(name in names for name in LEVEL_LAYERS)


def _sentence_lengths(documents: list[list[np.ndarray]]) -> np.ndarray:
    """Every sentence's length, the documents' sentences one after another (empty ones 0)."""
    return np.fromiter((len(s) for doc in documents for s in doc), dtype=np.int64)


class PackedInference:
    """``model``'s inference in two levels (above); ``outputs(documents)`` runs them.

    Also callable on a padded ``(batch, sentences, words)`` batch like ``model(token_ids,
    training=False)`` (the whole model as one traced graph), for callers that batch themselves.
    """

    def __init__(self, model, sentence_batch: int = SENTENCE_BATCH, document_batch: int = DOCUMENT_BATCH,
                 threads: int | None = None, min_sentences: int = PACK_MIN_SENTENCES):
        import tensorflow as tf

        from pipeline.model.recurrent import BiGRU

        self.model = model
        self.sentence_batch, self.document_batch = int(sentence_batch), int(document_batch)
        self.threads = threads or os.cpu_count() or 1
        self.min_sentences = int(min_sentences)
        embedding, word_encoder = model.get_layer("word_embedding"), model.get_layer("word_encoder")
        word_attention, sentence_attention = model.get_layer("word_attention"), model.get_layer("sentence_attention")
        output = model.get_layer("probabilities")
        names = {layer.name for layer in model.layers}
        sentence_encoder = model.get_layer("sentence_encoder") if "sentence_encoder" in names else None  # none: no context
        word_ids = isinstance(word_encoder, BiGRU)  # the BiGRU projects each distinct word once at inference
        self.vector_size = int(model.get_layer("sentence_vectors").output.shape[-1])  # what the word level gives

        @tf.function(input_signature=[tf.TensorSpec((None, None, None), tf.int32, name="token_ids")])
        def whole(token_ids):
            return model(token_ids, training=False)

        @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32, name="sentence_ids")])
        def words(sentence_ids):
            mask = tf.not_equal(sentence_ids, 0)
            states = word_encoder(embedding(sentence_ids), mask=mask, **({"token_ids": sentence_ids} if word_ids else {}))
            return word_attention(states, mask=mask)

        @tf.function(input_signature=[tf.TensorSpec((None, None, self.vector_size), tf.float32, name="sentence_vectors"),
                                      tf.TensorSpec((None, None), tf.bool, name="sentence_mask")])
        def sentences(vectors, mask):
            states = vectors if sentence_encoder is None else sentence_encoder(vectors, mask=mask)
            document, weights = sentence_attention(states, mask=mask)
            return output(document), weights

        self._whole, self._words, self._sentences = whole, words, sentences

    def __call__(self, token_ids):
        return self._whole(token_ids)

    def packs(self, documents: list[list[np.ndarray]]) -> bool:
        """Whether ``outputs`` packs these documents' sentences (``min_sentences`` real ones or more) or runs the
        whole model on padded batches."""
        return self._packs(_sentence_lengths(documents))

    def _packs(self, flat_lengths: np.ndarray) -> bool:
        return int(np.count_nonzero(flat_lengths)) >= self.min_sentences

    def outputs(self, documents: list[list[np.ndarray]], between: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """One result per document, in order: ``probabilities``, ``sentence_weights`` (its sentences only) and
        ``word_weights`` (its words only), as ``pipeline.model.han.document_outputs`` describes them; ``between``
        runs in this thread before each round of chunks or batches. Below ``min_sentences`` real sentences, the
        whole model on padded batches (the same outputs, faster there)."""
        flat_lengths = _sentence_lengths(documents)
        if not self._packs(flat_lengths):
            from pipeline.model.han import document_outputs

            return document_outputs(self, documents, UNPACKED_BATCH, packed=False, between=between)
        real = np.flatnonzero(flat_lengths > 0)
        order = real[np.argsort(flat_lengths[real], kind="stable")]

        vectors = np.zeros((len(flat_lengths), self.vector_size), dtype=np.float32)
        word_weights: list[np.ndarray] = [np.zeros(0)] * len(flat_lengths)
        # Every word of every sentence in one array, so that a chunk is padded by numpy indexing, not a loop
        # per sentence (the threads share one interpreter: its time is the cores' time).
        tokens = np.concatenate([s for doc in documents for s in doc]).astype(np.int32, copy=False) if len(real) else None
        offsets = np.cumsum(flat_lengths) - flat_lengths  # where each sentence starts in tokens

        def encode(chunk: np.ndarray) -> None:
            longest = int(flat_lengths[chunk[-1]])  # sorted: the chunk's last is its longest
            columns = np.arange(longest)
            inside = columns[None, :] < flat_lengths[chunk][:, None]
            ids = np.zeros((len(chunk), longest), dtype=np.int32)
            ids[inside] = tokens[(offsets[chunk][:, None] + columns[None, :])[inside]]
            chunk_vectors, chunk_weights = self._words(ids)
            vectors[chunk] = np.asarray(chunk_vectors)
            chunk_weights = np.asarray(chunk_weights, dtype=np.float64)
            for row, flat in enumerate(chunk):
                word_weights[flat] = chunk_weights[row, : flat_lengths[flat]]

        self._each([order[start : start + self.sentence_batch] for start in range(0, len(order), self.sentence_batch)],
                   encode, between)

        starts = np.concatenate([[0], np.cumsum([len(doc) for doc in documents])]).astype(np.int64)
        counts = np.asarray([len(doc) for doc in documents], dtype=np.int64)
        results: list[dict[str, Any]] = [{} for _ in documents]

        def classify(members: np.ndarray) -> None:
            width = max(1, int(counts[members].max()))
            batch = np.zeros((len(members), width, vectors.shape[1]), dtype=np.float32)
            mask = np.zeros((len(members), width), dtype=bool)
            for row, doc in enumerate(members):
                span = slice(starts[doc], starts[doc + 1])
                batch[row, : counts[doc]] = vectors[span]
                mask[row, : counts[doc]] = flat_lengths[span] > 0
            probabilities, weights = self._sentences(batch, mask)
            probabilities, weights = np.asarray(probabilities, dtype=np.float64), np.asarray(weights, dtype=np.float64)
            for row, doc in enumerate(members):
                results[doc] = {"probabilities": probabilities[row], "sentence_weights": weights[row, : counts[doc]],
                                "word_weights": word_weights[starts[doc] : starts[doc + 1]]}

        by_count = np.argsort(counts, kind="stable")
        self._each([by_count[start : start + self.document_batch] for start in range(0, len(by_count), self.document_batch)],
                   classify, between)
        return results

    def warm_up(self, documents: list[list[np.ndarray]]) -> None:
        """Trace both ways ``outputs`` may run (the whole model, and the two levels apart) on a few documents, so
        that a timed pass times the work, not the tracing."""
        from pipeline.model.han import document_outputs

        document_outputs(self, documents, UNPACKED_BATCH, packed=False)
        floor, self.min_sentences = self.min_sentences, 0
        try:
            self.outputs(documents)
        finally:
            self.min_sentences = floor

    def _each(self, parts: list[np.ndarray], work, between: Callable[[], None] | None) -> None:
        """``work`` on every part, as many side by side as there are cores (with one thread per op,
        ``runtime.intra_op_threads`` 1, the CPU configs' setting, one call uses one core); ``between`` before
        each round, here, where a request's deadline can be read."""
        threads = min(self.threads, len(parts)) or 1
        with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
            for start in range(0, len(parts), threads):
                if between is not None:
                    between()
                round_ = parts[start : start + threads]
                if pool is None:
                    work(round_[0])
                else:
                    list(pool.map(work, round_))

    def padding(self, documents: list[list[np.ndarray]]) -> dict[str, float]:
        """The share of padded cells the word level still computes on for ``documents``, over its sentence chunks."""
        flat_lengths = np.asarray([len(s) for doc in documents for s in doc if len(s)], dtype=np.int64)
        if not len(flat_lengths):
            return {"packed_word_padding": 0.0}
        ordered = np.sort(flat_lengths)
        cells = sum(int(ordered[min(i + self.sentence_batch, len(ordered)) - 1]) * len(ordered[i : i + self.sentence_batch])
                    for i in range(0, len(ordered), self.sentence_batch))
        return {"packed_word_padding": round(1.0 - float(ordered.sum()) / cells, 4)}
