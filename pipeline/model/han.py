"""The Hierarchical Attention Network (Yang et al., NAACL 2016): token ids -> class probabilities,
with the sentence and word attention weights of the same forward pass.

Input: int ``token_ids`` of shape ``(batch, sentences, words)``; both inner sizes are free (the
input pipeline pads each batch to its own maxima). Id 0 is padding, 1 is the OOV token.

How padding is skipped (no compute on padded sentences):

1. ``GatherSentences`` finds the non-empty sentences of the whole batch (a sentence is empty when
   all its ids are 0) and gathers them into one flat batch ``(real_sentences, words)`` together
   with their ``(document, sentence)`` positions.
2. Embedding, word encoder (BiGRU/BiLSTM) and word attention run on that flat batch only. Inside
   a sentence, padded words are skipped by the RNN mask (the state is carried over them) and get
   exactly zero attention weight. With ``model.word_buckets`` > 1, embedding, encoder and word
   attention run on groups of similar-length sentences, each cut to its own longest sentence
   (``SplitByLength``), so the loop does not step over the padding the batch's longest sentence
   forces on the others, and each step works on smaller arrays (on a 2-core CPU the same GRU
   ran 2x faster over 15 slices of 256 sentences than over the 3,840 at once). ``MergeBuckets``
   puts the sentence vectors and word weights back in order. The outputs are the same as with
   one group. With ``model.embedding_dropout: word_type`` each group's distinct words are
   embedded, dropped out and projected by the BiGRU once (``DistinctWords``).
3. ``ScatterSentences`` scatters the sentence vectors and word weights back to
   ``(batch, sentences, ...)`` (``scatter_nd``): empty sentences get a zero vector, zero word
   weights, and are masked out at the sentence level (RNN mask, or the self-attention mask of
   the Transformer encoder, and the sentence attention mask).

So a document's outputs do not depend on the padding around it or on its batch neighbours
(tests/model check it to 1e-6).

Outputs (one model, one forward pass): a dict with ``probabilities`` ``(batch, classes)``,
``sentence_weights`` ``(batch, sentences)`` and ``word_weights`` ``(batch, sentences, words)``.
For ``compile``/``fit``, ``compile_han`` returns a probabilities-only *view* of the same model
(``training_view``: the same layers and weights, one output), so ``fit`` takes plain labels and
metrics keep their plain names (``accuracy``, ``val_loss``); Keras' compiled metrics otherwise
want a target for every output. Train the view, save and serve the full model.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import ops

from pipeline.config import AttentionConfig, ModelConfig
from pipeline.model.attention import SCORE_LAYERS, AttentionPooling
from pipeline.model.recurrent import BiGRU

PAD_ID = 0
OOV_ID = 1
OUTPUT_NAMES = ("probabilities", "sentence_weights", "word_weights")


# ---------------------------------------------------------------------- padding-aware layers
@keras.saving.register_keras_serializable(package="han")
class GatherSentences(keras.layers.Layer):
    """Collect the non-empty sentences of a batch into one flat batch.

    Call arguments:
        token_ids: Int tensor of shape ``(batch_size, sentences, words)``; 0 is padding.

    Returns:
        A tuple ``(sentence_token_ids, positions)``: ``sentence_token_ids`` of shape
        ``(real_sentences, words)``, the sentences with at least one non-zero id, in row-major
        order; ``positions`` of shape ``(real_sentences, 2)``, int32, each row's
        ``(document, sentence)`` index in ``token_ids``. When the whole batch has no real
        sentence, sentence ``(0, 0)`` (all padding) is passed alone, so that the encoders never
        get an empty batch; it yields a zero vector and zero weights.
    """

    def call(self, token_ids):
        shape = ops.shape(token_ids)
        sentence_mask = ops.any(ops.not_equal(token_ids, PAD_ID), axis=-1)
        # A batch without any real sentence still passes one (all-padding) row, sentence (0, 0):
        # an empty batch breaks some RNN kernels (eager LSTM), and a padding row yields zeros.
        first = ops.logical_and(
            ops.expand_dims(ops.equal(ops.arange(shape[0]), 0), 1),
            ops.expand_dims(ops.equal(ops.arange(shape[1]), 0), 0),
        )
        sentence_mask = ops.logical_or(sentence_mask, ops.logical_and(first, ops.logical_not(ops.any(sentence_mask))))
        documents, sentences = ops.where(sentence_mask)
        rows = ops.reshape(token_ids, (-1, shape[2]))
        sentence_token_ids = ops.take(rows, documents * shape[1] + sentences, axis=0)
        return sentence_token_ids, ops.stack([documents, sentences], axis=-1)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[2]), (None, 2)


@keras.saving.register_keras_serializable(package="han")
class ScatterSentences(keras.layers.Layer):
    """Put per-sentence values back in their documents; empty sentences get zeros.

    Call arguments:
        inputs: A list ``[values, positions, token_ids]``: ``values`` of shape
            ``(real_sentences, ...)``, ``positions`` of shape ``(real_sentences, 2)`` from
            ``GatherSentences``, and the ``token_ids`` ``(batch_size, sentences, words)`` that
            give the output's batch and sentence sizes.

    Returns:
        A tensor of shape ``(batch_size, sentences, ...)``.
    """

    def call(self, inputs):
        values, positions, token_ids = inputs
        documents_shape = ops.shape(token_ids)
        values_shape = ops.shape(values)
        shape = [documents_shape[0], documents_shape[1]] + [values_shape[i] for i in range(1, len(values.shape))]
        return ops.scatter(positions, values, shape)

    def compute_output_shape(self, input_shape):
        values_shape, _, token_ids_shape = input_shape
        return (token_ids_shape[0], token_ids_shape[1], *values_shape[1:])


# Costs in padded cells for cuts="padding": a rough reading of IMDB training step times on 2 cores, not tuned.
STEP_COST = 15.0  # one more loop step
GROUP_COST = 250.0  # one more group's fixed work


def _row_lengths(rows):
    """One past the last real word of each row (so a stray 0 inside a sentence cannot cut it), int32."""
    positions = ops.expand_dims(ops.arange(1, ops.shape(rows)[1] + 1, dtype="int32"), 0)
    return ops.max(ops.where(ops.not_equal(rows, PAD_ID), positions, ops.zeros_like(positions)), axis=1)


@keras.saving.register_keras_serializable(package="han")
class SplitByLength(keras.layers.Layer):
    """Cut a flat batch of sentences into groups of similar length, each cut to its own longest
    sentence, so that the word encoder does not step over the padding that the batch's longest
    sentence forces on all the others.

    Sorted by length, a batch's sentences pad to their group's maximum instead of the batch's:
    in an epoch of IMDB training batches (32 documents, limits 47 x 70) real words are 31 % of
    the ``(sentences, words)`` cells of their real sentences with one group, 64 % with 4, 71 %
    with 8 (``make bench-padding``).

    A group of few sentences costs more in per-step overhead than it saves, so a batch of ``n``
    sentences is cut into ``min(buckets, n // min_sentences)`` groups (at least one); the unused
    groups hold a single empty row (a one-step loop). The number of groups is fixed when the
    graph is built, so this layer always returns ``buckets`` of them.

    Args:
        buckets: Most groups. ``buckets`` empty (all padding) rows are added before sorting, so
            that no group is ever empty (RNN kernels may fail on an empty batch); ``MergeBuckets``
            drops them again.
        min_sentences: Fewest sentences worth a group of their own.

    Call arguments:
        sentence_token_ids: Int tensor of shape ``(sentences, words)``; 0 is padding.

    Returns:
        A list of ``buckets + 1`` tensors: the groups, int ``(sentences_k, words_k)`` from the
        shortest sentences to the longest (``words_k >= 1``), then ``order`` ``(sentences +
        buckets,)``: row ``i`` of the concatenated groups is row ``order[i]`` of the input with
        the empty rows in front.
    """

    def __init__(self, buckets, min_sentences=64, cuts="count", step_cost=STEP_COST, group_cost=GROUP_COST, **kwargs):
        super().__init__(**kwargs)
        if buckets < 1 or min_sentences < 1:
            raise ValueError(f"{self.name}: buckets and min_sentences must be >= 1, got {buckets}, {min_sentences}")
        if cuts not in ("count", "padding"):
            raise ValueError(f"{self.name}: cuts must be 'count' or 'padding', got {cuts!r}")
        self.buckets = buckets
        self.min_sentences = min_sentences
        self.cuts, self.step_cost, self.group_cost = cuts, float(step_cost), float(group_cost)

    def call(self, sentence_token_ids):
        if self.cuts == "padding":
            return self._cut_where_padding_is_least(sentence_token_ids)
        sentences, words = ops.shape(sentence_token_ids)[0], ops.shape(sentence_token_ids)[1]
        rows = ops.concatenate([ops.zeros((self.buckets, words), dtype=sentence_token_ids.dtype), sentence_token_ids], 0)
        lengths = _row_lengths(rows)
        order = ops.argsort(lengths)  # the empty rows (length 0) come first
        used = ops.clip(ops.convert_to_tensor(sentences // self.min_sentences, dtype="int32"), 1, self.buckets)
        unused = self.buckets - used  # these groups take one empty row each
        rest = sentences + used  # the rows of the used groups
        groups = []
        for k in range(self.buckets):
            j = k - unused
            start = ops.where(k < unused, k, unused + (j * rest) // used)
            stop = ops.where(k < unused, k + 1, unused + ((j + 1) * rest) // used)
            members = order[start:stop]
            width = ops.maximum(ops.max(ops.take(lengths, members, axis=0)), 1)
            groups.append(ops.take(rows, members, axis=0)[:, :width])
        return [*groups, ops.cast(order, "int32")]

    def _cut_where_padding_is_least(self, sentence_token_ids):
        """``cuts="padding"``: group ``k`` is empty row ``k`` plus the sentences whose lengths lie in
        ``(bound_k, bound_k+1]``, the bounds chosen by dynamic programming over the distinct lengths to
        minimise ``cells + step_cost * steps + group_cost * groups`` (a group's steps are its longest
        sentence; an unneeded group keeps only its empty row)."""
        words = ops.shape(sentence_token_ids)[1]
        rows = ops.concatenate([ops.zeros((self.buckets, words), dtype=sentence_token_ids.dtype), sentence_token_ids], 0)
        row_lengths = _row_lengths(rows)  # on ``rows``, the empty rows first: never an empty tensor
        lengths = row_lengths[self.buckets:]
        order = ops.argsort(lengths) + self.buckets  # the sentences' rows in ``rows``, shortest first
        top = ops.max(ops.concatenate([lengths, ops.ones((1,), "int32")]))
        span = ops.arange(top + 1, dtype="int32")
        # at_most[b]: sentences of length <= b
        at_most = ops.cumsum(ops.sum(ops.cast(ops.equal(lengths[:, None], span[None, :]), "int32"), axis=0))
        width = ops.cast(span, "float32")
        # cost[a, b] of one group holding the lengths (a, b]; infinite unless a < b
        cost = (ops.cast(at_most[None, :] - at_most[:, None], "float32") + self.step_cost) * width[None, :] + self.group_cost
        cost = ops.where(span[:, None] < span[None, :], cost, float("inf"))
        best = ops.where(ops.equal(span, 0), 0.0, float("inf"))  # best[b]: least cost of covering lengths (0, b]
        starts = []
        for _ in range(self.buckets):
            through = best[:, None] + cost
            start, extended = ops.cast(ops.argmin(through, axis=0), "int32"), ops.min(through, axis=0)
            starts.append(ops.where(best <= extended, span, start))  # start == b: this group stays empty
            best = ops.minimum(best, extended)
        bounds = [top]
        for start in reversed(starts):
            bounds.insert(0, ops.take(start, bounds[0]))
        edges = [ops.zeros((), "int32"), *(ops.take(at_most, bound) for bound in bounds[1:])]  # group 0 takes length 0 too
        groups, members_all = [], []
        for k in range(self.buckets):
            members = ops.concatenate([ops.full((1,), k, "int32"), ops.cast(order[edges[k]:edges[k + 1]], "int32")], 0)
            width = ops.maximum(ops.max(ops.take(row_lengths, members)), 1)
            groups.append(ops.take(rows, members, axis=0)[:, :width])
            members_all.append(members)
        return [*groups, ops.concatenate(members_all, 0)]

    def compute_output_shape(self, input_shape):
        return [(None, None)] * self.buckets + [(None,)]

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "min_sentences": self.min_sentences, "cuts": self.cuts,
                "step_cost": self.step_cost, "group_cost": self.group_cost}


@keras.saving.register_keras_serializable(package="han")
class MergeBuckets(keras.layers.Layer):
    """Undo ``SplitByLength`` on per-group results: put the sentences back in their input order
    (dropping the empty rows ``SplitByLength`` added) and, with ``pad_words``, pad every group's
    words axis back to the batch's (zeros; padding downstream).

    Args:
        pad_words: The groups' axis 1 is their words axis (word weights ``(sentences_k,
            words_k)``, states ``(sentences_k, words_k, features)``): pad it to the batch's
            words. ``False`` for per-sentence values (pooled vectors ``(sentences_k, features)``).

    Call arguments:
        inputs: A list ``[values_1, ..., values_K, order, sentence_token_ids]``: the per-group
            values, ``order`` from ``SplitByLength`` and the ``(sentences, words)`` ids it split
            (for the output size).

    Returns:
        A tensor of shape ``(sentences, words, ...)`` (``pad_words``) or ``(sentences, ...)``.
    """

    def __init__(self, pad_words=True, **kwargs):
        super().__init__(**kwargs)
        self.pad_words = pad_words
        self.supports_masking = True  # the groups' masks arrive with them; the caller passes the full mask on

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs):
        *groups, order, sentence_token_ids = inputs
        if self.pad_words:
            words = ops.shape(sentence_token_ids)[1]
            groups = [
                ops.pad(group, [[0, 0], [0, words - ops.shape(group)[1]]] + [[0, 0]] * (len(group.shape) - 2))
                for group in groups
            ]
        in_order = ops.concatenate(groups, axis=0)
        # Row j of the input (after the empty rows) sits at position inverse[j] of the sorted groups.
        inverse = ops.argsort(order)
        return ops.take(in_order, inverse[len(groups):], axis=0)

    def compute_output_shape(self, input_shape):
        *groups, _, ids_shape = input_shape
        if self.pad_words:
            return (ids_shape[0], ids_shape[1], *groups[0][2:])
        return (ids_shape[0], *groups[0][1:])

    def get_config(self):
        return {**super().get_config(), "pad_words": self.pad_words}


@keras.saving.register_keras_serializable(package="han")
class RowCount(keras.layers.Layer):
    """The number of rows of a tensor, as an int32 scalar."""

    def call(self, inputs):
        return ops.convert_to_tensor(ops.shape(inputs)[0], dtype="int32")

    def compute_output_shape(self, input_shape):
        return ()


@keras.saving.register_keras_serializable(package="han")
class TokenMask(keras.layers.Layer):
    """``token_ids != 0``: int ``(..., words)`` -> bool ``(..., words)``, ``False`` at padding."""

    def call(self, token_ids):
        return ops.not_equal(token_ids, PAD_ID)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="han")
class SentenceMask(keras.layers.Layer):
    """Non-empty sentences: int ``(batch, sentences, words)`` -> bool ``(batch, sentences)``."""

    def call(self, token_ids):
        return ops.any(ops.not_equal(token_ids, PAD_ID), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[:2]


@keras.saving.register_keras_serializable(package="han")
class DistinctWords(keras.layers.Layer):
    """The distinct ids of a group of sentences, and each cell's place among them.

    Call arguments:
        token_ids: Int tensor ``(sentences, words)``.

    Returns:
        ``(distinct, index)``: int ``(n,)`` in order of first appearance, and int ``(sentences,
        words)`` with ``token_ids == take(distinct, index)``. With ``model.embedding_dropout:
        word_type`` the HAN embeds and drops out the ``n`` distinct words only, and the word
        BiGRU reads each cell's vector through ``index``: every occurrence of a word in the
        group gets the same dropout mask, and each distinct word goes through the input
        kernels once, in training too.
    """

    def call(self, token_ids):
        distinct, index = ops.unique(ops.reshape(token_ids, (-1,)), sorted=False, return_inverse=True)
        return distinct, ops.reshape(ops.cast(index, "int32"), ops.shape(token_ids))

    def compute_output_shape(self, input_shape):
        return (None,), input_shape


@keras.saving.register_keras_serializable(package="han")
class TakeRows(keras.layers.Layer):
    """``[table (n, features), index (sentences, words)]`` -> ``(sentences, words, features)``:
    the table's rows spread back to the cells (for word encoders that take dense inputs)."""

    def call(self, inputs):
        table, index = inputs
        return ops.take(table, index, axis=0)

    def compute_output_shape(self, input_shape):
        table_shape, index_shape = input_shape
        return (*index_shape, *table_shape[1:])


