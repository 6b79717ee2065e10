"""Behaviour of the HAN model: outputs, padding invariance, skipped padding, gradients, training,
multi-label head and pretrained embeddings."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.model.han import (
    OUTPUT_NAMES,
    GatherSentences,
    MergeBuckets,
    RowEmbedding,
    SplitByLength,
    build_han,
    compile_han,
    load_pretrained_embeddings,
    training_view,
)

VOCAB_SIZE = 40
NUM_CLASSES = 3

# One config per option; each option appears at least once.
OPTIONS = {
    "paper_gru_dot": {"word_attention": {"score": "dot"}, "sentence_attention": {"score": "dot"}},
    "additive": {"word_attention": {"score": "additive"}, "sentence_attention": {"score": "additive"}},
    "scaled_dot": {"word_attention": {"score": "scaled_dot"}, "sentence_attention": {"score": "scaled_dot"}},
    "general": {"word_attention": {"score": "general"}, "sentence_attention": {"score": "general"}},
    "location": {"word_attention": {"score": "location"}, "sentence_attention": {"score": "location"}},
    "lstm": {"word_encoder": "lstm", "sentence_encoder": "lstm"},
    "transformer": {"sentence_encoder": "transformer"},
    "no_sentence_context": {"sentence_encoder": "none"},
    "hard": {"word_attention": {"mode": "hard"}, "sentence_attention": {"mode": "hard", "hard_k": 2}},
    "hard_gumbel": {"sentence_attention": {"mode": "hard", "hard_training": "gumbel", "gumbel_temperature": 0.5}},
    "local": {"word_attention": {"mode": "local", "local_window": 1}, "sentence_attention": {"mode": "local"}},
    "multi_head": {"word_attention": {"heads": 2}, "sentence_attention": {"heads": 3}},
    "word_type_dropout": {"embedding_dropout": "word_type", "word_buckets": 2, "word_bucket_sentences": 2},
}


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def small_config(**overrides) -> ModelConfig:
    """A small HAN (embeddings 16, 8 units per direction, context 8) with ``overrides`` merged in.

    One length group unless asked (``word_buckets``): groups give the same outputs (tested below)
    and each costs graph-tracing time, which dominates these tiny fits.
    """
    tree = {
        "word_buckets": 1,
        "embedding": {"dim": 16},
        "word_units": 8,
        "sentence_units": 8,
        "dropout": 0.0,
        "word_attention": {"context_dim": 8},
        "sentence_attention": {"context_dim": 8},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            tree.setdefault(key, {}).update(value)
        else:
            tree[key] = value
    return ModelConfig.model_validate(tree)


def pad(documents: list[list[list[int]]], sentences: int | None = None, words: int | None = None) -> np.ndarray:
    """Documents as lists of sentences of ids -> ``(batch, sentences, words)`` int32, 0-padded."""
    sentences = sentences or max(len(d) for d in documents)
    words = words or max((len(s) for d in documents for s in d), default=1)
    batch = np.zeros((len(documents), sentences, words), "int32")
    for i, document in enumerate(documents):
        for j, sentence in enumerate(document):
            batch[i, j, : len(sentence)] = sentence
    return batch


def keyword_corpus(size: int, seed: int, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Documents of filler words where one sentence holds the class keyword (id ``2 + label``)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size)
    filler = (2 + num_classes, VOCAB_SIZE)
    documents = []
    for label in labels:
        document = [list(rng.integers(*filler, rng.integers(2, 7))) for _ in range(rng.integers(2, 6))]
        evidence = document[rng.integers(len(document))]
        evidence.insert(rng.integers(len(evidence) + 1), 2 + label)
        documents.append(document)
    return pad(documents), labels


def numpy_outputs(model, token_ids):
    return {name: np.asarray(value) for name, value in model(token_ids, training=False).items()}


DOCUMENT = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
LONG_DOCUMENT = [[(3 * i + j) % 30 + 2 for j in range(9)] for i in range(12)]


# ---------------------------------------------------------------------- outputs and weights
def test_outputs_are_probabilities_and_both_levels_of_weights_from_one_model():
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    token_ids = pad([DOCUMENT, LONG_DOCUMENT[:5], [[3, 4]]])
    outputs = numpy_outputs(model, token_ids)

    assert list(model.output_names) == list(OUTPUT_NAMES)
    assert outputs["probabilities"].shape == (3, NUM_CLASSES)
    assert outputs["sentence_weights"].shape == token_ids.shape[:2]
    assert outputs["word_weights"].shape == token_ids.shape
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-6)


def test_weights_sum_to_one_over_real_positions_and_are_exactly_zero_on_padding():
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    # An empty sentence in the middle, and a document with no words at all.
    token_ids = pad([DOCUMENT, [[5, 6], [], [7, 8, 9]], []], sentences=4, words=5)
    outputs = numpy_outputs(model, token_ids)
    real_words = token_ids != 0
    real_sentences = real_words.any(axis=-1)

    sentence_weights, word_weights = outputs["sentence_weights"], outputs["word_weights"]
    assert np.all(sentence_weights[~real_sentences] == 0.0)
    assert np.all(word_weights[~real_words] == 0.0)
    np.testing.assert_allclose(sentence_weights.sum(axis=1), [1.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(word_weights.sum(axis=2), real_sentences.astype("float32"), atol=1e-6)
    for value in outputs.values():
        assert np.isfinite(value).all()


def test_without_a_sentence_encoder_the_weights_are_each_sentences_share_of_the_document():
    """``sentence_encoder: none``: a sentence's state is its own vector, so its weight does not depend on
    its neighbours or its place, and the prediction does not depend on the sentences' order."""
    model = build_han(small_config(sentence_encoder="none"), VOCAB_SIZE, NUM_CLASSES)
    document = LONG_DOCUMENT[:4]
    reordered = [document[i] for i in (2, 0, 3, 1)]
    outputs = numpy_outputs(model, pad([document, reordered]))
    np.testing.assert_allclose(outputs["probabilities"][0], outputs["probabilities"][1], atol=1e-6)
    np.testing.assert_allclose(outputs["sentence_weights"][1], outputs["sentence_weights"][0][[2, 0, 3, 1]], atol=1e-6)
    # Removing a sentence leaves the others' weights in the same proportions.
    shorter = numpy_outputs(model, pad([document[1:]]))["sentence_weights"][0]
    np.testing.assert_allclose(shorter, outputs["sentence_weights"][0][1:] / outputs["sentence_weights"][0][1:].sum(),
                               atol=1e-6)
    assert not any("sentence_encoder" in layer.name for layer in model.layers)
    # With the BiGRU over sentences, order matters (the check above could fail).
    gru = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    outputs = numpy_outputs(gru, pad([document, reordered]))
    assert np.abs(outputs["probabilities"][0] - outputs["probabilities"][1]).max() > 1e-5


