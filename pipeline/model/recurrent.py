"""A bidirectional GRU for a CPU: the same function as Keras', in fewer and larger ops.

``keras.layers.Bidirectional(keras.layers.GRU(units))`` runs, off a GPU, one ``while`` loop per
direction whose every step multiplies that step's inputs by the input kernel, adds the biases,
applies the gates and selects the masked state and output; its gradient is TensorFlow's
automatic one of that loop, which saves every intermediate of every step and replays each op's
gradient one step at a time. ``BiGRU`` computes the same outputs and gradients with:

1. the input projections of every step hoisted out of the loops: one ``(steps x rows, features)
   @ (features, 3 units)`` matmul per direction, forward and backward, instead of a small one
   per step (the input kernel holds 4/5 of the word GRU's multiply-adds at the HAN's sizes);
2. a forward loop of one matmul and a handful of elementwise ops per step that keeps nothing
   but the states; the backward direction reads the steps last to first and writes its states
   in input order (no reversed copies);
3. a hand-written backward pass (``gru_steps``): every step's gates recomputed at once from the
   saved states (one large matmul), folded into five factors, then one loop of a matmul and a
   few multiplies per step; the recurrent kernel's gradient is one large matmul after it;
4. at inference, given the token ids the inputs were embedded from, the input projections of
   each distinct id once (``token_ids``): a group of IMDB sentences has ~4.7x as many
   ``(sentences, words)`` cells as distinct ids in it; given a table of vectors and each
   step's row in it (``index``), the same in training too.

Masked steps carry the state over (``where``), as Keras' masked RNN does, so masked words
anywhere in a sequence are skipped exactly, and their outputs are zero, as ``Bidirectional``
returns them. The weights are Keras' ``GRU`` weights (``reset_after=True``, sigmoid gates, tanh)
created in ``Bidirectional``'s order with its initialisers: ``set_weights`` takes a
``Bidirectional(GRU)``'s ``get_weights()`` one to one, and outputs and gradients agree to float
rounding (tests/model/test_recurrent.py). Speed: README, "Speed on a CPU".
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="han")
class BiGRU(keras.layers.Layer):
    """Bidirectional GRU returning the concatenated forward and backward states of every step.

    Args:
        units: State size of each direction; the output has ``2 * units`` features.

    Call arguments:
        inputs: Float tensor ``(rows, steps, features)``.
        mask: Optional bool tensor ``(rows, steps)``; ``False`` steps are skipped (the state is
            carried over them) and give zero outputs.
        training: With ``token_ids``: False or None (inference) projects each distinct id once.
        token_ids: Optional int tensor ``(rows, steps)``, the ids ``inputs`` were looked up
            from, for inference: equal ids must have equal input vectors (true of an embedding
            without dropout). Each distinct id's vector is then multiplied by the input kernels
            once and the results gathered to the steps. Ignored when ``training`` is True
            (dropout between the embedding and this layer makes equal ids differ). Gradients
            with respect to ``inputs`` then reach only each id's first step: differentiate
            with ``training=True`` (the train stage does) or without ``token_ids``.

        index: Optional int tensor ``(rows, steps)``: ``inputs`` is then a table ``(vectors,
            features)`` and step ``t`` of row ``r`` reads its row ``index[r, t]``, in training
            and at inference alike. Each table row goes through the input kernels once, and
            the gradients are exact (those of the gathered inputs, summed per table row). The
            HAN passes the distinct words of a group of sentences this way when every
            occurrence of a word shares one dropout mask (``model.embedding_dropout:
            word_type``).

    Returns:
        ``(rows, steps, 2 * units)``: at each step the forward state, then the backward state.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.supports_masking = True

    def build(self, input_shape):
        features = input_shape[-1]
        # Per direction: kernel, recurrent kernel, bias (input bias row, recurrent bias row), as Keras' GRU.
        self.directions = [
            (
                self.add_weight(shape=(features, 3 * self.units), initializer="glorot_uniform", name=f"{direction}_kernel"),
                self.add_weight(shape=(self.units, 3 * self.units), initializer="orthogonal", name=f"{direction}_recurrent_kernel"),
                self.add_weight(shape=(2, 3 * self.units), initializer="zeros", name=f"{direction}_bias"),
            )
            for direction in ("forward", "backward")
        ]

    def call(self, inputs, mask=None, training=None, token_ids=None, index=None):
        units = self.units
        inputs = tf.convert_to_tensor(inputs)
        shape = tf.shape(inputs) if index is None else tf.shape(index)
        rows, steps = shape[0], shape[1]
        if mask is None:
            mask = tf.ones((rows, steps), dtype=tf.bool)
        mask = tf.cast(mask, tf.bool)

        # Time-major; each direction's inputs through its input kernel in one matmul, outside the loops.
        step_mask = tf.transpose(mask, (1, 0))[..., None]  # (steps, rows, 1)
        # The vectors to project (``table``) and, when they are not the steps themselves, the row
        # of ``table`` each time-major step reads (``rows_of_steps``): each row projected once.
        if index is not None:  # a table of input vectors
            table, rows_of_steps = inputs, tf.transpose(index, (1, 0))
        elif token_ids is not None and not training:
            # Each distinct id's vector, read at its first time-major step (no transpose of the inputs).
            distinct, rows_of_steps = tf.unique(tf.reshape(tf.transpose(token_ids, (1, 0)), (-1,)))
            first = tf.math.unsorted_segment_min(tf.range(tf.size(rows_of_steps)), rows_of_steps, tf.size(distinct))
            table = tf.gather(tf.reshape(inputs, (-1, shape[2])), (first % rows) * steps + first // rows)
        else:
            table, rows_of_steps = tf.reshape(tf.transpose(inputs, (1, 0, 2)), (-1, shape[2])), None

        def project(kernel, bias):
            projected = tf.matmul(table, kernel) + bias
            return projected if rows_of_steps is None else tf.gather(projected, rows_of_steps)

        states = [
            gru_steps(tf.reshape(project(kernel, bias[0]), (steps, rows, 3 * units)), step_mask,
                      tf.convert_to_tensor(recurrent_kernel), bias[1], reverse=reverse)
            for (kernel, recurrent_kernel, bias), reverse in zip(self.directions, (False, True), strict=True)
        ]
        both = tf.concat(states, axis=-1) * tf.cast(step_mask, inputs.dtype)
        return tf.transpose(both, (1, 0, 2))

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 2:  # a table with ``index``: the steps come from the index
            return (None, None, 2 * self.units)
        return (*input_shape[:-1], 2 * self.units)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def gru_steps(projected, mask, recurrent_kernel, recurrent_bias, reverse=False):
    """One GRU recurrence over time-major inputs, with a hand-written backward pass.

    Args:
        projected: ``(steps, rows, 3 * units)``: the inputs already multiplied by the input
            kernel, input bias added; column blocks update, reset, candidate (Keras'
            ``reset_after`` form).
        mask: Bool ``(steps, rows, 1)``: where False the state is carried over unchanged.
        recurrent_kernel: ``(units, 3 * units)``, the same column blocks.
        recurrent_bias: ``(3 * units,)``.
        reverse: Run from the last step to the first (the backward direction). The states are
            returned in input order either way.

    Returns:
        The state after each step, ``(steps, rows, units)``, starting from a zero state.

    The forward pass is one loop of a matmul and a handful of elementwise ops per step, and
    keeps nothing per step but the states. The backward pass recomputes every step's gates at
    once from the states (one large matmul, vectorised elementwise math), folds them into the
    few factors the backward recurrence needs, and runs one loop of a matmul and a few
    multiplies per step; the recurrent kernel's gradient is then one large matmul. TensorFlow's
    automatic gradient of the loop instead saves the intermediates of every step and replays
    each op's gradient one step at a time.
    """
    units = recurrent_kernel.shape[0]
    steps, rows = tf.shape(projected)[0], tf.shape(projected)[1]
    first, last, stride = (steps - 1, 0, -1) if reverse else (0, steps - 1, 1)

    def array(width):
        return tf.TensorArray(projected.dtype, size=steps, element_shape=tf.TensorShape([None, width]))

    @tf.custom_gradient
    def run(projected, recurrent_kernel, recurrent_bias):
        def step(i, state, outputs):
            t = first + stride * i
            update, _, candidate, _ = _gates(tf.gather(projected, t), tf.matmul(state, recurrent_kernel) + recurrent_bias)
            new_state = tf.where(tf.gather(mask, t), candidate + update * (state - candidate), state)
            return i + 1, new_state, outputs.write(t, new_state)

        _, _, outputs = tf.while_loop(
            lambda i, *_: i < steps, step, (tf.constant(0), tf.zeros((rows, units), projected.dtype), array(units)),
            maximum_iterations=steps, parallel_iterations=32)
        states = outputs.stack()

        def grad(d_states):
            # Every step's gates at once, from the state before each step.
            zero = tf.zeros_like(states[:1])
            previous = tf.concat([states[1:], zero], axis=0) if reverse else tf.concat([zero, states[:-1]], axis=0)
            inner = tf.reshape(tf.matmul(tf.reshape(previous, (-1, units)), recurrent_kernel), (steps, rows, 3 * units)) + recurrent_bias
            update, reset, candidate, inner_candidate = _gates(projected, inner)
            real = tf.cast(mask, projected.dtype)
            # state = real (candidate + update (previous - candidate)) + (1 - real) previous; with g = d state:
            # d pre-candidate = g real (1 - update)(1 - candidate^2); d pre-update = g real (previous - candidate) update (1 - update);
            # d pre-reset = d pre-candidate inner_candidate reset (1 - reset); d previous = g (1 - real (1 - update)) + d inner R^T.
            factors = tf.concat([
                real * (1 - update) * (1 - tf.square(candidate)),
                real * (previous - candidate) * update * (1 - update),
                inner_candidate * reset * (1 - reset),
                reset,
                1 - real * (1 - update),
            ], axis=-1)

            def back(i, d_state, d_inner_steps, d_candidate_steps):
                t = last - stride * i
                g = tf.gather(d_states, t) + d_state
                candidate_factor, update_factor, reset_factor, reset, carry = tf.split(tf.gather(factors, t), 5, axis=-1)
                d_candidate = g * candidate_factor
                d_inner = tf.concat([g * update_factor, d_candidate * reset_factor, d_candidate * reset], axis=-1)
                d_previous = g * carry + tf.matmul(d_inner, recurrent_kernel, transpose_b=True)
                return i + 1, d_previous, d_inner_steps.write(t, d_inner), d_candidate_steps.write(t, d_candidate)

            _, _, d_inner_steps, d_candidate_steps = tf.while_loop(
                lambda i, *_: i < steps, back,
                (tf.constant(0), tf.zeros((rows, units), projected.dtype), array(3 * units), array(units)),
                maximum_iterations=steps, parallel_iterations=32)
            d_inner = d_inner_steps.stack()
            d_projected = tf.concat([d_inner[..., : 2 * units], d_candidate_steps.stack()], axis=-1)
            d_kernel = tf.matmul(tf.reshape(previous, (-1, units)), tf.reshape(d_inner, (-1, 3 * units)), transpose_a=True)
            return d_projected, d_kernel, tf.reduce_sum(d_inner, axis=(0, 1))

        return states, grad

    return run(projected, recurrent_kernel, recurrent_bias)


def _gates(projected, inner):
    """Update gate, reset gate, candidate state and the recurrent candidate term of Keras' GRU
    (``reset_after``), from the projected inputs and the projected previous state (column blocks
    update, reset, candidate), for one step or for all at once: the forward loop and the backward
    pass's recomputation use the same formulas."""
    units = projected.shape[-1] // 3
    x_gates, x_candidate = tf.split(projected, [2 * units, units], axis=-1)
    inner_gates, inner_candidate = tf.split(inner, [2 * units, units], axis=-1)
    update, reset = tf.split(tf.sigmoid(x_gates + inner_gates), 2, axis=-1)
    return update, reset, tf.tanh(x_candidate + reset * inner_candidate), inner_candidate