@keras.saving.register_keras_serializable(package="han")
class RowEmbedding(keras.layers.Embedding):
    """``keras.layers.Embedding`` that reads only the rows it looks up.

    Keras' ``Embedding`` reads the whole table and gathers from the copy. Once an optimizer has
    updated the table row-wise (``LazyAdam``'s scatter), TensorFlow copies a variable on every
    full read, so each length group's lookup copied IMDB's 39,041 x 200 table (31 MB): 10% of a
    training step's CPU time. This one gathers from the variable itself (``ResourceGather``);
    same values and the same sparse gradient. Elsewhere than TensorFlow, and for a quantized or
    LoRA table, it is Keras' ``Embedding``.
    """

    def call(self, inputs):
        if keras.backend.backend() != "tensorflow" or self.quantization_mode or self.lora_enabled:
            return super().call(inputs)
        import tensorflow as tf

        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, "int32")
        return ops.cast(tf.gather(self.embeddings.value, inputs), self.compute_dtype)


# ---------------------------------------------------------------------- sentence encoder option
@keras.saving.register_keras_serializable(package="han")
class TransformerSentenceEncoder(keras.layers.Layer):
    """Self-attention over a document's sentences: one Transformer encoder block.

    Input projection to ``units``, plus sinusoidal position encodings (sentence order matters
    and self-attention alone ignores it), then post-norm multi-head self-attention and a
    feed-forward network of ``4 * units`` (Vaswani et al., 2017), each with residual and layer
    normalisation. Padded sentences are excluded as keys by the attention mask and their
    outputs are zeroed. A replacement for the sentence-level BiRNN when long-range sentence
    interactions matter more than order.

    Args:
        units: Output size (even, for the sine/cosine pairs).
        heads: Attention heads; each gets ``max(1, units // heads)`` key dimensions.
        dropout: Dropout rate inside the block.

    Call arguments:
        inputs: Sentence vectors of shape ``(batch_size, sentences, features)``.
        mask: Bool ``(batch_size, sentences)``; ``False`` marks padded sentences.

    Returns:
        Tensor of shape ``(batch_size, sentences, units)``, zero at padded sentences.
    """

    def __init__(self, units, heads=2, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if units % 2:
            raise ValueError(f"{self.name}: units must be even for sinusoidal positions, got {units}")
        self.units = units
        self.heads = heads
        self.dropout = dropout
        self.supports_masking = True
        self.input_projection = keras.layers.Dense(units, name="input_projection")
        self.self_attention = keras.layers.MultiHeadAttention(
            num_heads=heads, key_dim=max(1, units // heads), dropout=dropout, name="self_attention"
        )
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
        self.feed_forward_hidden = keras.layers.Dense(4 * units, activation="relu", name="feed_forward_hidden")
        self.feed_forward_output = keras.layers.Dense(units, name="feed_forward_output")
        self.feed_forward_norm = keras.layers.LayerNormalization(name="feed_forward_norm")
        self.residual_dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        hidden_shape = (*input_shape[:-1], self.units)
        self.input_projection.build(input_shape)
        self.self_attention.build(hidden_shape, hidden_shape)
        self.attention_norm.build(hidden_shape)
        self.feed_forward_hidden.build(hidden_shape)
        self.feed_forward_output.build((*input_shape[:-1], 4 * self.units))
        self.feed_forward_norm.build(hidden_shape)

    def call(self, inputs, mask=None, training=None):
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], dtype="bool")
        mask = ops.cast(mask, "bool")
        hidden = self.input_projection(inputs) + self._positions(ops.shape(inputs)[1])
        attention_mask = ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2))
        attended = self.self_attention(hidden, hidden, attention_mask=attention_mask, training=training)
        hidden = self.attention_norm(hidden + self.residual_dropout(attended, training=training))
        transformed = self.feed_forward_output(self.feed_forward_hidden(hidden))
        hidden = self.feed_forward_norm(hidden + self.residual_dropout(transformed, training=training))
        return ops.where(ops.expand_dims(mask, -1), hidden, ops.zeros_like(hidden))

    def _positions(self, steps):
        """Sinusoidal encodings ``(1, steps, units)``: sines in the first half, cosines in the second."""
        positions = ops.cast(ops.arange(steps), self.compute_dtype)
        frequencies = ops.exp(
            ops.arange(0, self.units, 2, dtype=self.compute_dtype) * (-math.log(10000.0) / self.units)
        )
        angles = ops.expand_dims(positions, 1) * ops.expand_dims(frequencies, 0)
        return ops.expand_dims(ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1), 0)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "heads": self.heads, "dropout": self.dropout})
        return config


