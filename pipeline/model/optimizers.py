"""Lazy Adam: Adam that updates only the embedding rows a batch used.

The gradient of an embedding table is sparse (``tf.IndexedSlices``: the rows of the batch's
words). Keras' ``Adam`` turns it dense and updates every row's moments and weights each step
(keras-team/keras#19992): on IMDB's 39,041 x 200 table the optimizer's step (global-norm
clipping and the update) took 88 ms of a 257 ms training step on 2 cores, 29 ms with this one.
``LazyAdam`` keeps the gradient sparse: the global norm is taken over the rows that are there
(the same norm: every other row's gradient is 0), and only those rows' first and second
moments and weights are updated, as TensorFlow Addons' ``LazyAdam`` and PyTorch's
``SparseAdam`` do. Dense gradients (every other weight) get Keras' Adam unchanged.

What differs from Adam: a row that is not in the batch keeps its moments (Adam decays them) and
does not move (Adam moves it by its decayed momentum). When every row is in every batch, the
two are the same (tests/model/test_optimizers.py). A word used twice in a batch has its two
gradients summed before they are squared, as Adam's math says; Keras' Adam, given the sparse
gradient, squares each repeat on its own (``ops.square`` of ``IndexedSlices`` squares the
slices), so its second moment and global norm are not Adam's there.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="han")
class LazyAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with row-wise (lazy) updates for sparse gradients.

    Takes Adam's arguments. ``global_clipnorm`` is applied without densifying sparse gradients;
    ``clipnorm`` and ``clipvalue`` (per tensor) densify them as in Adam. ``amsgrad`` is not
    supported with sparse gradients.
    """

    def _clip_gradients(self, grads):
        import tensorflow as tf

        if not (self.global_clipnorm and self.global_clipnorm > 0) or not any(isinstance(g, tf.IndexedSlices) for g in grads):
            return super()._clip_gradients(grads)
        grads = [_deduplicated(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        squared = [ops.sum(ops.square(_values(g))) for g in grads if g is not None]
        norm = ops.sqrt(ops.sum(ops.stack(squared)))
        # As keras' clip_by_global_norm: a no-op below the threshold, NaN for a non-finite norm.
        scale = self.global_clipnorm * ops.minimum(1.0 / norm, 1.0 / self.global_clipnorm) + (norm - norm)
        return [_scaled(g, scale) if g is not None else None for g in grads]

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        if self.amsgrad:
            raise ValueError("LazyAdam does not support amsgrad=True with sparse (embedding) gradients")
        if not self._rows_are_unique():
            gradient = _deduplicated(gradient)
        indices, values = gradient.indices, ops.cast(gradient.values, variable.dtype)
        lr = ops.cast(learning_rate, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        # Adam's own formulas (and order of operations), on the batch's rows only.
        m_rows = tf.gather(m.value, indices)
        m_rows = m_rows + (values - m_rows) * (1 - self.beta_1)
        v_rows = tf.gather(v.value, indices)
        v_rows = v_rows + (ops.square(values) - v_rows) * (1 - self.beta_2)
        self.assign(m, tf.IndexedSlices(m_rows, indices, gradient.dense_shape))
        self.assign(v, tf.IndexedSlices(v_rows, indices, gradient.dense_shape))
        step = ops.divide(ops.multiply(m_rows, alpha), ops.add(ops.sqrt(v_rows), self.epsilon))
        self.assign_sub(variable, tf.IndexedSlices(step, indices, gradient.dense_shape))

    def _rows_are_unique(self):
        """Whether ``update_step``'s sparse gradients already hold each row once.

        They do when ``_clip_gradients`` deduplicated them (global-norm clipping on) and no
        all-reduce summed replicas' gradients after it (one replica): deduplicating again would
        repeat a ``tf.unique`` and a segment sum over the batch's rows every step.
        """
        import tensorflow as tf

        clipped = bool(self.global_clipnorm and self.global_clipnorm > 0)
        return clipped and tf.distribute.get_strategy().num_replicas_in_sync == 1


def _deduplicated(gradient):
    """The same sparse gradient with each row once (repeated rows summed), rows in first-seen order."""
    import tensorflow as tf

    rows, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(rows)[0])
    return tf.IndexedSlices(values, rows, gradient.dense_shape)


def _values(gradient):
    import tensorflow as tf

    return gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient


def _scaled(gradient, scale):
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * ops.cast(scale, gradient.values.dtype), gradient.indices, gradient.dense_shape)
    return gradient * scale