def test_a_batch_without_any_word_gives_finite_outputs():
    model = build_han(small_config(word_encoder="lstm"), VOCAB_SIZE, NUM_CLASSES)
    outputs = numpy_outputs(model, np.zeros((2, 3, 4), "int32"))
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    assert np.all(outputs["sentence_weights"] == 0.0) and np.all(outputs["word_weights"] == 0.0)


@pytest.mark.parametrize("option", ["paper_gru_dot", "lstm", "transformer", "hard", "local", "multi_head"])
def test_padding_and_batch_neighbours_do_not_change_a_documents_outputs(option):
    # Length groups on (two sentences suffice for one): neighbours also change which group a sentence is in.
    model = build_han(small_config(word_buckets=3, word_bucket_sentences=2, **OPTIONS[option]), VOCAB_SIZE, NUM_CLASSES)
    alone = numpy_outputs(model, pad([DOCUMENT]))

    beside_longer = numpy_outputs(model, pad([DOCUMENT, LONG_DOCUMENT]))
    extra_padding = numpy_outputs(model, pad([DOCUMENT], sentences=7, words=11))
    empty_neighbour = numpy_outputs(
        model, pad([[], DOCUMENT, [s[:6] for s in LONG_DOCUMENT[:2]]], sentences=5, words=6)
    )

    for outputs, row in ((beside_longer, 0), (extra_padding, 0), (empty_neighbour, 1)):
        np.testing.assert_allclose(outputs["probabilities"][row], alone["probabilities"][0], atol=1e-6, rtol=0)
        sentence_weights = outputs["sentence_weights"][row]
        np.testing.assert_allclose(sentence_weights[:3], alone["sentence_weights"][0], atol=1e-6, rtol=0)
        assert np.all(sentence_weights[3:] == 0.0)
        word_weights = outputs["word_weights"][row]
        np.testing.assert_allclose(word_weights[:3, :4], alone["word_weights"][0], atol=1e-6, rtol=0)
        assert np.all(word_weights[3:] == 0.0) and np.all(word_weights[:, 4:] == 0.0)