# ---------------------------------------------------------------------- the model
def build_han(
    config: ModelConfig,
    vocab_size: int,
    num_classes: int,
    embedding_matrix: np.ndarray | None = None,
) -> keras.Model:
    """Build the HAN as one functional ``keras.Model`` (uncompiled; see ``compile_han``).

    Args:
        config: The ``model`` section of the pipeline config. Its ``auto`` settings (resolved from the
            data by the train stage, ``ModelConfig.resolved``) are the small-corpus choices here.
        vocab_size: Number of ids, PAD (0) and OOV (1) included.
        num_classes: Output classes (labels, for a multi-label model).
        embedding_matrix: Initial embeddings ``(vocab_size, config.embedding.dim)``, e.g. from
            ``load_pretrained_embeddings``. Required when ``config.embedding.pretrained_path``
            is set; random (uniform) embeddings otherwise.

    Returns:
        A model from int ``token_ids`` ``(batch, sentences, words)`` to the dict
        ``{"probabilities": (batch, num_classes), "sentence_weights": (batch, sentences),
        "word_weights": (batch, sentences, words)}``. Probabilities are softmax, or independent
        sigmoids when ``config.multilabel``.
    """
    _check_build_arguments(config, vocab_size, num_classes, embedding_matrix)
    if "auto" in (config.word_buckets, config.train_word_buckets, config.embedding_dropout):
        config = config.resolved()
    token_ids = keras.Input(shape=(None, None), dtype="int32", name="token_ids")

    # Word level, on the batch's real sentences only.
    sentence_token_ids, positions = GatherSentences(name="gather_sentences")(token_ids)
    embedding = RowEmbedding(
        vocab_size,
        config.embedding.dim,
        weights=embedding_matrix,
        trainable=config.embedding.trainable,
        name="word_embedding",
    )
    embedding_dropout = keras.layers.Dropout(config.dropout, name="embedding_dropout")
    word_encoder = _bidirectional(config.word_encoder, config.word_units, "word_encoder")
    word_attention = attention_pooling(config.word_attention, "word_attention")
    by_type = config.embedding_dropout == "word_type"
    distinct_words = DistinctWords(name="distinct_words") if by_type else None
    take_rows = TakeRows(name="take_rows") if by_type and not isinstance(word_encoder, BiGRU) else None

    def encode_words(ids, mask):
        if not by_type:
            return word_encoder(embedding_dropout(embedding(ids)), mask=mask, **_ids_for(word_encoder, ids))
        # One dropout mask per distinct word: the group's distinct words are embedded and dropped
        # out once, and the BiGRU projects each once (its ``index``), in training too.
        distinct, index = distinct_words(ids)
        vectors = embedding_dropout(embedding(distinct))
        if take_rows is None:
            return word_encoder(vectors, mask=mask, index=index)
        return word_encoder(take_rows([vectors, index]), mask=mask)

    if config.word_buckets == 1:
        word_mask = TokenMask(name="word_mask")(sentence_token_ids)
        word_states = encode_words(sentence_token_ids, word_mask)
        sentence_vectors, word_weights = word_attention(word_states, mask=word_mask)
    else:
        # The same layers (same weights) on each group of similar-length sentences, up to the
        # pooled sentence vectors: the attention too runs on the group's own small, short states
        # (on the batch's merged (sentences, words, features) states it cost a third of inference).
        *groups, order = SplitByLength(config.word_buckets, config.word_bucket_sentences, cuts=config.word_bucket_cuts,
                                       name="split_by_length")(sentence_token_ids)
        group_mask = TokenMask(name="group_mask")
        sentences = RowCount(name="sentence_count")(sentence_token_ids)
        pooled = []
        for group in groups:
            mask = group_mask(group)
            states = encode_words(group, mask)
            pooled.append(word_attention(states, mask=mask, penalty_rows=sentences))
        sentence_vectors = MergeBuckets(pad_words=False, name="merge_vectors")([*(v for v, _ in pooled), order, sentence_token_ids])
        word_weights = MergeBuckets(name="merge_word_weights")([*(w for _, w in pooled), order, sentence_token_ids])
    sentence_vectors = ScatterSentences(name="sentence_vectors")([sentence_vectors, positions, token_ids])
    word_weights = ScatterSentences(name="word_weights")([word_weights, positions, token_ids])

    # Sentence level.
    sentence_mask = SentenceMask(name="sentence_mask")(token_ids)
    if config.sentence_encoder == "none":
        # No context across sentences: a sentence's state is its own vector, so the document vector is
        # the attention-weighted sum of what each sentence says by itself (removing a sentence removes
        # exactly its weighted share).
        sentence_states = sentence_vectors
    else:
        if config.sentence_encoder == "transformer":
            sentence_encoder = TransformerSentenceEncoder(
                2 * config.sentence_units, config.transformer_heads, config.dropout, name="sentence_encoder"
            )
        else:
            sentence_encoder = _bidirectional(config.sentence_encoder, config.sentence_units, "sentence_encoder")
        sentence_states = sentence_encoder(sentence_vectors, mask=sentence_mask)
    document_vector, sentence_weights = attention_pooling(config.sentence_attention, "sentence_attention")(
        sentence_states, mask=sentence_mask
    )
    # Named so that the model's output_names are the dict keys.
    sentence_weights = keras.layers.Identity(name="sentence_weights")(sentence_weights)
    document_vector = keras.layers.Dropout(config.dropout, name="document_dropout")(document_vector)
    probabilities = keras.layers.Dense(
        num_classes, activation="sigmoid" if config.multilabel else "softmax", dtype="float32", name="probabilities"
    )(document_vector)
    outputs = {"probabilities": probabilities, "sentence_weights": sentence_weights, "word_weights": word_weights}
    return keras.Model(token_ids, outputs, name="han")


