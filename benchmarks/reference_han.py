"""The reference HAN of the benchmark: built the way public Keras HANs are.

Every document is padded (or cut) to ``MAX_SENTENCES`` x ``MAX_WORDS`` (15 x 40) token ids;
there are no masks, so padding words and padding sentences are encoded and attended to like
real ones; the word encoder runs under ``TimeDistributed`` over all 15 sentence slots. Layer
sizes are taken from our config (embedding dim, GRU units per direction, attention context
dim), so the comparison is like for like. The attention layer is the usual ``AttLayer``:
``u = tanh(x W + b)``, ``a = softmax(u . v)``, output ``sum_t a_t x_t``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

MAX_SENTENCES, MAX_WORDS = 15, 40


class AttLayer(keras.layers.Layer):
    """Additive attention pooling without a mask (as in the public implementations)."""

    def __init__(self, context_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.context_dim = context_dim

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        self.W = self.add_weight(name="W", shape=(features, self.context_dim), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.context_dim,), initializer="zeros")
        self.v = self.add_weight(name="v", shape=(self.context_dim,), initializer="glorot_uniform")

    def call(self, x):
        u = ops.tanh(ops.matmul(x, self.W) + self.b)
        weights = ops.softmax(ops.tensordot(u, self.v, axes=1), axis=-1)
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1), weights

    def get_config(self) -> dict:
        return {**super().get_config(), "context_dim": self.context_dim}


def build_reference_han(vocab_size: int, num_classes: int, *, embedding_dim: int, word_units: int,
                        sentence_units: int, word_context: int, sentence_context: int) -> keras.Model:
    """Outputs ``probabilities`` and the ``sentence_weights`` over the 15 slots (for explain latency)."""
    words = keras.Input((MAX_WORDS,), dtype="int32", name="words")
    embedded = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(words)
    encoded = keras.layers.Bidirectional(keras.layers.GRU(word_units, return_sequences=True), name="word_gru")(embedded)
    sentence_vector, _ = AttLayer(word_context, name="word_attention")(encoded)
    sentence_encoder = keras.Model(words, sentence_vector, name="sentence_encoder")

    document = keras.Input((MAX_SENTENCES, MAX_WORDS), dtype="int32", name="document")
    sentences = keras.layers.TimeDistributed(sentence_encoder, name="sentences")(document)
    encoded_sentences = keras.layers.Bidirectional(keras.layers.GRU(sentence_units, return_sequences=True),
                                                   name="sentence_gru")(sentences)
    document_vector, sentence_weights = AttLayer(sentence_context, name="sentence_attention")(encoded_sentences)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(document_vector)
    return keras.Model(document, {"probabilities": probabilities, "sentence_weights": sentence_weights},
                       name="reference_han")


def pad_fixed(documents: list[list[np.ndarray]]) -> np.ndarray:
    """Documents (lists of sentence id arrays) padded or cut to ``MAX_SENTENCES`` x ``MAX_WORDS``."""
    out = np.zeros((len(documents), MAX_SENTENCES, MAX_WORDS), dtype=np.int32)
    for d, document in enumerate(documents):
        for s, sentence in enumerate(document[:MAX_SENTENCES]):
            kept = sentence[:MAX_WORDS]
            out[d, s, : len(kept)] = kept
    return out