# ---------------------------------------------------------------------- no compute on padding
def test_gather_sentences_keeps_only_the_non_empty_sentences():
    token_ids = pad([DOCUMENT, [[5], [], [6, 7]], []], sentences=4, words=5)
    sentence_token_ids, positions = GatherSentences()(token_ids)

    assert np.asarray(positions).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 2]]
    np.testing.assert_array_equal(np.asarray(sentence_token_ids), token_ids[[0, 0, 0, 1, 1], [0, 1, 2, 0, 2]])


def test_the_word_encoder_runs_only_on_non_empty_sentences():
    model = build_han(small_config(word_buckets=1), VOCAB_SIZE, NUM_CLASSES)
    word_encoder_view = keras.Model(model.input, model.get_layer("word_encoder").output)
    token_ids = pad([DOCUMENT, [[5], [], [6, 7]], [], LONG_DOCUMENT[:1]], sentences=12, words=9)
    non_empty_sentences = int((token_ids != 0).any(axis=-1).sum())

    word_states = word_encoder_view(token_ids)
    assert non_empty_sentences == 6
    assert word_states.shape[0] == non_empty_sentences  # not batch * sentences = 48


def test_length_groups_pad_each_group_only_to_its_own_longest_sentence():
    lengths = [7, 1, 3, 2, 6, 1, 4]
    sentence_token_ids = pad([[[5] * n for n in lengths]])[0]  # (7 sentences, 7 words)
    *groups, order = SplitByLength(3, min_sentences=1)(sentence_token_ids)

    # 3 empty rows first (no group is ever empty), then the 7 sentences from shortest to longest.
    rows = [np.asarray(group) for group in groups]
    assert [row.shape for row in rows] == [(3, 1), (3, 2), (4, 7)]
    sorted_lengths = [int((row != 0).sum()) for group in rows for row in group]
    assert sorted_lengths == [0, 0, 0, 1, 1, 2, 3, 4, 6, 7]
    assert sorted(np.asarray(order).tolist()) == list(range(10))
    cells = sum(row.size for row in rows)
    assert cells == 3 + 6 + 28 < sentence_token_ids.size  # 37 cells against 49 in one group


def test_a_batch_of_few_sentences_uses_fewer_groups():
    lengths = [7, 1, 3, 2, 6, 1, 4]
    sentence_token_ids = pad([[[5] * n for n in lengths]])[0]
    # 7 sentences, at least 3 per group: 2 groups; the other 2 hold one empty row each.
    *groups, order = SplitByLength(4, min_sentences=3)(sentence_token_ids)
    assert [np.asarray(group).shape for group in groups] == [(1, 1), (1, 1), (4, 1), (5, 7)]
    *groups, _ = SplitByLength(4, min_sentences=64)(sentence_token_ids)
    assert [np.asarray(group).shape for group in groups] == [(1, 1), (1, 1), (1, 1), (8, 7)]