def attention_pooling(config: AttentionConfig, name: str) -> AttentionPooling:
    """The attention pooling layer an ``AttentionConfig`` describes."""
    return SCORE_LAYERS[config.score](
        context_dim=config.context_dim,
        heads=config.heads,
        mode=config.mode,
        hard_k=config.hard_k,
        hard_training=config.hard_training,
        gumbel_temperature=config.gumbel_temperature,
        local_window=config.local_window,
        entropy_penalty=config.entropy_penalty,
        name=name,
    )


def training_view(model: keras.Model) -> keras.Model:
    """``model`` with ``probabilities`` as its only output: same layers, same weights, for ``fit``."""
    return keras.Model(model.input, model.get_layer("probabilities").output, name=f"{model.name}_training")


def compile_han(
    model: keras.Model,
    config: ModelConfig,
    learning_rate: float = 1e-3,
    sparse_labels: bool = True,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> keras.Model:
    """A compiled probabilities-only view of ``model`` (``training_view``), ready for ``fit``.

    The view shares every layer and weight with ``model``: fitting it trains ``model``. Keep
    ``model`` for saving, prediction and explanation (it has the attention outputs).

    Targets ``y``: int class ids ``(batch,)`` for single-label models (``sparse_labels=True``)
    or one-hot ``(batch, classes)`` (``sparse_labels=False``), with categorical cross-entropy;
    a 0/1 matrix ``(batch, classes)`` for multi-label models, with binary cross-entropy. Adam
    with global-norm clipping at 5, which keeps long-document RNN gradients in check (the
    paper used SGD with momentum; Adam needs no learning-rate search on small data). Pass
    ``optimizer`` to use another (the train stage builds it from ``train`` config).
    """
    if config.multilabel:
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(multi_label=True, name="auc")]
    elif sparse_labels:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy()
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    trainer = training_view(model)
    trainer.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=5.0),
        loss=loss,
        metrics=metrics,
    )
    return trainer


