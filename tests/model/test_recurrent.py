"""``pipeline.model.recurrent.BiGRU`` computes Keras' ``Bidirectional(GRU)``: same weights, same outputs,
same gradients (its backward pass is hand-written), masks anywhere in a sequence, save and load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.model.recurrent import BiGRU

UNITS = 5


def keras_bigru():
    return keras.layers.Bidirectional(keras.layers.GRU(UNITS, return_sequences=True))


def twin_layers(features, seed=0):
    """A Keras Bidirectional(GRU) and a BiGRU holding the same (non-trivial) weights."""
    rng = np.random.default_rng(seed)
    reference, ours = keras_bigru(), BiGRU(UNITS)
    sample = np.zeros((1, 2, features), "float32")
    reference(sample), ours(sample)
    # Keras starts the biases at zero; random ones check that each bias goes where Keras adds it.
    weights = [w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in reference.get_weights()]
    reference.set_weights(weights)
    ours.set_weights(weights)
    return reference, ours


def batch(rows=6, steps=9, features=4, seed=1):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(rows, steps, features)).astype("float32")
    lengths = np.array([steps, 1, 4, steps - 1, 0, 6])[:rows]
    mask = np.arange(steps)[None, :] < lengths[:, None]
    mask[3, 2] = False  # a hole inside a sequence: skipped, the state carried over it
    mask[0, 0] = False  # and a masked first step
    return inputs, mask


def outputs_and_gradients(layer, inputs, mask, compiled=False):
    def run(inputs, mask):
        weights = tf.linspace(0.5, 2.0, 2 * UNITS)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, mask=mask)
            loss = tf.reduce_sum(tf.sin(3 * outputs) * weights)  # a loss that weighs every output differently
        return outputs, tape.gradient(loss, [inputs, *layer.trainable_weights])

    outputs, gradients = (tf.function(run) if compiled else run)(tf.constant(inputs), tf.constant(mask))
    return outputs.numpy(), [g.numpy() for g in gradients]


def test_weights_are_keras_bidirectional_gru_weights():
    reference, ours = twin_layers(features=4)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in reference.get_weights()]
    assert len(ours.trainable_weights) == 6


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_outputs_and_gradients_equal_keras(compiled):
    inputs, mask = batch()
    reference, ours = twin_layers(features=inputs.shape[-1])
    expected_outputs, expected_gradients = outputs_and_gradients(reference, inputs, mask)
    outputs, gradients = outputs_and_gradients(ours, inputs, mask, compiled=compiled)

    np.testing.assert_allclose(outputs, expected_outputs, atol=1e-6)
    assert np.all(outputs[~mask] == 0), "masked steps must give zero outputs, as Bidirectional returns them"
    assert np.all(outputs[4] == 0), "an all-masked row gives zeros"
    names = ["inputs", "forward kernel", "forward recurrent kernel", "forward bias",
             "backward kernel", "backward recurrent kernel", "backward bias"]
    for name, gradient, expected in zip(names, gradients, expected_gradients, strict=True):
        scale = np.abs(expected).max()
        assert scale > 0, name
        np.testing.assert_allclose(gradient, expected, atol=1e-5 * scale, err_msg=name)


def test_masked_inputs_do_not_matter():
    inputs, mask = batch()
    _, ours = twin_layers(features=inputs.shape[-1])
    changed = inputs.copy()
    changed[~mask] = 100.0
    a, grads_a = outputs_and_gradients(ours, inputs, mask)
    b, grads_b = outputs_and_gradients(ours, changed, mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.all(grads_b[0][~mask] == 0), "no gradient reaches a masked input"
    for ga, gb in zip(grads_a[1:], grads_b[1:], strict=True):
        np.testing.assert_allclose(ga, gb, atol=1e-5)


def test_without_mask_every_step_counts():
    inputs, _ = batch()
    reference, ours = twin_layers(features=inputs.shape[-1])
    np.testing.assert_allclose(ours(inputs).numpy(), reference(inputs).numpy(), atol=1e-6)


def test_inference_projects_each_distinct_token_once_with_the_same_outputs():
    rng = np.random.default_rng(3)
    token_ids = rng.integers(0, 5, size=(6, 9))  # few distinct ids: most steps repeat one
    table = rng.normal(size=(5, 4)).astype("float32")
    embedded = table[token_ids]
    mask = token_ids != 0
    _, ours = twin_layers(features=4)
    plain = ours(embedded, mask=mask).numpy()
    np.testing.assert_allclose(ours(embedded, mask=mask, token_ids=token_ids).numpy(), plain, atol=1e-6)
    np.testing.assert_allclose(tf.function(lambda x, m, i: ours(x, mask=m, token_ids=i))(embedded, mask, token_ids).numpy(),
                               plain, atol=1e-6)

    # The ids are what decides which steps share a projection: vectors that differ under one id
    # (dropout's doing) are each projected in training, and projected once (the first) at inference.
    noisy = embedded + rng.normal(scale=0.5, size=embedded.shape).astype("float32")
    np.testing.assert_allclose(ours(noisy, mask=mask, training=True, token_ids=token_ids).numpy(),
                               ours(noisy, mask=mask).numpy(), atol=1e-6)
    flat_ids, flat = token_ids.T.ravel(), noisy.transpose(1, 0, 2).reshape(-1, 4)  # the layer's time-major order
    first = {i: flat[np.flatnonzero(flat_ids == i)[0]] for i in np.unique(flat_ids)}
    as_first = np.stack([first[i] for i in flat_ids]).reshape(9, 6, 4).transpose(1, 0, 2)
    with_ids = ours(noisy, mask=mask, token_ids=token_ids).numpy()
    np.testing.assert_allclose(with_ids, ours(as_first, mask=mask).numpy(), atol=1e-6)
    assert np.abs(with_ids - ours(noisy, mask=mask).numpy()).max() > 1e-2


def test_a_table_and_an_index_give_the_outputs_and_gradients_of_the_gathered_inputs():
    # index: inputs is a table of vectors and each step reads one row; every row is projected once,
    # in training too, and the gradients are those of the gathered inputs, summed per row.
    rng = np.random.default_rng(4)
    table = tf.constant(rng.normal(size=(5, 4)).astype("float32"))
    index = rng.integers(0, 5, size=(6, 9)).astype("int32")
    mask = index != 0
    _, ours = twin_layers(features=4)
    for training in (False, True):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(table)
            from_table = ours(table, mask=mask, training=training, index=index)
            gathered = ours(tf.gather(table, index), mask=mask, training=training)
            weights = tf.constant(rng.normal(size=from_table.shape).astype("float32"))
            losses = [tf.reduce_sum(weights * y) for y in (from_table, gathered)]
        np.testing.assert_allclose(from_table.numpy(), gathered.numpy(), atol=1e-6)
        for a, b in zip(*(tape.gradient(loss, [table, *ours.trainable_variables]) for loss in losses), strict=True):
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-5)
    graph = tf.function(lambda t, m, i: ours(t, mask=m, training=True, index=i)).get_concrete_function(table, mask, index).graph
    # the input kernels multiply the 5 table rows, not the 54 steps
    projections = [op for op in graph.get_operations() if op.type == "MatMul" and op.inputs[0].shape[0] == 5]
    assert len(projections) == 2


def test_saves_and_loads(tmp_path):
    inputs, mask = batch()
    layer_input = keras.Input((None, inputs.shape[-1]))
    model = keras.Model(layer_input, BiGRU(UNITS, name="encoder")(layer_input))
    path = tmp_path / "bigru.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("encoder"), BiGRU)
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), atol=1e-7)


def test_learns_a_task_that_needs_the_first_and_last_real_steps():
    """Real Keras training: label = whether the first real step's sign equals the last's, so the
    state must carry over the steps between them and stop at each row's own end."""
    rng = np.random.default_rng(3)
    rows, steps = 512, 7
    inputs = rng.normal(size=(rows, steps, 1)).astype("float32")
    lengths = rng.integers(2, steps + 1, size=rows)
    mask = np.arange(steps)[None, :] < lengths[:, None]
    inputs[~mask] = 0.0
    labels = (np.sign(inputs[:, 0, 0]) == np.sign(inputs[np.arange(rows), lengths - 1, 0])).astype("int32")
    keras.utils.set_random_seed(0)
    values = keras.Input((steps, 1))
    valid = keras.Input((steps,), dtype="bool")
    states = BiGRU(8)(values, mask=valid)
    pooled = keras.layers.GlobalAveragePooling1D()(states, mask=valid)
    model = keras.Model([values, valid], keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit([inputs, mask], labels, epochs=25, batch_size=64, verbose=0)
    assert history.history["accuracy"][-1] > 0.9, history.history["accuracy"][-5:]


def test_a_han_trains_as_with_keras_bidirectional_gru_from_the_same_weights(monkeypatch):
    """The whole HAN (masks, empty sentences, three length groups), Keras' fit, 4 epochs: the same
    losses and weights whichever GRU it is built with, once both start from the same weights."""
    import pipeline.model.han as han

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 96)
    token_ids = np.zeros((96, 5, 7), "int32")
    for row, label in enumerate(labels):
        for sentence in range(rng.integers(1, 6)):
            length = rng.integers(1, 8)
            token_ids[row, sentence, :length] = rng.integers(5, 40, length)
        token_ids[row, rng.integers(0, 2), 0] = 2 + label  # the class keyword in one of the first two sentences
    config = han.ModelConfig(word_buckets=3, word_bucket_sentences=8, embedding={"dim": 8}, word_units=4,
                             sentence_units=4, dropout=0.0, word_attention={"context_dim": 4},
                             sentence_attention={"context_dim": 4})
    histories, weights, initial = [], [], None
    for encoder in ("keras", "ours"):
        if encoder == "keras":  # the model as it was built before BiGRU
            monkeypatch.setattr(han, "_bidirectional", lambda kind, units, name: keras.layers.Bidirectional(
                keras.layers.GRU(units, return_sequences=True), name=name))
        else:
            monkeypatch.undo()
        model = han.build_han(config, 40, 3)
        assert isinstance(model.get_layer("word_encoder"), BiGRU) == (encoder == "ours")
        if initial is None:
            initial = model.get_weights()
        else:
            model.set_weights(initial)
        trainer = han.compile_han(model, config, learning_rate=1e-2)
        histories.append(trainer.fit(token_ids, labels, batch_size=16, epochs=4, shuffle=False, verbose=0).history["loss"])
        weights.append(model.get_weights())
    assert histories[0][-1] < histories[0][0] - 0.1, histories[0]  # it learnt something, so the comparison means something
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-4)
    for ours, expected in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(ours, expected, atol=1e-4)
