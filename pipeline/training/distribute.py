"""Data-parallel training with ``tf.distribute``: which strategy, who is the chief, and the batches each replica reads.

``train.distribute.strategy``:

- ``none``: no strategy (one device, the default).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU (or, with
  ``cpu_replicas: N``, over N logical CPU devices, which lets the strategy be tried on a laptop).
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the workers listed in the
  ``TF_CONFIG`` environment variable; every worker runs the same ``python -m pipeline train``.

Batches: ``train.batch_size`` is per replica, the global batch is ``batch_size x replicas``. The
stage plans global batches exactly as on one device (bucketed by length, ordered from
``(seed, epoch)``); replica ``r`` of ``R`` takes members ``r, r+R, r+2R...`` of each one, so the
replicas of a step get documents of similar length, each padded only to its own maxima.

Worker 0 (or the ``chief`` task, when ``TF_CONFIG`` names one) is the chief: it alone logs to
MLflow and writes checkpoints and outputs. All workers read the preprocessed data and the
checkpoints from the same artifacts folder (shared storage).

Keras 3.15's ``fit`` does not run under ``MultiWorkerMirroredStrategy`` as shipped
(keras-team/keras#20585: it reduces each input batch across workers before building the model,
and reduces scalar metrics along an axis they do not have). ``prepare_trainer`` works around both:
the model is built before ``fit`` from a batch's shapes, and in multi-worker mode each step
returns its metrics as 1-element vectors, which the same reduction averages across workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import DistributeConfig


class DistributeError(RuntimeError):
    """The strategy cannot be set up as configured; the message says what to fix."""


@dataclass(frozen=True)
class Distribution:
    """The strategy in use (``None``: no strategy) and this process's place in it."""

    strategy: Any
    replicas: int = 1
    workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    multi_worker: bool = False

    @property
    def kind(self) -> str:
        return type(self.strategy).__name__ if self.strategy is not None else "none"

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if self.strategy is None:
            return "no tf.distribute strategy (one device)"
        where = f"worker {self.worker_index} of {self.workers}" + (" (chief)" if self.is_chief else "")
        return f"{self.kind}: {self.replicas} replicas, {where}"