def _bidirectional(kind: str, units: int, name: str) -> keras.layers.Layer:
    if kind == "gru":
        return BiGRU(units, name=name)  # Keras' Bidirectional(GRU) computed in fewer, larger ops (pipeline.model.recurrent)
    return keras.layers.Bidirectional(keras.layers.LSTM(units, return_sequences=True), name=name)


def _ids_for(encoder: keras.layers.Layer, token_ids) -> dict:
    """The BiGRU's ``token_ids`` argument (inference projects each distinct word once); Keras' RNNs take none."""
    return {"token_ids": token_ids} if isinstance(encoder, BiGRU) else {}


def _check_build_arguments(config, vocab_size, num_classes, embedding_matrix) -> None:
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (id 0 is PAD, 1 is OOV), got {vocab_size}")
    if num_classes < (1 if config.multilabel else 2):
        raise ValueError(f"num_classes must be >= 2 for a single-label model (>= 1 multi-label), got {num_classes}")
    if embedding_matrix is None:
        if config.embedding.pretrained_path:
            raise ValueError(
                f"model.embedding.pretrained_path is {config.embedding.pretrained_path!r} but no embedding_matrix "
                "was given: load it with load_pretrained_embeddings(path, vocabulary_tokens, dim) and pass it"
            )
        return
    expected = (vocab_size, config.embedding.dim)
    if tuple(embedding_matrix.shape) != expected:
        raise ValueError(
            f"embedding_matrix has shape {tuple(embedding_matrix.shape)}, expected (vocab_size, embedding.dim) = {expected}"
        )


