"""``train.ema_decay``: the moving average of the weights (``pipeline.training.callbacks.WeightAverage``)."""

from __future__ import annotations

import numpy as np
import pytest


def _variables(values):
    import keras

    return [keras.Variable(np.asarray(v, dtype="float32")) for v in values]


def test_the_average_follows_each_step_with_the_decay_ramped_up():
    from pipeline.training.callbacks import WeightAverage

    variables = _variables([[0.0, 0.0], [[1.0]]])
    average = WeightAverage(variables, decay=0.9)
    expected = [np.zeros(2), np.ones((1, 1))]
    rng = np.random.default_rng(0)
    for step in range(1, 40):
        new = [rng.normal(size=2), rng.normal(size=(1, 1))]
        for variable, value in zip(variables, new, strict=True):
            variable.assign(value.astype("float32"))
        average.update()
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18 at the first step: the initialisation fades fast
        expected = [decay * e + (1 - decay) * n for e, n in zip(expected, new, strict=True)]
    for shadow, e in zip(average.shadow, expected, strict=True):
        np.testing.assert_allclose(shadow.numpy(), e, rtol=1e-5, atol=1e-6)


def test_validation_reads_the_average_and_training_gets_its_weights_back():
    from pipeline.training.callbacks import WeightAverage

    variables = _variables([[1.0, 2.0]])
    average = WeightAverage(variables, decay=0.5)
    variables[0].assign(np.array([3.0, 6.0], dtype="float32"))
    average.update()
    callback = average.callback()
    callback.on_test_begin()
    averaged = np.asarray(variables[0].value)
    callback.on_test_end()
    assert not np.allclose(averaged, [3.0, 6.0])
    np.testing.assert_allclose(averaged, average.shadow[0].numpy())
    np.testing.assert_array_equal(np.asarray(variables[0].value), [3.0, 6.0])


def test_a_checkpoint_carries_the_average_and_a_foreign_one_is_refused():
    from pipeline.training.callbacks import WeightAverage

    first = WeightAverage(_variables([[1.0, 2.0]]), decay=0.9)
    first.variables[0].assign(np.array([5.0, 5.0], dtype="float32"))
    first.update()
    saved = dict(first.items())
    second = WeightAverage(_variables([[0.0, 0.0]]), decay=0.9)
    assert second.restore(saved)
    np.testing.assert_array_equal(second.shadow[0].numpy(), first.shadow[0].numpy())
    assert float(second.steps.numpy()) == 1.0
    other = WeightAverage(_variables([[0.0, 0.0, 0.0]]), decay=0.9)
    assert not other.restore(saved) and not other.restore({})
    np.testing.assert_array_equal(other.shadow[0].numpy(), np.zeros(3))


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_the_decay_must_lie_strictly_between_0_and_1(decay):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, [f"train.ema_decay={decay}"])