def least_cost(lengths, groups, step_cost, group_cost):
    """Brute force over every way to cut the sorted lengths into at most ``groups`` contiguous runs."""
    import itertools

    lengths = sorted(lengths)
    best = float("inf")
    for cut_count in range(groups):
        for cuts in itertools.combinations(range(1, len(lengths)), cut_count):
            runs = [lengths[a:b] for a, b in zip((0, *cuts), (*cuts, len(lengths)), strict=True)]
            best = min(best, sum(len(run) * run[-1] + step_cost * run[-1] + group_cost for run in runs))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_padding_cuts_are_the_cheapest_and_keep_every_sentence(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 20, size=int(rng.integers(1, 11))).tolist()
    step_cost, group_cost = [(0.0, 0.0), (6.0, 0.0), (0.0, 8.0), (6.0, 8.0)][seed % 4]
    sentence_token_ids = pad([[[5 + n] * n for n in lengths]])[0]
    *groups, order = SplitByLength(3, cuts="padding", step_cost=step_cost, group_cost=group_cost)(sentence_token_ids)
    sentences = [[int((row != 0).sum()) for row in np.asarray(group)] for group in groups]
    assert [g[0] for g in sentences] == [0, 0, 0]  # each group starts with its empty row, so none is ever empty
    used = [g[1:] for g in sentences if len(g) > 1]
    cost = sum(len(g) * max(g) + step_cost * max(g) + group_cost for g in used)
    assert cost == pytest.approx(least_cost(lengths, 3, step_cost, group_cost))
    assert all(np.asarray(group).shape[1] == max(max(g), 1) for group, g in zip(groups, sentences, strict=True))
    merged = MergeBuckets()([*(tf.cast(group, "float32") for group in groups), order, sentence_token_ids])
    np.testing.assert_array_equal(np.asarray(merged), sentence_token_ids)


def test_merge_buckets_puts_every_sentence_back_in_its_row():
    sentence_token_ids = pad([[[5 + n] * n for n in (4, 1, 3, 2)]])[0]
    *groups, order = SplitByLength(2, min_sentences=1)(sentence_token_ids)
    # Each group's "word weights": the ids themselves; its "states": the ids as one feature;
    # its pooled "vectors": each sentence's first id and length.
    weights = [tf.cast(group, "float32") for group in groups]
    merged = np.asarray(MergeBuckets()([*weights, order, sentence_token_ids]))
    np.testing.assert_array_equal(merged, sentence_token_ids)
    merged = np.asarray(MergeBuckets()([*(w[..., None] for w in weights), order, sentence_token_ids]))
    np.testing.assert_array_equal(merged[..., 0], sentence_token_ids)
    vectors = [tf.stack([w[:, 0], tf.reduce_sum(tf.sign(w), axis=1)], axis=1) for w in weights]
    merged = np.asarray(MergeBuckets(pad_words=False)([*vectors, order, sentence_token_ids]))
    np.testing.assert_array_equal(merged, [[9, 4], [6, 1], [8, 3], [7, 2]])


@pytest.mark.parametrize("cuts", ["count", "padding"])
@pytest.mark.parametrize("option", ["paper_gru_dot", "lstm", "local", "multi_head"])
def test_length_groups_give_the_same_outputs_and_gradients_as_one_group(option, cuts):
    one = build_han(small_config(word_buckets=1, **OPTIONS[option]), VOCAB_SIZE, NUM_CLASSES)
    grouped = build_han(small_config(word_buckets=4, word_bucket_sentences=2, word_bucket_cuts=cuts, **OPTIONS[option]),
                        VOCAB_SIZE, NUM_CLASSES)
    grouped.set_weights(one.get_weights())  # the same layers: the weights carry over one to one
    token_ids = pad([DOCUMENT, LONG_DOCUMENT, [], [[3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]])

    expected, actual = numpy_outputs(one, token_ids), numpy_outputs(grouped, token_ids)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-6, rtol=0)

    labels = np.array([0, 1, 2, 1])

    def gradients(model):
        with tf.GradientTape() as tape:
            probabilities = model(token_ids, training=True)["probabilities"]
            loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        return [np.asarray(tf.convert_to_tensor(g)) for g in tape.gradient(loss, model.trainable_variables)]

    for g_one, g_grouped in zip(gradients(one), gradients(grouped), strict=True):
        np.testing.assert_allclose(g_grouped, g_one, atol=1e-5, rtol=0)


def test_row_embedding_reads_only_the_rows_it_looks_up():
    ours, reference = RowEmbedding(VOCAB_SIZE, 6), keras.layers.Embedding(VOCAB_SIZE, 6)
    ours.build((None,)), reference.build((None,))
    reference.set_weights(ours.get_weights())
    ids = tf.constant([[3, 7, 3], [0, 39, 1]])
    np.testing.assert_array_equal(ours(ids).numpy(), reference(ids).numpy())

    def lookup(layer):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(ids)))
        return tape.gradient(loss, layer.trainable_variables)[0]

    gradient = lookup(ours)
    assert isinstance(gradient, tf.IndexedSlices)  # sparse, for LazyAdam's row-wise update
    np.testing.assert_allclose(tf.convert_to_tensor(gradient).numpy(), tf.convert_to_tensor(lookup(reference)).numpy())
    # Keras' Embedding reads the whole table (a copy, once the table is updated row-wise); ours gathers from the variable.
    graph_ops = {op.type for op in tf.function(ours).get_concrete_function(ids).graph.get_operations()}
    assert "ResourceGather" in graph_ops and "ReadVariableOp" not in graph_ops
    reference_ops = {op.type for op in tf.function(reference).get_concrete_function(ids).graph.get_operations()}
    assert "ReadVariableOp" in reference_ops