# ---------------------------------------------------------------------- pretrained embeddings
def load_pretrained_embeddings(
    path: str | Path,
    vocabulary_tokens: list[str],
    dim: int,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Read word2vec/GloVe vectors in text format into an embedding matrix for a vocabulary.

    Each line is a token followed by ``dim`` numbers, separated by spaces; a word2vec header line
    (``count dim``) is skipped; tokens containing spaces (some GloVe files) are supported,
    since the last ``dim`` fields are the vector. ``.gz`` files are read compressed. A token is
    matched exactly, else through its lowercase form (an exact match always wins).

    Args:
        path: The vectors file.
        vocabulary_tokens: Tokens by id; ids 0 (PAD) and 1 (OOV) are reserved and not looked up.
        dim: Vector size expected in the file (``model.embedding.dim``).
        seed: Seed for the rows of tokens not found.

    Returns:
        ``(matrix, coverage)``: ``matrix`` float32 ``(len(vocabulary_tokens), dim)`` with the
        PAD row zero and tokens not found drawn from a normal distribution with the found
        vectors' standard deviation; ``coverage`` the fraction of the vocabulary's words (ids
        ``>= 2``) found in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained embeddings file {path} does not exist (model.embedding.pretrained_path)")
    index = {token: i for i, token in enumerate(vocabulary_tokens) if i > OOV_ID}
    lowercase_index: dict[str, int] = {}
    for token, i in index.items():
        lowercase_index.setdefault(token.lower(), i)
    matrix = np.zeros((len(vocabulary_tokens), dim), dtype=np.float32)
    exact = np.zeros(len(vocabulary_tokens), dtype=bool)
    found = np.zeros(len(vocabulary_tokens), dtype=bool)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, start=1):
            fields = line.rstrip().split(" ")
            if line_number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                continue  # word2vec header: "count dim"
            if len(fields) == 1 and not fields[0].strip():
                continue
            if len(fields) < dim + 1:
                raise ValueError(
                    f"{path}:{line_number}: expected a token and {dim} numbers (model.embedding.dim), "
                    f"found {len(fields) - 1} numbers"
                )
            token = " ".join(fields[:-dim])
            i = index.get(token)
            is_exact = i is not None
            if i is None:
                i = lowercase_index.get(token.lower())
            if i is None or exact[i] or (found[i] and not is_exact):
                continue
            try:
                matrix[i] = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError:
                raise ValueError(f"{path}:{line_number}: the vector of {token!r} is not {dim} numbers") from None
            found[i] = True
            exact[i] = is_exact
    words = len(vocabulary_tokens) - min(len(vocabulary_tokens), OOV_ID + 1)
    coverage = float(found.sum() / words) if words else 0.0
    scale = float(matrix[found].std()) if found.any() else 0.1
    missing = ~found
    missing[: PAD_ID + 1] = False
    rng = np.random.default_rng(seed)
    matrix[missing] = rng.normal(0.0, scale or 0.1, size=(int(missing.sum()), dim)).astype(np.float32)
    return matrix, coverage


