"""LazyAdam (``train.optimizer: lazy_adam``): Adam on the rows a batch used, and nowhere else."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import TrainConfig
from pipeline.model.optimizers import LazyAdam
from pipeline.training.optimization import build_optimizer

VOCAB, DIM = 6, 3


def tiny_model() -> keras.Model:
    """Embedding (sparse gradient) -> mean over words -> Dense (dense gradients)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((4,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCAB, DIM)(ids))
    return keras.Model(ids, keras.layers.Dense(2)(pooled))


def train(optimizer, batches, model=None, dense=False):
    """``dense``: hand the optimizer the embedding's gradient as a dense table (plain Adam's math)."""
    model = model or tiny_model()
    for ids in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(ids) ** 2)
        gradients = tape.gradient(loss, model.trainable_variables)
        assert isinstance(gradients[0], tf.IndexedSlices)  # the embedding's gradient arrives sparse
        if dense:
            gradients[0] = tf.convert_to_tensor(gradients[0])
        optimizer.apply(gradients, model.trainable_variables)
    return model


# Every row of the table in every batch, some twice (repeated rows must be summed, not overwritten).
FULL_BATCHES = [np.array([[0, 1, 2, 3], [4, 5, 0, 0]]), np.array([[5, 4, 3, 2], [1, 0, 1, 1]])] * 2


def first_global_norm() -> float:
    model = tiny_model()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(FULL_BATCHES[0]) ** 2)
    return float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]))


@pytest.mark.parametrize("clipnorm", [None, 0.005])
def test_lazy_adam_is_adam_when_every_row_is_in_every_batch(clipnorm):
    # 0.005 is below these gradients' global norm (0.028 at the first step): the clipping acts,
    # on the sparse and dense gradients together.
    assert clipnorm is None or first_global_norm() > 2 * clipnorm
    # Adam gets the dense gradient: given the sparse one with repeated rows, Keras' Adam squares
    # each repeat before summing them (second moment and global norm), which is not Adam.
    lazy = train(LazyAdam(learning_rate=0.1, global_clipnorm=clipnorm), FULL_BATCHES)
    adam = train(keras.optimizers.Adam(learning_rate=0.1, global_clipnorm=clipnorm), FULL_BATCHES, dense=True)
    for got, expected in zip(lazy.get_weights(), adam.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert not np.allclose(lazy.get_weights()[0], tiny_model().get_weights()[0], atol=1e-3)  # it did train


def test_lazy_adam_leaves_the_rows_a_batch_did_not_use_untouched():
    model = tiny_model()
    optimizer = LazyAdam(learning_rate=0.1)
    train(optimizer, FULL_BATCHES[:1], model)  # every row gets moments
    table, moments = model.get_weights()[0].copy(), [np.asarray(v).copy() for v in optimizer.variables]

    train(optimizer, [np.array([[1, 2, 1, 0], [0, 2, 2, 2]])], model)  # rows 0, 1, 2 only
    after, after_moments = model.get_weights()[0], [np.asarray(v) for v in optimizer.variables]
    np.testing.assert_array_equal(after[3:], table[3:])
    assert np.all(np.abs(after[:3] - table[:3]).max(axis=1) > 1e-4)
    embedding_moments = [i for i, v in enumerate(optimizer.variables) if tuple(v.shape) == (VOCAB, DIM)]
    assert len(embedding_moments) == 2  # first and second moment
    for i in embedding_moments:
        np.testing.assert_array_equal(after_moments[i][3:], moments[i][3:])
        assert not np.allclose(after_moments[i][:3], moments[i][:3])

    # Adam, from the same state, moves the unused rows too (by their decayed momentum).
    adam_model = tiny_model()
    adam = keras.optimizers.Adam(learning_rate=0.1)
    train(adam, FULL_BATCHES[:1], adam_model)
    before = adam_model.get_weights()[0].copy()
    train(adam, [np.array([[1, 2, 1, 0], [0, 2, 2, 2]])], adam_model)
    assert np.abs(adam_model.get_weights()[0][3:] - before[3:]).max() > 1e-4


def test_lazy_adam_refuses_amsgrad_on_sparse_gradients():
    with pytest.raises(ValueError, match="amsgrad"):
        train(LazyAdam(learning_rate=0.1, amsgrad=True), FULL_BATCHES[:1])


def test_the_train_config_selects_lazy_adam_with_its_schedule_and_clipping():
    optimizer = build_optimizer(TrainConfig(optimizer="lazy_adam", schedule="exponential", decay_rate=0.5), steps_per_epoch=10)
    assert isinstance(optimizer, LazyAdam)
    assert optimizer.global_clipnorm == 5.0
    assert float(optimizer.learning_rate) == pytest.approx(2e-3)
    optimizer.iterations.assign(10)  # one epoch
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)


@pytest.mark.parametrize("clipnorm", [None, 1.0])
def test_lazy_adam_deduplicates_the_embedding_rows_once_per_step(clipnorm):
    # With global-norm clipping the rows are summed before the norm; the update must not do it
    # again (a tf.unique and a segment sum over the batch's rows, every step). Without clipping the
    # update is where it happens. Either way: one Unique op for the one sparse variable.
    model, optimizer = tiny_model(), LazyAdam(learning_rate=0.1, global_clipnorm=clipnorm)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(ids) ** 2)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    graph = step.get_concrete_function(tf.TensorSpec((None, 4), tf.int32)).graph
    ops_by_type = [op.type for op in graph.get_operations()]
    assert ops_by_type.count("Unique") == 1
    assert ops_by_type.count("UnsortedSegmentSum") == 1


MIRRORED = """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.model.optimizers import LazyAdam
    from tests.model.test_optimizers import FULL_BATCHES, tiny_model

    def train(strategy, clipnorm):
        with strategy.scope():
            model = tiny_model()
            optimizer = LazyAdam(learning_rate=0.1, global_clipnorm=clipnorm)
            optimizer.build(model.trainable_variables)

        @tf.function
        def step(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(ids) ** 2)  # summed, so the replicas' gradients add up to the whole batch's
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        for ids in FULL_BATCHES:
            if strategy.num_replicas_in_sync == 1:
                step(tf.constant(ids))
            else:  # one document per replica
                def share(context, ids=ids):
                    replica = context.replica_id_in_sync_group
                    return tf.constant(ids[replica:replica + 1])
                strategy.run(step, args=(strategy.experimental_distribute_values_from_function(share),))
        return [np.asarray(w).tolist() for w in model.get_weights()]

    clipnorm = None if sys.argv[1] == "none" else float(sys.argv[1])
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    print(json.dumps([train(tf.distribute.MirroredStrategy(devices[:1]), clipnorm),
                      train(tf.distribute.MirroredStrategy(devices), clipnorm)]))
"""


@pytest.mark.parametrize("clipnorm", ["none", "1e6"])
def test_lazy_adam_over_two_replicas_matches_one_device_on_the_whole_batch(clipnorm):
    # The all-reduce concatenates the replicas' sparse rows, so a word both replicas used arrives
    # twice: the update must sum the repeats again even when clipping already deduplicated each
    # replica's rows (1e6: the clipping runs but scales nothing, so one device is the reference).
    import json
    import subprocess
    import sys
    import textwrap

    from pipeline.config import PROJECT_ROOT

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED), clipnorm], capture_output=True, text=True,
                          timeout=300, cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(done.stdout.splitlines()[-1])
    for got, expected in zip(two, one, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
