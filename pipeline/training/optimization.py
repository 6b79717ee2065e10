"""The optimizer, its learning-rate schedule and class weights, as ``train.*`` describes them."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import TrainConfig


def build_optimizer(train: TrainConfig, steps_per_epoch: int):
    """The optimizer and learning-rate schedule of ``train`` (schedules step per batch)."""
    import keras

    rate: Any = train.learning_rate
    if train.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps=max(1, train.epochs * steps_per_epoch))
    elif train.schedule == "exponential":
        rate = keras.optimizers.schedules.ExponentialDecay(
            train.learning_rate, decay_steps=max(1, steps_per_epoch), decay_rate=train.decay_rate
        )
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=train.momentum, global_clipnorm=train.clipnorm)
    if train.optimizer == "lazy_adam":
        from pipeline.model.optimizers import LazyAdam

        return LazyAdam(learning_rate=rate, global_clipnorm=train.clipnorm)
    return keras.optimizers.Adam(learning_rate=rate, global_clipnorm=train.clipnorm)


def current_learning_rate(optimizer) -> float:
    """The rate the optimizer's next step uses, as the shortest decimal of its float32 value
    (0.002, not 0.0020000000949949026)."""
    rate = optimizer.learning_rate
    return float(str(np.float32(np.asarray(rate() if callable(rate) else rate))))


def class_weight_table(counts: np.ndarray) -> np.ndarray:
    """``train.class_weights: balanced`` from the number of documents per class: weight_c = n / (classes x
    count_c), as scikit-learn computes it; a class without documents gets 0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros(len(counts))
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