def inference_function(model: keras.Model, sentence_batch: int | None = None, document_batch: int | None = None,
                       min_sentences: int | None = None):
    """``model``'s inference for ``document_outputs``: for a model ``build_han`` made, a
    ``pipeline.model.packing.PackedInference``, which packs the sentences of all the documents it is given by
    length before the word level, and is also callable on a padded batch like ``model(token_ids, training=False)``;
    for any other model (the benchmark's reference HAN), the whole model as one function of padded batches.
    ``min_sentences`` (default ``PACK_MIN_SENTENCES``): fewer real sentences run the whole model instead of packing.

    Calling the model eagerly runs op by op; each level is a ``tf.function`` traced once with free batch,
    sentence and word dimensions, so no batch shape costs a new trace (which ``model.predict`` would do).
    """
    import logging

    import tensorflow as tf

    from pipeline.model.packing import DOCUMENT_BATCH, PACK_MIN_SENTENCES, SENTENCE_BATCH, PackedInference, packable

    # Each model gets its own graphs, traced once; TensorFlow counts the traces of every model's functions
    # together and, from the fifth model in a process (a pipeline run loads several), calls it retracing.
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _OneTracePerModel) for f in logger.filters):
        logger.addFilter(_OneTracePerModel())
    if packable(model):
        return PackedInference(model, sentence_batch or SENTENCE_BATCH, document_batch or DOCUMENT_BATCH,
                               min_sentences=PACK_MIN_SENTENCES if min_sentences is None else min_sentences)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None), tf.int32, name="token_ids")])
    def infer(token_ids):  # a HAN of other layers (the benchmark's reference): the whole model on padded batches
        return model(token_ids, training=False)

    return infer