@pytest.mark.parametrize("buckets", [1, 4])
def test_inference_projects_each_distinct_word_once_and_training_every_occurrence(buckets):
    # build_han hands the word BiGRU its token ids: the inference graph dedupes them, the training graph does not.
    model = build_han(small_config(word_buckets=buckets, word_bucket_sentences=2), VOCAB_SIZE, NUM_CLASSES)
    token_ids = tf.constant(pad([DOCUMENT, LONG_DOCUMENT]))

    def op_types(training):
        graph = tf.function(lambda x: model(x, training=training)).get_concrete_function(token_ids).graph
        return {op.type for op in graph.get_operations()}

    assert "Unique" in op_types(False)
    assert "Unique" not in op_types(True)


@pytest.mark.parametrize(("buckets", "encoder"), [(1, "gru"), (4, "gru"), (1, "lstm")])
def test_word_type_dropout_shares_one_mask_per_word_and_changes_nothing_else(buckets, encoder):
    element = build_han(small_config(word_buckets=buckets, word_bucket_sentences=2, word_encoder=encoder), VOCAB_SIZE, NUM_CLASSES)
    by_type = build_han(small_config(word_buckets=buckets, word_bucket_sentences=2, word_encoder=encoder,
                                     embedding_dropout="word_type"), VOCAB_SIZE, NUM_CLASSES)
    by_type.set_weights(element.get_weights())
    token_ids = tf.constant(pad([DOCUMENT, LONG_DOCUMENT]))
    # Without dropout at work the two are one function: same outputs, same gradients (sparse embedding rows).
    for training in (False, True):
        with tf.GradientTape(persistent=True) as tape:
            outputs = [model(token_ids, training=training) for model in (element, by_type)]
            losses = [tf.reduce_sum(o["probabilities"][:, 0]) + tf.reduce_sum(o["word_weights"] ** 2) for o in outputs]
        for key in OUTPUT_NAMES:
            np.testing.assert_allclose(outputs[0][key].numpy(), outputs[1][key].numpy(), atol=1e-6)
        gradients = [tape.gradient(loss, model.trainable_variables) for loss, model in zip(losses, (element, by_type), strict=True)]
        assert isinstance(gradients[1][0], tf.IndexedSlices)
        for a, b in zip(*gradients, strict=True):
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-5)
    if encoder == "gru":
        graph = tf.function(lambda x: by_type(x, training=True)).get_concrete_function(token_ids).graph
        assert "Unique" in {op.type for op in graph.get_operations()}  # the training graph projects distinct words

    # With dropout, every occurrence of a word in the group shares its mask: two documents made of the
    # same words in the same order get the same word encoder states in training; element-wise masks differ.
    twice = tf.constant(pad([DOCUMENT, DOCUMENT]))
    for mode, same in (("element", False), ("word_type", True)):
        model = build_han(small_config(word_encoder=encoder, dropout=0.5, embedding_dropout=mode), VOCAB_SIZE, NUM_CLASSES)
        states = keras.Model(model.input, model.get_layer("word_encoder").output)(twice, training=True).numpy()
        halves = states.reshape(2, -1, *states.shape[1:])
        assert np.allclose(halves[0], halves[1], atol=1e-6) == same


