"""Attention pooling: a masked sequence of states becomes one vector plus its attention weights.

The HAN (Yang et al., NAACL 2016) uses it twice: words -> sentence vector, sentences -> document
vector. ``AttentionPooling`` holds the whole algorithm; the variants override only the score.

Algorithm (one head), for states ``h_i`` of shape ``(features,)`` at real positions ``i``::

    u_i = tanh(W h_i + b)                  projection, W: (features, context_dim)
    s_i = score(u_i, u_ctx)                 u_ctx: a learned context vector (context_dim,)
    a_i = exp(s_i) / sum_j exp(s_j)         over real positions only; padding gets exactly 0
    output = sum_i a_i h_i

Score functions (``score`` in ``AttentionConfig``; ``SCORE_LAYERS`` maps the names to classes):

=============  ==============================  ===============================================
``dot``        ``u_i . u_ctx``                 ``AttentionPooling``: the HAN paper's own score
                                               (eq. 5-6 for words, 8-9 for sentences).
``additive``   ``v . tanh(u_i + u_ctx)``       ``AdditiveAttentionPooling``: Bahdanau's
                                               concat score on the projected states.
``scaled_dot`` ``u_i . u_ctx / sqrt(d)``       ``ScaledDotAttentionPooling``.
``general``    ``u_i^T W_s u_ctx``             ``GeneralAttentionPooling``: Luong's bilinear.
``location``   ``w . h_i`` (no projection,     ``LocationAttentionPooling``: Luong's location
               no context vector)              score, linear in the encoder state.
=============  ==============================  ===============================================

With a learned constant context (no decoder query), several of these are the same family of
functions in different parametrisations: the HAN ``dot`` score *is* Bahdanau's additive score
``v . tanh(W_1 h + W_2 q)`` with a constant query, because ``W_2 q`` is absorbed in ``b`` and
``v = u_ctx``. That is why ``additive`` here adds the second ``tanh`` (so it differs from
``dot``), and why ``dot`` is the one to pick for a faithful HAN (``AttentionConfig``'s default
score is ``additive``: set ``score: dot`` to reproduce the paper).

Modes (``mode``): ``soft`` (the paper), ``hard`` (top-k), ``local`` (a window); see
``AttentionPooling``. Multi-head pooling (``heads > 1``) learns one context vector per head,
shares the projection, and concatenates the heads' pooled vectors; the weights it returns are
the mean over heads (each head's weights sum to 1, so the mean does too).
"""

from __future__ import annotations

import math

import keras
from keras import ops

# Put in the scores of padded positions before the max-shift of the softmax, so that a padded
# position is never the maximum; their exponentials are then replaced by exact zeros (a `where`
# on the mask), so the padded weights are exactly 0 whatever this value is.
_LARGE_NEGATIVE = -1e9

MODES = ("soft", "hard", "local")
HARD_TRAINING = ("straight_through", "gumbel")