class _OneTracePerModel:
    """Drops TensorFlow's retracing warning about ``inference_function``'s ``infer`` (one trace per model)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not (("PackedInference.__init__.<locals>" in message or "inference_function.<locals>.infer" in message)
                    and "retracing" in message)


def load_han(path: str | Path) -> keras.Model:
    """A saved HAN (``.keras``), loaded with ``safe_mode=True`` (no arbitrary code runs)."""
    return keras.saving.load_model(path, safe_mode=True)


def document_outputs(infer, documents: list[list[np.ndarray]], batch_size: int, packed: bool = True,
                     between: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Run ``infer`` (``inference_function(model)``) over documents; one result per document, in order.

    Each result holds ``probabilities``, ``sentence_weights`` (its sentences only) and ``word_weights``
    (its words only); padding gets exactly 0 weight, so the kept weights still sum to 1. By default the
    sentences of all the documents are packed by length (``pipeline.model.packing``; its own chunk sizes,
    ``batch_size`` unused; below its ``min_sentences`` it runs the whole model itself). ``packed=False`` (or an
    ``infer`` that is a plain function of padded batches) runs the whole model on batches of ``batch_size`` documents sorted by size
    (sentences x longest sentence), each padded to its own maxima: the same outputs, more padding.
    ``between`` is called before each batch or round of chunks, in this thread (serving checks its request's
    deadline there).
    """
    from pipeline.data.batching import pad_batch
    from pipeline.model.packing import PackedInference

    if packed and isinstance(infer, PackedInference):
        return infer.outputs(documents, between)

    sizes = np.asarray([len(doc) * max((len(s) for s in doc), default=1) for doc in documents])
    order = np.argsort(sizes, kind="stable")
    results: list[dict[str, np.ndarray]] = [{} for _ in documents]
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        if between is not None:
            between()
        outputs = infer(pad_batch([documents[i] for i in members]))
        probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
        sentence_weights = np.asarray(outputs["sentence_weights"], dtype=np.float64)
        word_weights = np.asarray(outputs["word_weights"], dtype=np.float64)
        for row, index in enumerate(members):
            doc = documents[index]
            results[index] = {
                "probabilities": probabilities[row],
                "sentence_weights": sentence_weights[row, : len(doc)],
                "word_weights": [word_weights[row, j, : len(sentence)] for j, sentence in enumerate(doc)],
            }
    return results
