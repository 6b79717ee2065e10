"""Word vectors learned from the training split before the HAN trains (``model.embedding.word2vec``).

Yang et al. initialise the HAN's embeddings with word2vec trained on the training and validation
documents; this module does that for the training split, so nothing from the test split leaks in.
It is skip-gram with negative sampling (Mikolov et al., 2013), written in TensorFlow:

- frequent words are subsampled (a token of relative frequency ``f`` is kept with probability
  ``sqrt(t / f) + t / f``, ``t`` = ``subsample``), then every kept token predicts the tokens up to
  a random ``1..window`` positions away in the same sentence;
- each (word, context) pair is scored ``sigmoid(w . c)`` against ``negatives`` words drawn from
  the unigram distribution raised to 3/4;
- plain SGD updates only the rows a batch touches (``scatter_sub``), with the learning rate
  falling linearly to 1% of its start over the run, as the reference implementation does.

Padding (id 0) and out-of-vocabulary tokens (id 1) neither predict nor are predicted; their rows
come back as zeros and as the mean vector. Everything is drawn from ``seed``: the same shards and
settings give the same vectors (on CPU). Shards are read one at a time, so memory follows the
largest shard, not the corpus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.batching import EncodedSplit
from pipeline.vocab import OOV, PAD


@dataclass
class Word2VecResult:
    vectors: np.ndarray  # float32 (vocab_size, dim)
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    pairs_per_epoch: int = 0
    seconds: float = 0.0


def token_counts(paths: list[Path], vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for path in paths:
        counts += np.bincount(EncodedSplit.load(path).tokens, minlength=vocab_size)[:vocab_size]
    return counts


def skipgram_pairs(tokens: np.ndarray, sentence_ids: np.ndarray, window: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(word, context) id pairs within each sentence, with word2vec's shrunk random window.

    ``tokens`` and ``sentence_ids`` are aligned flat arrays (subsampled already). Each token draws
    its window ``b`` in ``1..window`` and pairs with the tokens at distance ``<= b`` on both sides.
    """
    spans = rng.integers(1, window + 1, size=len(tokens))
    words, contexts = [], []
    for distance in range(1, window + 1):
        if distance >= len(tokens):
            break
        same = sentence_ids[:-distance] == sentence_ids[distance:]
        left, right = np.nonzero(same & (spans[:-distance] >= distance))[0], np.nonzero(same & (spans[distance:] >= distance))[0]
        words += [tokens[left], tokens[right + distance]]
        contexts += [tokens[left + distance], tokens[right]]
    if not words:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(words), np.concatenate(contexts)


def train_word2vec(
    paths: list[Path],
    vocab_size: int,
    dim: int,
    *,
    epochs: int = 5,
    window: int = 5,
    negatives: int = 5,
    subsample: float = 1e-3,
    learning_rate: float = 0.025,
    batch_size: int = 1024,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Word2VecResult:
    """Skip-gram vectors for ids ``0..vocab_size-1`` from the encoded shards at ``paths``."""
    import tensorflow as tf

    started = time.perf_counter()
    rng = np.random.default_rng([seed, 2016])
    counts = token_counts(paths, vocab_size)
    counts[[PAD, OOV]] = 0
    total = counts.sum()
    if total == 0:
        raise ValueError("word2vec: the training split has no in-vocabulary words to learn from")
    frequency = counts / total
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(counts > 0, np.minimum(1.0, np.sqrt(subsample / frequency) + subsample / frequency), 0.0)
    noise = counts.astype(np.float64) ** 0.75
    noise /= noise.sum()
    noise_cdf = np.cumsum(noise)

    # Input vectors start small and random, output vectors at zero (as word2vec does).
    word_vectors = tf.Variable(((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32))
    context_vectors = tf.Variable(np.zeros((vocab_size, dim), dtype=np.float32))

    @tf.function(reduce_retracing=True)
    def step(words, targets, labels, rate):
        w = tf.gather(word_vectors, words)  # (batch, dim)
        c = tf.gather(context_vectors, targets)  # (batch, 1 + negatives, dim)
        logits = tf.einsum("bd,bkd->bk", w, c)
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        error = tf.sigmoid(logits) - labels  # d loss / d logits
        grad_w = tf.einsum("bk,bkd->bd", error, c)
        grad_c = tf.einsum("bk,bd->bkd", error, w)
        word_vectors.scatter_sub(tf.IndexedSlices(rate * grad_w, words))
        context_vectors.scatter_sub(tf.IndexedSlices(rate * tf.reshape(grad_c, (-1, dim)), tf.reshape(targets, (-1,))))
        return tf.reduce_sum(tf.reduce_mean(loss, axis=0))

    labels = np.zeros((batch_size, 1 + negatives), dtype=np.float32)
    labels[:, 0] = 1.0
    planned = None  # total batches of the run, known after the first epoch; the rate decays over it
    done = 0
    result = Word2VecResult(vectors=np.zeros(0))
    for epoch in range(epochs):
        epoch_loss, epoch_batches, epoch_pairs = 0.0, 0, 0
        for shard in rng.permutation(len(paths)):
            split = EncodedSplit.load(paths[shard])
            sentence_ids = np.repeat(np.arange(len(split.sentence_lengths)), split.sentence_lengths)
            tokens = split.tokens.astype(np.int64)
            kept = rng.random(len(tokens)) < keep[tokens]
            words, contexts = skipgram_pairs(tokens[kept], sentence_ids[kept], window, rng)
            order = rng.permutation(len(words))
            words, contexts = words[order], contexts[order]
            epoch_pairs += len(words)
            for start in range(0, len(words) - batch_size + 1, batch_size):
                batch_words = words[start:start + batch_size]
                noise_ids = np.minimum(np.searchsorted(noise_cdf, rng.random((batch_size, negatives))), vocab_size - 1)
                targets = np.concatenate([contexts[start:start + batch_size, None], noise_ids], axis=1)
                fraction = done / planned if planned else epoch / max(epochs, 1)
                rate = np.float32(learning_rate * max(0.01, 1.0 - fraction))
                epoch_loss += float(step(tf.constant(batch_words), tf.constant(targets), tf.constant(labels), rate))
                epoch_batches += 1
                done += 1
        if planned is None:
            planned = max(1, epoch_batches * epochs)
        result.losses.append(epoch_loss / max(epoch_batches, 1))
        result.pairs_per_epoch = epoch_pairs
        if progress:
            progress(f"word2vec: epoch {epoch + 1}/{epochs}  loss {result.losses[-1]:.4f}  {epoch_pairs:,} pairs  "
                     f"{time.perf_counter() - started:.0f}s")

    vectors = word_vectors.numpy()
    seen = counts > 0
    vectors[~seen] = vectors[seen].mean(axis=0) if seen.any() else 0.0
    vectors[PAD] = 0.0
    result.vectors = vectors.astype(np.float32)
    result.seconds = time.perf_counter() - started
    return result


def nearest_neighbours(vectors: np.ndarray, tokens: list[str], queries: list[int], k: int = 8) -> dict[str, list[str]]:
    """The ``k`` most cosine-similar tokens to each query id (a readable check of the vectors)."""
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    out = {}
    for query in queries:
        similarity = unit @ unit[query]
        similarity[[PAD, OOV, query]] = -np.inf
        out[tokens[query]] = [tokens[i] for i in np.argsort(-similarity)[:k]]
    return out