def test_length_groups_add_the_same_word_entropy_penalty_as_one_group():
    # Each group's attention call adds its rows' share, so the sum is the mean over all sentences
    # (the empty rows SplitByLength adds count for nothing).
    options = {"word_attention": {"entropy_penalty": 0.5, "heads": 2}}
    one = build_han(small_config(word_buckets=1, **options), VOCAB_SIZE, NUM_CLASSES)
    grouped = build_han(small_config(word_buckets=4, word_bucket_sentences=2, **options), VOCAB_SIZE, NUM_CLASSES)
    grouped.set_weights(one.get_weights())
    token_ids = pad([DOCUMENT, LONG_DOCUMENT, [], [[3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]])

    def penalty_and_gradients(model):
        with tf.GradientTape() as tape:
            model(token_ids, training=True)
            penalty = keras.ops.sum(keras.ops.stack(model.losses))
        return float(penalty), len(model.losses), tape.gradient(penalty, model.trainable_variables)

    penalty_one, calls_one, gradients_one = penalty_and_gradients(one)
    penalty_grouped, calls_grouped, gradients_grouped = penalty_and_gradients(grouped)
    assert (calls_one, calls_grouped) == (1, 4)
    assert 0.0 < penalty_one < 0.5
    assert penalty_grouped == pytest.approx(penalty_one, abs=1e-6)
    for g_one, g_grouped in zip(gradients_one, gradients_grouped, strict=True):
        if g_one is None:
            assert g_grouped is None
        else:
            np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(g_grouped)), np.asarray(tf.convert_to_tensor(g_one)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_trainable_weight_gets_a_finite_gradient(option):
    model = build_han(small_config(**OPTIONS[option], dropout=0.1), VOCAB_SIZE, NUM_CLASSES)
    # Empty sentences and an empty document in the batch must not make gradients NaN.
    token_ids = pad([DOCUMENT, [[5, 6], [], [7, 8, 9]], [], [[2, 9, 9]]], sentences=4, words=5)
    labels = np.array([0, 1, 2, 0])
    with tf.GradientTape() as tape:
        probabilities = model(token_ids, training=True)["probabilities"]
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    gradients = tape.gradient(loss, model.trainable_weights)

    for variable, gradient in zip(model.trainable_weights, gradients, strict=True):
        assert gradient is not None, variable.path
        assert np.isfinite(np.asarray(tf.convert_to_tensor(gradient))).all(), variable.path


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_trains_above_chance_on_a_keyword_task(option):
    x_train, y_train = keyword_corpus(192, seed=0)
    x_test, y_test = keyword_corpus(96, seed=1)
    keras.utils.set_random_seed(0)
    config = small_config(**OPTIONS[option])
    model = build_han(config, VOCAB_SIZE, NUM_CLASSES)
    trainer = compile_han(model, config, learning_rate=1e-2)

    trainer.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)

    _, accuracy = trainer.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.7, f"{option}: held-out accuracy {accuracy:.2f} (chance 0.33)"
    # The full model was trained through the view.
    outputs = numpy_outputs(model, x_test)
    np.testing.assert_allclose(outputs["probabilities"], np.asarray(trainer(x_test)), atol=1e-6)
    assert (outputs["probabilities"].argmax(axis=1) == y_test).mean() == pytest.approx(accuracy, abs=1e-6)
    if option == "paper_gru_dot":
        # The paper's HAN points at the evidence. (Not asserted for every option: a BiLSTM or
        # self-attention can move the keyword into neighbouring sentence states, and then the
        # attention need not point at it; measured focus ranged 0.2-0.98, chance 0.32.)
        # Which solution a run finds depends on the initial weights: over seeds 0-5 the sentence
        # focus was 0.70-0.87 and the word focus 0.66-1.0 (word chance about 0.2), and Keras'
        # Bidirectional(GRU) in place of BiGRU gave 0.74-0.98 and 0.66-1.0; the test was unseeded
        # and asked 0.8 before, which half of those draws miss.
        keyword = x_test == (2 + y_test)[:, None, None]
        evidence_sentence = keyword.any(axis=-1).argmax(axis=-1)
        assert (outputs["sentence_weights"].argmax(axis=1) == evidence_sentence).mean() >= 0.6
        rows = np.arange(len(y_test))
        evidence_word = keyword[rows, evidence_sentence].argmax(axis=-1)
        assert (outputs["word_weights"][rows, evidence_sentence].argmax(axis=-1) == evidence_word).mean() >= 0.6


def test_training_view_shares_the_layers_of_the_model():
    model = build_han(small_config(), VOCAB_SIZE, NUM_CLASSES)
    trainer = training_view(model)
    assert {id(w) for w in trainer.weights} == {id(w) for w in model.weights}
    assert trainer.output_shape == (None, NUM_CLASSES)


