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
  falling linearly over the run as in the reference implementation (floored at 1% of its
  start, where word2vec.c floors at 0.01%).

Under ``train.distribute`` every worker learns the same vectors from the seed before training.

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

from pipeline.data.batching import EncodedSplit
from pipeline.data.vocab import OOV, PAD

NOISE_TABLE = 1_000_000  # slots of the noise-word table


@dataclass
class Word2VecResult:
    vectors: np.ndarray  # float32 (vocab_size, dim)
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    pairs_per_epoch: int = 0
    seconds: float = 0.0


def token_counts(paths: list[Path], vocab_size: int) -> tuple[np.ndarray, list[int]]:
    """Each id's count over all shards, and each shard's number of tokens (one read per shard)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    sizes = []
    for path in paths:
        tokens = EncodedSplit.load(path).tokens
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        sizes.append(int(tokens.size))
    return counts, sizes


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
    counts, shard_tokens = token_counts(paths, vocab_size)
    counts[[PAD, OOV]] = 0
    total = counts.sum()
    if total == 0:
        raise ValueError("word2vec: the training split has no in-vocabulary words to learn from")
    frequency = counts / total
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(counts > 0, np.minimum(1.0, np.sqrt(subsample / frequency) + subsample / frequency), 0.0)
    # Noise words come from a table in which each word fills a share of the slots proportional
    # to count^0.75 (word2vec's unigram table): a uniform draw from it is a draw from that law.
    noise = counts.astype(np.float64) ** 0.75
    slots = np.floor(np.cumsum(noise / noise.sum()) * NOISE_TABLE).astype(np.int64)
    table = tf.constant(np.repeat(np.arange(vocab_size, dtype=np.int32), np.diff(np.concatenate([[0], slots]))))

    # Input vectors start small and random, output vectors at zero (as word2vec does).
    word_vectors = tf.Variable(((rng.random((vocab_size, dim)) - 0.5) / dim).astype(np.float32))
    context_vectors = tf.Variable(np.zeros((vocab_size, dim), dtype=np.float32))
    labels = tf.constant(np.eye(1, 1 + negatives, dtype=np.float32).repeat(batch_size, axis=0))

    ids, scalar = tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.float32)

    @tf.function(input_signature=[ids, ids, tf.TensorSpec((), tf.int32), scalar, scalar])
    def train_shard(words, contexts, seed, start_fraction, end_fraction):
        """Every full batch of one shard's pairs, in one graph (no Python between the steps)."""
        batches = tf.shape(words)[0] // batch_size
        total = tf.constant(0.0)
        for b in tf.range(batches):
            w_ids = words[b * batch_size:(b + 1) * batch_size]
            draws = tf.random.stateless_uniform((batch_size, negatives), seed=tf.stack([seed, b]), maxval=tf.shape(table)[0],
                                                dtype=tf.int32)
            targets = tf.concat([contexts[b * batch_size:(b + 1) * batch_size, None], tf.gather(table, draws)], axis=1)
            done = start_fraction + (end_fraction - start_fraction) * tf.cast(b, tf.float32) / tf.cast(batches, tf.float32)
            rate = learning_rate * tf.maximum(0.01, 1.0 - done)
            w = tf.gather(word_vectors, w_ids)  # (batch, dim)
            c = tf.gather(context_vectors, targets)  # (batch, 1 + negatives, dim)
            logits = tf.einsum("bd,bkd->bk", w, c)
            error = tf.sigmoid(logits) - labels  # d loss / d logits
            word_vectors.scatter_sub(tf.IndexedSlices(rate * tf.einsum("bk,bkd->bd", error, c), w_ids))
            context_vectors.scatter_sub(tf.IndexedSlices(rate * tf.reshape(tf.einsum("bk,bd->bkd", error, w), (-1, dim)),
                                                         tf.reshape(targets, (-1,))))
            loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            total += tf.reduce_sum(loss) / batch_size
        return total, batches

    corpus_tokens = max(1, sum(shard_tokens))
    result = Word2VecResult(vectors=np.zeros(0))
    for epoch in range(epochs):
        epoch_loss, epoch_batches, epoch_pairs, read = 0.0, 0, 0, 0
        for shard in rng.permutation(len(paths)):
            split = EncodedSplit.load(paths[shard])
            sentence_ids = np.repeat(np.arange(len(split.sentence_lengths)), split.sentence_lengths)
            tokens = split.tokens.astype(np.int64)
            kept = rng.random(len(tokens)) < keep[tokens]
            words, contexts = skipgram_pairs(tokens[kept], sentence_ids[kept], window, rng)
            order = rng.permutation(len(words))
            # The learning rate falls linearly over the run: where this shard starts and ends in it.
            start_fraction = (epoch + read / corpus_tokens) / epochs
            read += shard_tokens[shard]
            loss, batches = train_shard(tf.constant(words[order], tf.int32), tf.constant(contexts[order], tf.int32),
                                        tf.constant(int(rng.integers(2**31)), tf.int32),
                                        tf.constant(start_fraction, tf.float32),
                                        tf.constant((epoch + read / corpus_tokens) / epochs, tf.float32))
            epoch_loss += float(loss)
            epoch_batches += int(batches)
            epoch_pairs += len(words)
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
