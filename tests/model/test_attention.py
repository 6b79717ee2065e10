"""Behaviour of the attention pooling layers alone: masks, modes, heads, gradients, config."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.model.attention import SCORE_LAYERS, AttentionPooling, LocationAttentionPooling, normalized_entropy

SCORES = sorted(SCORE_LAYERS)
MODES = ["soft", "hard", "local"]

# Row 0: 3 real steps then padding; row 1: all real; row 2: all padding; row 3: a hole at step 1.
MASK = np.array(
    [
        [True, True, True, False, False, False],
        [True, True, True, True, True, True],
        [False, False, False, False, False, False],
        [True, False, True, True, False, False],
    ]
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def make_layer(score="dot", **kwargs):
    kwargs.setdefault("context_dim", 6)
    return SCORE_LAYERS[score](**kwargs)


def states(batch=4, steps=6, features=5, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, steps, features)).astype("float32")


@pytest.mark.parametrize("score,mode", list(itertools.product(SCORES, MODES)))
@pytest.mark.parametrize("training", [False, True])
def test_weights_sum_to_one_over_real_steps_and_are_exactly_zero_on_padding(score, mode, training):
    layer = make_layer(score, mode=mode, heads=2, hard_training="gumbel" if training else "straight_through")
    pooled, weights = layer(states(), mask=MASK, training=training)
    weights = np.asarray(weights)

    assert pooled.shape == (4, 2 * 5) and weights.shape == (4, 6)
    assert np.all(weights[~MASK] == 0.0)
    assert np.all(weights >= 0.0)
    np.testing.assert_allclose(weights.sum(axis=1), [1.0, 1.0, 0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("score,mode", list(itertools.product(SCORES, MODES)))
def test_a_row_of_padding_gives_zero_weights_and_zero_output_not_nan(score, mode):
    layer = make_layer(score, mode=mode)
    pooled, weights = layer(states(), mask=MASK)

    assert np.all(np.asarray(weights)[2] == 0.0)
    assert np.all(np.asarray(pooled)[2] == 0.0)
    assert np.isfinite(np.asarray(pooled)).all()


@pytest.mark.parametrize("score", SCORES)
def test_padded_steps_do_not_change_the_output_even_when_they_hold_garbage(score):
    layer = make_layer(score, heads=2)
    short = states(batch=1, steps=3)
    pooled, weights = layer(short, mask=np.ones((1, 3), bool))

    padded = np.concatenate([short, np.full((1, 4, 5), np.nan, "float32")], axis=1)
    padded_mask = np.array([[True] * 3 + [False] * 4])
    pooled_padded, weights_padded = layer(padded, mask=padded_mask)

    np.testing.assert_allclose(np.asarray(pooled_padded), np.asarray(pooled), atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights_padded)[:, :3], np.asarray(weights), atol=1e-6)
    assert np.all(np.asarray(weights_padded)[:, 3:] == 0.0)


def test_no_mask_means_every_step_is_real():
    layer = make_layer()
    _, weights = layer(states())
    np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.asarray(weights) > 0)


@pytest.mark.parametrize("score", SCORES)
def test_hard_top1_is_one_hot_over_real_steps_at_inference(score):
    layer = make_layer(score, mode="hard", hard_k=1)
    _, weights = layer(states(), mask=MASK, training=False)
    weights = np.asarray(weights)

    for row in (0, 1, 3):
        assert sorted(weights[row].tolist()) == [0.0] * 5 + [1.0]
        assert MASK[row, int(weights[row].argmax())]
    assert np.all(weights[2] == 0.0)


def test_hard_top1_picks_the_soft_argmax():
    soft = make_layer(mode="soft")
    hard = make_layer(mode="hard")
    x = states()
    soft_weights = np.asarray(soft(x, mask=MASK)[1])
    hard.build(x.shape)
    hard.set_weights(soft.get_weights())
    hard_weights = np.asarray(hard(x, mask=MASK)[1])
    for row in (0, 1, 3):
        assert hard_weights[row].argmax() == soft_weights[row].argmax()


def test_hard_top_k_keeps_k_real_steps_or_all_of_them_when_fewer():
    layer = make_layer(mode="hard", hard_k=2)
    _, weights = layer(states(), mask=MASK, training=False)
    nonzero = (np.asarray(weights) > 0).sum(axis=1)
    assert nonzero.tolist() == [2, 2, 0, 2]

    layer = make_layer(mode="hard", hard_k=5)
    _, weights = layer(states(), mask=MASK, training=False)
    assert (np.asarray(weights) > 0).sum(axis=1).tolist() == [3, 5, 0, 3]


@pytest.mark.parametrize("hard_training", ["straight_through", "gumbel"])
def test_hard_training_is_hard_forward(hard_training):
    layer = make_layer(mode="hard", hard_training=hard_training, seed=3)
    _, weights = layer(states(), mask=MASK, training=True)
    weights = np.asarray(weights)
    for row in (0, 1, 3):
        np.testing.assert_allclose(np.sort(weights[row])[::-1], [1.0] + [0.0] * 5, atol=1e-6)


def test_local_attention_is_a_window_around_the_strongest_real_step():
    window = 1
    soft = make_layer(mode="soft")
    local = make_layer(mode="local", local_window=window)
    x = states(steps=6)
    mask = np.ones((4, 6), bool)
    mask[2, 4:] = False
    soft_weights = np.asarray(soft(x, mask=mask)[1])
    local.build(x.shape)
    local.set_weights(soft.get_weights())
    local_weights = np.asarray(local(x, mask=mask)[1])

    for row in range(4):
        center = int(soft_weights[row].argmax())
        inside = np.zeros(6, bool)
        inside[max(0, center - window) : center + window + 1] = True
        inside &= mask[row]
        assert np.all(local_weights[row][~inside] == 0.0)
        expected = soft_weights[row] * inside
        np.testing.assert_allclose(local_weights[row], expected / expected.sum(), atol=1e-6)


def test_multi_head_concatenates_outputs_and_averages_weights():
    layer = make_layer(heads=3)
    x = states()
    pooled, weights = layer(x, mask=MASK)
    assert pooled.shape == (4, 15)

    # Each head alone: the same projection with that head's context vector.
    projection_kernel, projection_bias, context = layer.get_weights()
    per_head = []
    for head in range(3):
        single = make_layer(heads=1)
        single.build(x.shape)
        single.set_weights([projection_kernel, projection_bias, context[head : head + 1]])
        per_head.append(single(x, mask=MASK))
    np.testing.assert_allclose(np.asarray(pooled), np.concatenate([np.asarray(p) for p, _ in per_head], 1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights), np.mean([np.asarray(w) for _, w in per_head], 0), atol=1e-6)


@pytest.mark.parametrize("score,mode", list(itertools.product(SCORES, MODES)))
def test_every_trainable_weight_gets_a_finite_gradient_even_with_padding_rows(score, mode):
    layer = make_layer(score, mode=mode, heads=2)
    x = tf.constant(states())
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled, _ = layer(x, mask=MASK, training=True)
        loss = tf.reduce_sum(tf.sin(pooled))
    gradients = tape.gradient(loss, layer.trainable_weights + [x])

    assert layer.trainable_weights
    for variable, gradient in zip(layer.trainable_weights + [x], gradients, strict=True):
        assert gradient is not None, getattr(variable, "path", "inputs")
        assert np.isfinite(np.asarray(gradient)).all(), getattr(variable, "path", "inputs")
    # Padded steps receive no gradient: they cannot influence the output.
    assert np.all(np.asarray(gradients[-1])[~MASK] == 0.0)


def test_location_score_has_no_projection_and_no_context():
    layer = LocationAttentionPooling(heads=2)
    layer.build((None, None, 5))
    assert [w.shape for w in layer.trainable_weights] == [(5, 2)]


@pytest.mark.parametrize("score", SCORES)
def test_config_round_trip_rebuilds_the_same_layer(score):
    layer = make_layer(score, heads=2, mode="hard", hard_k=2, hard_training="gumbel", gumbel_temperature=0.5, seed=7)
    x = states()
    layer(x, mask=MASK)
    clone = type(layer).from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())

    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(np.asarray(clone(x, mask=MASK)[1]), np.asarray(layer(x, mask=MASK)[1]))
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"han>{type(layer).__name__}"


def test_compute_output_shape():
    assert make_layer(heads=3).compute_output_shape((2, 7, 5)) == ((2, 15), (2, 7))


@pytest.mark.parametrize(
    "kwargs,message",
    [({"mode": "sparse"}, "mode"), ({"hard_training": "reinforce"}, "hard_training"), ({"heads": 0}, "heads"),
     ({"entropy_penalty": -0.1}, "entropy_penalty")],
)
def test_invalid_arguments_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionPooling(**kwargs)


def test_normalized_entropy_is_one_for_uniform_zero_for_one_hot_and_ignores_padding():
    real = np.expand_dims(MASK[[0, 1]], -1)
    uniform = np.where(real, 1.0, 0.0).astype("float32")
    uniform = uniform / uniform.sum(axis=1, keepdims=True)
    assert float(normalized_entropy(uniform, real)) == pytest.approx(1.0, abs=1e-6)
    one_hot = np.zeros_like(uniform)
    one_hot[:, 0] = 1.0
    assert float(normalized_entropy(one_hot, real)) == pytest.approx(0.0, abs=1e-6)
    # Two real steps with weights 0.5/0.5 beside garbage-free padding: still exactly uniform.
    pair = np.array([[[0.5], [0.5], [0.0]]], dtype="float32")
    assert float(normalized_entropy(pair, np.array([[[True], [True], [False]]]))) == pytest.approx(1.0, abs=1e-6)


def test_entropy_penalty_adds_its_loss_in_training_only_and_sharpens_attention():
    layer = make_layer("additive", entropy_penalty=0.5)
    x = states()
    weights = layer(x, mask=MASK, training=False)[1]
    assert layer.losses == []
    layer(x, mask=MASK, training=True)
    real = np.expand_dims(MASK, -1)
    expected = 0.5 * float(normalized_entropy(np.expand_dims(np.asarray(weights), -1), real))
    assert len(layer.losses) == 1 and float(layer.losses[0]) == pytest.approx(expected, rel=1e-5)

    # Trained on a task that any single step solves, the penalised layer ends sharper.
    def entropy_after_training(penalty: float) -> float:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 5))
        pooled, attention = make_layer("additive", entropy_penalty=penalty)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        data = states(batch=64)
        model.fit(data, data.sum(axis=(1, 2))[:, None] / 6, epochs=30, verbose=0)
        probe = keras.Model(inputs, attention)
        return float(normalized_entropy(np.expand_dims(np.asarray(probe(data)), -1), np.ones((64, 6, 1), bool)))

    assert entropy_after_training(1.0) < entropy_after_training(0.0) - 0.2