@keras.saving.register_keras_serializable(package="han")
class AttentionPooling(keras.layers.Layer):
    """Attention pooling over steps with a learned context vector and the dot-product score.

    ``s_i = u_i . u_ctx`` with ``u_i = tanh(W h_i + b)``: exactly the HAN paper's attention.
    Subclasses change only ``_calculate_scores`` (and ``build`` for the score's own weights),
    as ``keras.layers.AdditiveAttention`` does with ``keras.layers.Attention``.

    Modes:
        ``"soft"``: softmax over the real positions. The paper's attention; use it by default.
        ``"hard"``: only the ``hard_k`` highest-scoring real positions get weight (their
            softmax weights renormalised over them, so ``hard_k=1`` is one-hot). Training uses
            ``hard_training``: ``"straight_through"`` (forward pass hard, gradient of the soft
            weights; deterministic) or ``"gumbel"`` (straight-through Gumbel-softmax: the top-k
            of Gumbel-perturbed scores forward, the gradient of
            ``softmax((s + g) / gumbel_temperature)`` backward; explores other positions while
            training). Inference is deterministic top-k. Use it when the label is decided by a
            few sentences/words and you want explanations that name them outright.
        ``"local"``: a window of ``+-local_window`` positions around the highest-scoring real
            position; the softmax weights inside it are renormalised, everything outside gets
            exactly 0. Same rule in training and inference; the gradient flows through the
            weights inside the window. Use it when evidence is contiguous (a passage), for
            long sequences where a global softmax spreads too thin.

    Args:
        context_dim: Size ``d`` of the projection ``u_i`` and of each context vector.
        heads: Number of context vectors. Outputs are concatenated, so the pooled vector has
            ``heads * features`` values; the returned weights are averaged over heads.
        mode: ``"soft"``, ``"hard"`` or ``"local"`` (see above).
        hard_k: Positions kept by ``"hard"`` mode (all real ones when a row has fewer).
        hard_training: ``"straight_through"`` or ``"gumbel"``: how ``"hard"`` mode trains.
        gumbel_temperature: Temperature of the relaxed softmax in ``"gumbel"`` training.
        local_window: Half-width ``D`` of the ``"local"`` window (``0``: the argmax only).
        entropy_penalty: ``λ >= 0``; in training, adds ``λ`` x the mean normalised entropy of the
            weights (``normalized_entropy``) to the model's loss: sharper attention, which puts
            the evidence in fewer positions (0, the default: the paper's plain softmax).
        seed: Seed of the Gumbel noise (only used by ``hard`` + ``gumbel``).

    Call arguments:
        inputs: States of shape ``(batch_size, steps, features)``.
        mask: Boolean tensor of shape ``(batch_size, steps)``; ``False`` marks padding. Padded
            steps get exactly 0 weight and do not change the output; a row with no ``True``
            gets all-zero weights and a zero output (never NaN). ``None``: all steps are real.
        training: Python boolean; ``"hard"`` mode and ``entropy_penalty`` act in training only.
        penalty_rows: Optional scalar tensor: the entropy penalty is the sum over this call's
            rows divided by it, instead of their mean. A batch split into groups (the length
            groups of ``pipeline.model.han``) passes its total row count to each group's call, so
            the groups' penalties add up to the mean over the whole batch.

    Returns:
        A tuple ``(pooled, weights)``: ``pooled`` of shape ``(batch_size, heads * features)``
        and ``weights`` of shape ``(batch_size, steps)``, float32, summing to 1 over the real steps of
        each row (0 for a row without real steps).
    """

    # What the base algorithm builds for the score; the location score needs neither.
    uses_projection = True
    uses_context = True

    def __init__(
        self,
        context_dim=100,
        heads=1,
        mode="soft",
        hard_k=1,
        hard_training="straight_through",
        gumbel_temperature=1.0,
        local_window=2,
        entropy_penalty=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_choice("mode", mode, MODES)
        _check_choice("hard_training", hard_training, HARD_TRAINING)
        for name, value, minimum in (
            ("context_dim", context_dim, 1),
            ("heads", heads, 1),
            ("hard_k", hard_k, 1),
            ("local_window", local_window, 0),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer >= {minimum}, got {value!r}")
        if not entropy_penalty >= 0:
            raise ValueError(f"{type(self).__name__}: entropy_penalty must be >= 0, got {entropy_penalty!r}")
        if not gumbel_temperature > 0:
            raise ValueError(f"{type(self).__name__}: gumbel_temperature must be > 0, got {gumbel_temperature!r}")
        self.context_dim = context_dim
        self.heads = heads
        self.mode = mode
        self.hard_k = hard_k
        self.hard_training = hard_training
        self.gumbel_temperature = float(gumbel_temperature)
        self.local_window = local_window
        self.entropy_penalty = float(entropy_penalty)
        self.seed = seed
        self.supports_masking = True
        if mode == "hard" and hard_training == "gumbel":
            self.seed_generator = keras.random.SeedGenerator(seed)

    # ------------------------------------------------------------------ weights
    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"{self.name}: the last axis (features) of the input must be known, got {input_shape}")
        if self.uses_projection:
            self.projection_kernel = self.add_weight(
                name="projection_kernel", shape=(features, self.context_dim), initializer="glorot_uniform"
            )
            self.projection_bias = self.add_weight(
                name="projection_bias", shape=(self.context_dim,), initializer="zeros"
            )
        if self.uses_context:
            self.context = self.add_weight(
                name="context", shape=(self.heads, self.context_dim), initializer="glorot_uniform"
            )

    # ------------------------------------------------------------------ the score
    def _calculate_scores(self, keys):
        """Dot-product score of every position against every context vector.

        Args:
            keys: Projected states ``u`` of shape ``(batch_size, steps, context_dim)`` (the raw
                states ``h``, ``(batch_size, steps, features)``, when ``uses_projection`` is
                False).

        Returns:
            Scores of shape ``(batch_size, steps, heads)``.
        """
        # A matmul, not an einsum (see the pooling in ``call``).
        return ops.matmul(keys, ops.transpose(self.context))

    # ------------------------------------------------------------------ the algorithm
    def call(self, inputs, mask=None, training=None, penalty_rows=None):
        batch_size, steps = ops.shape(inputs)[0], ops.shape(inputs)[1]
        if mask is None:
            mask = ops.ones((batch_size, steps), dtype="bool")
        real = ops.expand_dims(ops.cast(mask, "bool"), -1)  # (batch, steps, 1)
        keys = inputs
        if self.uses_projection:
            keys = ops.tanh(ops.matmul(inputs, self.projection_kernel) + self.projection_bias)
        # Weights are computed in float32 even under mixed precision: -1e9 is -inf in float16.
        scores = ops.where(real, ops.cast(self._calculate_scores(keys), "float32"), _LARGE_NEGATIVE)
        head_weights = self._weights_from_scores(scores, real, training)  # (batch, steps, heads)
        if training and self.entropy_penalty > 0:
            self.add_loss(self.entropy_penalty * normalized_entropy(head_weights, real, penalty_rows))
        # Zero the padded states too: 0 * NaN from an encoder's padding would still be NaN.
        states = ops.where(real, inputs, ops.zeros_like(inputs))
        # sum_i a_i h_i per head as a broadcast product and a sum, not an einsum: on a CPU the word
        # attention's einsums and their gradients took 18 of a training step's 227 ms of CPU time
        # (IMDB, 8 groups, 2 cores, TensorFlow's profiler), the products and sums ~3 ms.
        weighted = ops.expand_dims(ops.cast(head_weights, inputs.dtype), -1) * ops.expand_dims(states, 2)
        pooled = ops.reshape(ops.sum(weighted, axis=1), (batch_size, self.heads * inputs.shape[-1]))
        return pooled, ops.mean(head_weights, axis=-1)

    def _weights_from_scores(self, scores, real, training):
        """Scores ``(batch, steps, heads)`` -> weights of the same shape, 0 where ``real`` is False."""
        soft = _masked_softmax(scores, real)
        if self.mode == "soft":
            return soft
        if self.mode == "local":
            center = ops.argmax(scores, axis=1)  # (batch, heads)
            distance = ops.abs(_positions_like(scores) - ops.expand_dims(center, 1))
            window = ops.logical_and(ops.less_equal(distance, self.local_window), real)
            return _renormalize(ops.where(window, soft, ops.zeros_like(soft)))
        if training and self.hard_training == "gumbel":
            uniform = keras.random.uniform(ops.shape(scores), minval=1e-7, maxval=1.0, seed=self.seed_generator)
            perturbed = scores - ops.log(-ops.log(uniform))
            relaxed = _masked_softmax(perturbed / self.gumbel_temperature, real)
            hard = _keep_top_k(relaxed, perturbed, real, self.hard_k)
            return relaxed + ops.stop_gradient(hard - relaxed)
        hard = _keep_top_k(soft, scores, real, self.hard_k)
        if training:
            return soft + ops.stop_gradient(hard - soft)
        return hard

    def compute_output_shape(self, input_shape):
        batch_size, steps, features = input_shape
        return (batch_size, self.heads * features), (batch_size, steps)

    def compute_mask(self, inputs, mask=None):
        return None  # the steps axis is pooled away

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "context_dim": self.context_dim,
                "heads": self.heads,
                "mode": self.mode,
                "hard_k": self.hard_k,
                "hard_training": self.hard_training,
                "gumbel_temperature": self.gumbel_temperature,
                "local_window": self.local_window,
                "entropy_penalty": self.entropy_penalty,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="han")