def test_multilabel_head_gives_independent_sigmoids_and_trains():
    config = small_config(multilabel=True)
    rng = np.random.default_rng(0)
    # Label k is on when keyword 2 + k appears anywhere; any subset of labels may be on.
    targets = rng.integers(0, 2, (192, NUM_CLASSES)).astype("float32")
    documents = []
    for row in targets:
        document = [list(rng.integers(5, VOCAB_SIZE, rng.integers(2, 6))) for _ in range(rng.integers(2, 5))]
        for label in np.flatnonzero(row):
            document[rng.integers(len(document))].append(2 + label)
        documents.append(document)
    token_ids = pad(documents)
    model = build_han(config, VOCAB_SIZE, NUM_CLASSES)
    assert model.get_layer("probabilities").activation is keras.activations.sigmoid

    trainer = compile_han(model, config, learning_rate=1e-2)
    history = trainer.fit(token_ids[:128], targets[:128], epochs=10, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]

    probabilities = numpy_outputs(model, token_ids[128:])["probabilities"]
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert not np.allclose(probabilities.sum(axis=1), 1.0)
    assert ((probabilities > 0.5) == targets[128:]).mean() >= 0.7  # chance: 0.5


# ---------------------------------------------------------------------- pretrained embeddings
VOCABULARY = ["<pad>", "<oov>", "the", "cat", "paris", "zebra"]


def test_load_pretrained_embeddings_from_a_word2vec_text_file(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text(
        "4 3\nCat 9 9 9\nthe 0.1 0.2 0.3\ncat 1 2 3\nParis -1 -2 -3\nunused 7 7 7\n",
        encoding="utf-8",
    )
    matrix, coverage = load_pretrained_embeddings(path, VOCABULARY, dim=3)

    assert matrix.shape == (6, 3) and matrix.dtype == np.float32
    assert coverage == pytest.approx(3 / 4)  # the, cat, paris of the, cat, paris, zebra
    np.testing.assert_array_equal(matrix[0], 0.0)
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(matrix[3], [1, 2, 3])  # the exact "cat" wins over "Cat"
    np.testing.assert_allclose(matrix[4], [-1, -2, -3])  # lowercase fallback
    assert np.all(matrix[5] != 0.0)  # not found: random


def test_load_pretrained_embeddings_from_a_glove_file_without_header(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 0\nzebra 0 1\n", encoding="utf-8")
    matrix, coverage = load_pretrained_embeddings(path, VOCABULARY, dim=2)
    assert coverage == pytest.approx(2 / 4)
    np.testing.assert_allclose(matrix[[2, 5]], [[1, 0], [0, 1]])


def test_load_pretrained_embeddings_rejects_the_wrong_dimension_with_the_line(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("the 1 2 3\ncat 1 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vectors.txt:2: expected a token and 3 numbers"):
        load_pretrained_embeddings(path, VOCABULARY, dim=3)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_pretrained_embeddings(tmp_path / "missing.txt", VOCABULARY, dim=3)


@pytest.mark.parametrize("trainable", [True, False])
def test_build_han_uses_the_pretrained_matrix_frozen_or_trainable(tmp_path, trainable):
    path = tmp_path / "vectors.txt"
    path.write_text("the 0.1 0.2\ncat 0.3 0.4\n", encoding="utf-8")
    config = small_config(embedding={"dim": 2, "pretrained_path": str(path), "trainable": trainable})
    matrix, _ = load_pretrained_embeddings(path, VOCABULARY, dim=2)

    model = build_han(config, len(VOCABULARY), NUM_CLASSES, embedding_matrix=matrix)

    embedding = model.get_layer("word_embedding")
    np.testing.assert_array_equal(embedding.get_weights()[0], matrix)
    assert any(w is embedding.embeddings for w in model.trainable_weights) == trainable
    with pytest.raises(ValueError, match="load_pretrained_embeddings"):
        build_han(config, len(VOCABULARY), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"expected \(vocab_size, embedding.dim\)"):
        build_han(config, len(VOCABULARY) + 1, NUM_CLASSES, embedding_matrix=matrix)