def read_tf_config(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``TF_CONFIG`` parsed and checked, with an error that says what is wrong and how it should look."""
    environ = os.environ if environ is None else environ
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise DistributeError("train.distribute.strategy=multi_worker needs the TF_CONFIG environment variable on "
                              f"every worker, e.g. TF_CONFIG='{example}' (index 0 on the first machine, 1 on the next...)")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({err}); it should look like {example}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise DistributeError(f"TF_CONFIG has no cluster.worker list of host:port addresses; it should look like {example}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(f"TF_CONFIG has no task.type and task.index (this process's place); it should look like {example}")
    members = cluster.get(task["type"])
    if not isinstance(members, list) or not isinstance(task["index"], int) or not 0 <= task["index"] < len(members):
        raise DistributeError(f"TF_CONFIG task {task['type']}:{task['index']} is not in cluster.{task['type']} "
                              f"({members}); the index counts from 0")
    return tf_config


def setup(config: DistributeConfig) -> Distribution:
    """Create the strategy; call before any other TensorFlow work in the process."""
    if config.strategy == "none":
        return Distribution(strategy=None)
    import tensorflow as tf

    if config.cpu_replicas:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas)
        except RuntimeError as err:
            raise DistributeError(f"train.distribute.cpu_replicas={config.cpu_replicas} must be set before TensorFlow "
                                  f"starts in this process ({err}); run the train stage in a fresh process") from None

    if config.strategy == "mirrored":
        devices = None
        if config.cpu_replicas:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Distribution(strategy=strategy, replicas=strategy.num_replicas_in_sync)

    tf_config = read_tf_config()
    task = tf_config["task"]
    cluster = tf_config["cluster"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0 and not cluster.get("chief"))
    index = task["index"] + (len(cluster.get("chief", [])) if task["type"] == "worker" else 0)
    return Distribution(strategy=strategy, replicas=strategy.num_replicas_in_sync, workers=workers,
                        worker_index=index, is_chief=is_chief, multi_worker=True)


def check_agreement(distribution: Distribution, values: dict[str, int]) -> None:
    """Fail clearly unless every worker has the same ``values`` (e.g. the epoch to resume from).

    Workers that disagree would feed different steps into the same all-reduce and hang or train
    on garbage; the usual cause is an artifacts folder that is not shared between the machines.
    """
    if not distribution.multi_worker:
        return
    import tensorflow as tf

    strategy = distribution.strategy
    local = np.asarray(list(values.values()), dtype=np.int64)
    per_replica = strategy.run(lambda: tf.constant(local[None, :]))
    gathered = strategy.gather(per_replica, axis=0).numpy()
    for column, name in enumerate(values):
        seen = sorted(set(gathered[:, column].tolist()))
        if len(seen) > 1:
            raise DistributeError(
                f"the workers disagree on {name} ({seen}); every worker must read the same preprocessed data and "
                "checkpoint: put HAN_ARTIFACTS_DIR on storage all of them share, with the same config and seed")


# --------------------------------------------------------------------------- Keras under a strategy
def prepare_trainer(trainer, distribution: Distribution) -> None:
    """Build ``trainer`` (compiled, inside the strategy's scope) before ``fit``, and work around keras#20585.

    Call inside ``distribution.scope()`` after ``compile``.
    """
    if distribution.strategy is None:
        return
    trainer.optimizer.build(trainer.trainable_variables)
    sample = (np.ones((2, 1, 1), dtype=np.int32), np.zeros((2,), dtype=np.int32))
    trainer._symbolic_build(data_batch=sample)  # noqa: SLF001 (the model is built here, from shapes only)
    # fit would otherwise reduce a real batch across workers first, which fails for nested data.
    trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: None  # noqa: SLF001
    if distribution.multi_worker:
        import keras

        def as_vectors(step):
            def wrapped(data):
                return {name: keras.ops.reshape(value, (1,)) for name, value in step(data).items()}

            return wrapped

        trainer.train_step = as_vectors(trainer.train_step)
        trainer.test_step = as_vectors(trainer.test_step)


def replica_batches(batches: list[np.ndarray], replicas: int) -> list[np.ndarray]:
    """Global batches such that every replica gets at least one document.

    A batch with fewer members than replicas (the tail of a bucket window) is merged into the
    batch before it, so no document is dropped and no replica steps on an empty batch.
    """
    if replicas <= 1:
        return batches
    merged: list[np.ndarray] = []
    for batch in batches:
        if len(batch) < replicas and merged:
            merged[-1] = np.concatenate([merged[-1], batch])
        else:
            merged.append(batch)
    if merged and len(merged[0]) < replicas:
        if len(merged) == 1:
            raise DistributeError(f"only {len(merged[0])} documents for {replicas} replicas; use fewer replicas")
        merged[1] = np.concatenate([merged[0], merged[1]])
        merged = merged[1:]
    return merged


def distributed_dataset(distribution: Distribution, make):
    """The dataset ``fit`` reads: ``make(workers, worker)`` on each worker, distributed by the strategy.

    ``make`` returns a ``tf.data.Dataset`` yielding, per step, the batches of that worker's local
    replicas in replica order (``worker_batches``). Without a strategy: ``make(1, 0)``.
    """
    if distribution.strategy is None:
        return make(1, 0)

    def per_worker(input_context):
        return make(input_context.num_input_pipelines, input_context.input_pipeline_id)

    return distribution.strategy.distribute_datasets_from_function(per_worker)


def worker_batches(batches: list[np.ndarray], replicas: int, workers: int, worker: int) -> list[np.ndarray]:
    """What one worker's input pipeline yields: per step, its local replicas' shares, in replica order.

    Replica ``r`` gets members ``r, r + replicas, ...`` of each global batch (strided, so that the
    shares of a length-sorted batch are alike in length).
    """
    local = replicas // workers
    first = worker * local
    return [batch[r::replicas] for batch in batches for r in range(first, first + local)]