class AdditiveAttentionPooling(AttentionPooling):
    """Attention pooling with Bahdanau's additive ("concat") score on the projected states.

    ``s_i = v . tanh(u_i + u_ctx)`` with ``u_i = tanh(W h_i + b)`` and a learned vector ``v``
    of size ``context_dim``: ``keras.layers.AdditiveAttention`` with the context vector as the
    query. One more non-linearity than the HAN ``dot`` score, so the score is not a linear
    function of ``u_i``; try it when ``dot`` underfits. Shapes as ``AttentionPooling``.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.score_vector = self.add_weight(
            name="score_vector", shape=(self.context_dim,), initializer="glorot_uniform"
        )

    def _calculate_scores(self, keys):
        # (batch, steps, 1, d) + (1, 1, heads, d) -> (batch, steps, heads, d)
        summed = ops.tanh(ops.expand_dims(keys, 2) + self.context[None, None, :, :])
        return ops.sum(summed * self.score_vector, axis=-1)


@keras.saving.register_keras_serializable(package="han")
class ScaledDotAttentionPooling(AttentionPooling):
    """Attention pooling with the scaled dot-product score ``s_i = u_i . u_ctx / sqrt(d)``.

    The HAN score divided by ``sqrt(context_dim)`` (Vaswani et al., 2017), which keeps the
    initial softmax from saturating when ``context_dim`` is large. Shapes as
    ``AttentionPooling``.
    """

    def _calculate_scores(self, keys):
        return super()._calculate_scores(keys) / math.sqrt(self.context_dim)


@keras.saving.register_keras_serializable(package="han")
class GeneralAttentionPooling(AttentionPooling):
    """Attention pooling with Luong's "general" (bilinear) score ``s_i = u_i^T W_s u_ctx``.

    ``W_s`` is a learned ``(context_dim, context_dim)`` matrix. With a constant context it
    spans the same functions as ``dot``, but through a different parametrisation (the context
    can stay fixed while ``W_s`` rotates); try it when ``dot`` trains slowly. Shapes as
    ``AttentionPooling``.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.bilinear_kernel = self.add_weight(
            name="bilinear_kernel", shape=(self.context_dim, self.context_dim), initializer="glorot_uniform"
        )

    def _calculate_scores(self, keys):
        return ops.matmul(ops.matmul(keys, self.bilinear_kernel), ops.transpose(self.context))


@keras.saving.register_keras_serializable(package="han")
class LocationAttentionPooling(AttentionPooling):
    """Attention pooling with Luong's location-based score ``s_i = w_h . h_i``.

    Each position is scored from its own encoder state alone: no tanh projection and no
    context vector, one weight vector ``w_h`` of size ``features`` per head. The activation is
    the identity: a bias would cancel in the softmax, and a ``tanh`` would bound the scores to
    ``[-1, 1]`` and keep the weights from ever concentrating. The cheapest score; use it as a
    baseline or when the encoder states already carry the relevance. Shapes as
    ``AttentionPooling`` (``context_dim`` is unused).
    """

    uses_projection = False
    uses_context = False

    def build(self, input_shape):
        super().build(input_shape)
        self.location_kernel = self.add_weight(
            name="location_kernel", shape=(input_shape[-1], self.heads), initializer="glorot_uniform"
        )

    def _calculate_scores(self, keys):
        return ops.matmul(keys, self.location_kernel)


SCORE_LAYERS: dict[str, type[AttentionPooling]] = {
    "dot": AttentionPooling,
    "additive": AdditiveAttentionPooling,
    "scaled_dot": ScaledDotAttentionPooling,
    "general": GeneralAttentionPooling,
    "location": LocationAttentionPooling,
}


# ---------------------------------------------------------------------- masked weight helpers
# All take and return (batch, steps, heads) tensors; `real` is (batch, steps, 1) bool.


def normalized_entropy(weights, real, rows=None):
    """Mean over rows and heads of each row's attention entropy divided by log(real steps):
    1 for uniform weights, 0 for one-hot ones (and for rows with fewer than two real steps).
    With ``rows`` (a scalar), the sum over rows of the heads' mean, divided by ``rows``."""
    safe = ops.where(real, ops.maximum(weights, 1e-12), ops.ones_like(weights))
    entropy = -ops.sum(ops.where(real, weights * ops.log(safe), ops.zeros_like(weights)), axis=1)  # (batch, heads)
    steps = ops.sum(ops.cast(real, weights.dtype), axis=1)  # (batch, 1)
    per_row = ops.mean(entropy / ops.log(ops.maximum(steps, 2.0)), axis=-1)
    if rows is None:
        return ops.mean(per_row)
    return ops.sum(per_row) / ops.cast(rows, per_row.dtype)


def _masked_softmax(scores, real):
    """Softmax over the steps axis that is exactly 0 at padding and 0 (not NaN) on empty rows."""
    scores = ops.where(real, scores, _LARGE_NEGATIVE)
    # `initial` also makes an empty batch (no real sentence anywhere) valid.
    shifted = scores - ops.stop_gradient(ops.max(scores, axis=1, keepdims=True, initial=_LARGE_NEGATIVE))
    exponentials = ops.where(real, ops.exp(shifted), ops.zeros_like(shifted))
    return _renormalize(exponentials)


def _renormalize(weights):
    total = ops.sum(weights, axis=1, keepdims=True)
    return weights / ops.where(total > 0, total, ops.ones_like(total))


def _positions_like(scores):
    """Step indices broadcastable against ``scores``: shape ``(1, steps, 1)``, int32."""
    return ops.reshape(ops.arange(ops.shape(scores)[1], dtype="int32"), (1, -1, 1))


def _keep_top_k(weights, scores, real, k):
    """``weights`` kept at the ``k`` highest ``scores`` among real steps (ties: lowest index), renormalised."""
    positions = _positions_like(scores)
    remaining = scores
    keep = ops.zeros_like(real)
    for _ in range(k):  # k is small; repeated argmax needs no static number of steps
        best = ops.expand_dims(ops.cast(ops.argmax(remaining, axis=1), "int32"), 1)
        chosen = ops.equal(positions, best)
        keep = ops.logical_or(keep, chosen)
        remaining = ops.where(chosen, 2 * _LARGE_NEGATIVE, remaining)
    keep = ops.logical_and(keep, real)
    return _renormalize(ops.where(keep, weights, ops.zeros_like(weights)))


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"attention {name} must be one of {', '.join(allowed)}; got {value!r}")
